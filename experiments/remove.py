"""Remove an object from one photo, or from every photo of a folder.

    python -m magicremover.experiments.remove image=photo.jpg target=dog model=sd15          # prompt: "a photo of a dog"
    python -m magicremover.experiments.remove image=photo.jpg target=[dog,cat] prompt="a dog and a cat on a sofa"
    python -m magicremover.experiments.remove image=photos/ target=dog out_dir=no-dogs grid=true
    python -m magicremover.experiments.remove image=photos/ targets=targets.csv out_dir=no-dogs

One photo writes ``output.png`` (at the photo's size; pixels away from the object are the input's bytes),
``mask.png``, ``attention.png``, ``reconstruction.png`` (those the method produces) and ``result.json`` (resolved
config, mode, UNet calls and seconds per stage) into the run directory (``out_dir=``). ``full_size=false`` gives the
model's square instead, as the paper's evaluation does. A folder (or a glob, or a ``.txt`` list of paths) writes
``<name>.png`` per photo, ``<name>_grid.png`` with ``grid=true`` and one record per photo in ``results.jsonl``;
rerun with the same ``out_dir=`` to skip finished photos.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from magicremover.api import Pipeline
from magicremover.config import CONFIG_DIR
from magicremover.eval.redact import loggable_config
from magicremover.eval.run_guard import prepare_out_dir
from magicremover.experiments._cli import check_argv, log, run_entry_point
from magicremover.experiments.folder_mode import find_images, run_folder
from magicremover.outputs import atomic_write, save_image

EXAMPLE_PROMPT = "a photo of a red circle on horizontal stripes"


def example_image() -> Path:
    """The embedded example scene used when ``image=null``."""
    return Path(str(resources.files("magicremover.assets").joinpath("example.png")))


def remove(cfg: DictConfig, out_dir: Path) -> dict:
    """Run the configured method on the configured photo(s); returns the ``result.json`` contents (one photo) or a
    summary of the folder run."""
    source = Path(cfg.image).expanduser() if cfg.image is not None else None
    if source is not None and (not source.is_file() or source.suffix.lower() == ".txt"):  # a folder, glob or list
        return run_folder(cfg, out_dir, find_images(str(cfg.image)))
    if cfg.targets:
        log.warning("targets=%s is read in folder mode only; one photo uses target= and prompt=", cfg.targets)
    image_path = source or example_image()
    prompt = cfg.prompt if cfg.prompt or cfg.image else EXAMPLE_PROMPT
    prepare_out_dir(out_dir)  # a file or an unwritable folder fails here, before any weights load
    pipe = Pipeline(cfg)
    target, mask = (OmegaConf.to_object(v) if OmegaConf.is_list(v) else v for v in (cfg.target, cfg.mask))
    removal = pipe(image_path, target, prompt, mask=mask, name=image_path.stem)
    files = {}
    for kind in ("output", "reconstruction", "attention", "mask"):
        image = getattr(removal, "image" if kind == "output" else kind)
        if image is not None:
            save_image(image, out_dir / f"{kind}.png")
            files[kind] = f"{kind}.png"
    for index, single in enumerate(removal.passes):  # several targets: each object's own mask
        if single.mask is not None:
            save_image(single.mask, out_dir / f"mask_{index}.png")
            files[f"mask_{index}"] = f"mask_{index}.png"
    payload = {"image": str(image_path), **removal.record, "files": files, "config": loggable_config(cfg)}
    atomic_write(out_dir / "result.json", json.dumps(payload, indent=2, default=str).encode())
    calls = ", ".join(f"{stage} {c['calls']}" for stage, c in removal.record["unet_calls"].items()) or "none (cached)"
    log.info("wrote %s to %s; UNet calls: %s", ", ".join(files.values()), out_dir, calls)
    return payload


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="remove")
def main(cfg: DictConfig) -> None:
    run_entry_point(remove, cfg)


def cli() -> None:
    """``magicremover-remove``, the same command as ``python -m magicremover.experiments.remove``."""
    check_argv()
    main()


if __name__ == "__main__":
    cli()
