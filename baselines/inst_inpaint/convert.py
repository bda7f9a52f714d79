"""Convert the official Inst-Inpaint ``model.ckpt`` once into a safetensors file of our modules:

    python -m magicremover.baselines.inst_inpaint.convert model.ckpt inst-inpaint.safetensors

A command above the model (the model reads converted files and tensors-only checkpoints itself), so that the key
mapping (:mod:`magicremover.baselines.inst_inpaint.keymap`) is imported by both without a circle.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from magicremover.baselines.inst_inpaint.keymap import convert
from magicremover.baselines.inst_inpaint.model import Architecture, InstInpaintModel


def main(argv: list[str]) -> None:
    """Convert the official ``model.ckpt`` once into a safetensors file of our modules (``unet.``/``text.``/``vq.``)."""
    parser = argparse.ArgumentParser(
        prog="python -m magicremover.baselines.inst_inpaint.convert", description=main.__doc__
    )
    parser.add_argument("checkpoint", type=Path, help="the authors' ldm/model.ckpt")
    parser.add_argument("output", type=Path, help="where to write the .safetensors file")
    parser.add_argument("--architecture", default="published", help="published (default) or tiny")
    args = parser.parse_args(argv)
    # The Lightning checkpoint pickles training state besides the weights; unpickling runs code from the file, which is
    # why this is a separate, explicit step for a file you trust.
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model = InstInpaintModel(Architecture.named(args.architecture))
    report = convert(
        state.get("state_dict", state),
        model.unet,
        model.text_encoder,
        model.vq,
        alphas_cumprod=model.scheduler.alphas_cumprod,
    )
    model.save(args.output, args.architecture)
    print(f"wrote {args.output}: {len(report['consumed'])} checkpoint tensors used, {len(report['ignored'])} ignored")


if __name__ == "__main__":
    main(sys.argv[1:])
