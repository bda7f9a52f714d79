"""FLOPs per removal at real size, without a GPU: every method on SD 1.5 (512²) and SDXL (1024²), MagicRemover's SD3
port on SD3-medium (1024²), and the FLUX rows (KV-Edit, FLUX.1 Fill: :mod:`magicremover.experiments.flops_transformers`)
at 1024². The denoiser is the UNet or the transformer.

    python -m magicremover.experiments.cost --flops          # the table (a few minutes on a laptop CPU)
    python -m magicremover.experiments.cost --flops --steps 10 --out flops.json

FLOPs per call come from torch's ``FlopCounterMode`` on the UNet and VAE built from the public architecture configs
on the ``meta`` device (nothing is downloaded or allocated). How many calls a removal makes comes from running the
method, with its preset's settings, on the tiny random model of the same family: the counts depend on the
architecture's family, not on its width (forward-equivalents, :class:`~magicremover.unet_calls.StageCount`: forward
samples + 2 × backward samples + recomputed forwards). Null-text inversion runs every Adam step here
(``inversion.early_stop=0``): its early stop fires on real weights, so those rows are an upper bound. The text
encoders are left out (under 1 % of a removal). GPU seconds assume a stated sustained throughput.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import contextmanager
from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch.utils.flop_counter import FlopCounterMode

from magicremover.config import build_remover, compose_config
from magicremover.experiments.device_cost import sd15_unet, sd_vae, sdxl_unet
from magicremover.experiments.flops_transformers import flux_rows, sd3_per_call_flops
from magicremover.tiny import build_tiny, build_tiny_sd3, build_tiny_xl
from magicremover.toy.quality import held_out_cases

METHODS = (  # conf/method/*
    "magicremover",
    "magicremover_fast",
    "magicremover_paper",
    "p2p_reweight",
    "attentive_eraser",
    "attentive_eraser_dip",
    "ledits_pp",
)
SD3_METHODS = ("magicremover", "magicremover_fast")  # the experimental port; no other method runs on SD3
H100_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's H100 SXM figure without sparsity
UTILISATION = 0.4


def _flops(run) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        run()
    return counter.get_total_flops()


def per_call_flops(family: str) -> dict[str, int]:
    """FLOPs of one batch-1 UNet (SD3: transformer) forward, one VAE encode and one decode at the family's native
    resolution."""
    if family == "sd3":
        return sd3_per_call_flops()
    side = 512 if family == "sd15" else 1024
    with torch.device("meta"):
        unet, vae = (sd15_unet() if family == "sd15" else sdxl_unet()), sd_vae()
        latent, image = torch.zeros(1, 4, side // 8, side // 8), torch.zeros(1, 3, side, side)
        text = {"encoder_hidden_states": torch.zeros(1, 77, unet.config.cross_attention_dim)}
        if family == "sdxl":
            text["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, 1280), "time_ids": torch.zeros(1, 6)}
        return {
            "unet": _flops(lambda: unet(latent, 500, **text)),
            "vae_encode": _flops(lambda: vae.encode(image)),
            "vae_decode": _flops(lambda: vae.decode(latent)),
        }


@contextmanager
def _vae_calls(vae):
    """Counts the VAE's encoder and decoder passes inside the block."""
    counts = {"vae_encode": 0, "vae_decode": 0}
    hooks = [
        part.register_forward_pre_hook(lambda *_, key=key: counts.__setitem__(key, counts[key] + 1))
        for part, key in ((vae.encoder, "vae_encode"), (vae.decoder, "vae_decode"))
    ]
    try:
        yield counts
    finally:
        for hook in hooks:
            hook.remove()


def calls_per_removal(family: str, method: str, steps: int | None = None) -> dict:
    """Forward-equivalents and VAE passes of one removal by ``method`` on the tiny model of ``family``."""
    c = {"sd15": build_tiny, "sdxl": build_tiny_xl, "sd3": build_tiny_sd3}[family](device="cpu")
    overrides = [
        f"method={method}",
        "device=cpu",
        "cache_dir=null",
        "inversion.early_stop=0",
        "inversion.early_stop_growth=0",
    ]
    config = compose_config("remove", overrides + ([f"num_inference_steps={steps}"] if steps else []))
    if steps and method == "ledits_pp":
        config.method.num_inversion_steps = steps
    case, side = held_out_cases(1)[0].sample, c.resolution
    mask = Image.new("L", (side, side))
    ImageDraw.Draw(mask).rectangle([side // 4, side // 4, side // 2, side // 2], fill=255)  # for the mask-based rows
    sample = dataclasses.replace(case, image=case.image.resize((side, side)), mask=mask)
    with _vae_calls(c.vae) as vae:
        result = build_remover(config, c)(sample)
    forward_equivalents = sum(count.forward_equivalents for count in result.calls.values())
    return {"forward_equivalents": forward_equivalents, **vae}


def flops_table(steps: int | None = None, utilisation: float = UTILISATION) -> dict:
    """Every method on both families: per-call FLOPs × calls per removal, and GPU seconds at ``utilisation`` of an
    H100's dense bf16 throughput."""
    rows = []
    for family in ("sd15", "sdxl", "sd3"):
        per_call = per_call_flops(family)
        for method in SD3_METHODS if family == "sd3" else METHODS:
            calls = calls_per_removal(family, method, steps)
            unet = per_call["unet"] * calls["forward_equivalents"]
            vae = sum(per_call[key] * calls[key] for key in ("vae_encode", "vae_decode"))
            total = unet + vae
            seconds = total / (H100_BF16_DENSE * utilisation)
            rows.append({"family": family, "method": method, **calls, "unet_tflops_per_call": per_call["unet"] / 1e12})
            rows[-1] |= {"unet_tflops": unet / 1e12, "vae_tflops": vae / 1e12, "h100_seconds": seconds}
    rows += flux_rows(steps, H100_BF16_DENSE * utilisation)
    return {"utilisation": utilisation, "h100_bf16_dense_flops": H100_BF16_DENSE, "steps": steps, "rows": rows}


def markdown(report: dict) -> str:
    """The table as markdown, the throughput it assumes underneath."""
    lines = [
        "| model | method | forward-equivalents | denoiser TFLOPs / forward | denoiser TFLOPs | VAE TFLOPs | H100 seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"sd15": "SD 1.5 (512²)", "sdxl": "SDXL (1024²)", "sd3": "SD3-medium (1024²)", "flux": "FLUX.1-dev (1024²)"}
    for row in report["rows"]:
        lines.append(
            f"| {names[row['family']]} | {row['method']} | {row['forward_equivalents']} | "
            f"{row['unet_tflops_per_call']:.2f} | {row['unet_tflops']:,.0f} | {row['vae_tflops']:.1f} | "
            f"{row['h100_seconds']:.1f} |"
        )
    sustained = report["utilisation"] * report["h100_bf16_dense_flops"] / 1e12
    lines.append(
        f"\nH100 seconds at {sustained:.0f} TFLOP/s sustained ({report['utilisation']:.0%} of 989 dense bf16)."
    )
    return "\n".join(lines)


def main(steps: int | None, out: Path) -> dict:
    report = flops_table(steps)
    out.write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report
