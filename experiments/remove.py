"""Remove an object from one image.

    python -m experiments.remove image=photo.jpg prompt="a photo of a dog" target=dog model=sd15

Writes ``output.png``, ``reconstruction.png``, ``attention.png``, ``mask.png`` (those the method produces) and
``result.json`` (resolved config, UNet calls and seconds per stage) into the run directory (``out_dir=``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import hydra
from omegaconf import DictConfig

from eval.redact import loggable_config
from experiments._cli import build_remover, log, run_entry_point
from magicremover.errors import ConfigError, NonFiniteError
from magicremover.images import load_image
from magicremover.outputs import write_result
from magicremover.types import RemovalSample


def example_image() -> Path:
    """The embedded example scene used when ``image=null``."""
    return Path(str(resources.files("magicremover.assets").joinpath("example.png")))


def remove(cfg: DictConfig, out_dir: Path) -> dict:
    """Run the configured method on the configured image; returns the ``result.json`` contents."""
    image_path = cfg.image or example_image()
    if cfg.mask and "use_mask" in cfg.method:
        cfg.method.use_mask = True  # a mask on the command line asks for mask mode (Eq. 13)
    sample = RemovalSample(
        image=load_image(image_path),
        prompt=cfg.prompt,
        target=cfg.target,
        mask=load_image(cfg.mask, min_side=1) if cfg.mask else None,
        sample_id=Path(image_path).stem,
    )
    result = build_remover(cfg)(sample)
    try:
        result.check_finite()
    except NonFiniteError as err:
        raise ConfigError(f"{err}; nothing was written (float16 can overflow: try model.dtype=float32)") from err
    record = {"image": str(image_path), "config": loggable_config(cfg)}
    payload = write_result(out_dir, result, record)
    calls = ", ".join(f"{stage} {count.calls}" for stage, count in result.calls.items()) or "none (cached)"
    log.info("wrote %s to %s; UNet calls: %s", ", ".join(payload["files"].values()), out_dir, calls)
    return payload


@hydra.main(version_base="1.3", config_path="../conf", config_name="remove")
def main(cfg: DictConfig) -> None:
    run_entry_point(remove, cfg)


if __name__ == "__main__":
    main()
