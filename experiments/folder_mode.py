"""Folder mode of ``experiments.remove``: every photo of a folder, glob or list file, resumable, one record each
(through the same sample runner as ``experiments.evaluate``)."""

from __future__ import annotations

import csv
import glob
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig
from PIL import Image

from eval.redact import loggable_config
from eval.run_guard import prepare_out_dir
from eval.runner import run_samples
from experiments._cli import log
from magicremover.api import PROMPT_TEMPLATE, Pipeline, Removal, as_image
from magicremover.errors import ConfigError, ImageError, UserError
from magicremover.outputs import atomic_write, save_image
from magicremover.target_tokens import find_target

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
RECORDS = "results.jsonl"


@dataclass(frozen=True)
class Job:
    """One photo of a folder run: its file, output name, target and prompt."""

    path: Path
    name: str
    target: str
    prompt: str


def find_images(source: str) -> list[Path]:
    """The photos named by ``image=``: a folder's image files (not recursive), a glob, or a ``.txt`` list with one
    path per line (relative to the list's folder; ``#`` starts a comment), in sorted order.

    Raises:
        ImageError: nothing matches (one line naming what was looked for).
    """
    path = Path(source).expanduser()
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.suffix == ".txt" and path.is_file():
        lines = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
        found = [(path.parent / line).expanduser() for line in lines if line]
        missing = [str(p) for p in found if not p.is_file()]
        if missing:
            raise ImageError(f"{path} lists {len(missing)} missing file(s), e.g. {missing[0]}; fix the list")
    elif glob.has_magic(source):
        found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in IMAGE_SUFFIXES)
    else:
        raise ImageError(f"image={source} is not a file, folder, glob or .txt list; pass image=PATH to an existing one")
    if not found:
        raise ImageError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in image={source}")
    return found


def read_targets(path: str | None) -> dict[str, dict]:
    """Per-photo ``target`` and optional ``prompt`` from a CSV (header ``image,target,prompt``) or JSONL file, keyed
    by the photo's file name or stem.

    Raises:
        ConfigError: the file is missing or a row lacks ``image`` or ``target`` (naming the line).
    """
    if not path:
        return {}
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"targets={path} does not exist; give a CSV or JSONL with columns image,target[,prompt]")
    if file.suffix == ".jsonl":
        rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    else:
        with open(file, newline="") as stream:
            rows = list(csv.DictReader(stream))
    table = {}
    for number, row in enumerate(rows, start=2 if file.suffix != ".jsonl" else 1):
        if not isinstance(row, dict) or not row.get("image") or not row.get("target"):
            raise ConfigError(f"{file} line {number}: each row needs 'image' and 'target' (and may give 'prompt')")
        table[row["image"]] = row
    return table


def plan_jobs(cfg: DictConfig, images: list[Path]) -> list[Job]:
    """A job per photo; the output name is the file's stem, which must be unique across the photos."""
    targets, jobs, seen = read_targets(cfg.targets), [], {}
    for path in images:
        if path.stem in seen:
            raise ConfigError(f"{seen[path.stem]} and {path} would both write {path.stem}.png; rename one")
        seen[path.stem] = path
        row = targets.get(path.name) or targets.get(path.stem) or {}
        target = row.get("target") or cfg.target
        prompt = row.get("prompt") or cfg.prompt or PROMPT_TEMPLATE.format(target=target)
        jobs.append(Job(path, path.stem, target, prompt))
    unused = set(targets) - {p.name for p in images} - {p.stem for p in images}
    if unused:
        log.warning("targets=%s names %d photo(s) not among the inputs, e.g. %s", cfg.targets, len(unused), min(unused))
    return jobs


def grid(*images: Image.Image) -> Image.Image:
    """The images side by side (``input | mask | output``), all at the first one's height."""
    height = images[0].height
    scaled = [im.convert("RGB").resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    canvas = Image.new("RGB", (sum(im.width for im in scaled), height), "white")
    left = 0
    for im in scaled:
        canvas.paste(im, (left, 0))
        left += im.width
    return canvas


class FolderSteps:
    """One photo through the runner's stages (:mod:`eval.runner`): read it, remove its target at full size, write
    ``<name>.png`` (and ``<name>_grid.png``) and its record."""

    def __init__(self, cfg: DictConfig, out_dir: Path, jobs: list[Job], pipe: Pipeline | None = None):
        self.cfg, self.out_dir, self.jobs, self.pipe = cfg, out_dir, jobs, pipe

    def load(self, index: int) -> tuple[Job, Image.Image]:
        job = self.jobs[index]
        return job, as_image(job.path)

    def run(self, loaded: tuple[Job, Image.Image]) -> Removal:
        job, photo = loaded
        return self.pipe(photo, job.target, job.prompt, name=job.name)

    def save(self, index: int, loaded, removal: Removal) -> dict:
        job = self.jobs[index]
        save_image(removal.image, self.out_dir / f"{job.name}.png")
        record = {"output": f"{job.name}.png", "image": str(job.path), **removal.record}
        if self.cfg.grid:
            panels = [p for p in (removal.input, removal.mask, removal.image) if p is not None]
            save_image(grid(*panels), self.out_dir / f"{job.name}_grid.png")
            record["grid"] = f"{job.name}_grid.png"
        return record


def run_folder(cfg: DictConfig, out_dir: Path, images: list[Path]) -> dict:
    """Run every photo not finished in ``out_dir/results.jsonl`` (error policy: :mod:`eval.runner`; a photo that
    failed before is tried again); the model loads, and every caption is checked, only when there is work."""
    if cfg.mask:
        raise ConfigError(f"mask={cfg.mask} is for one photo; leave it out in folder mode (image={cfg.image})")
    jobs = plan_jobs(cfg, images)
    prepare_out_dir(out_dir)
    steps = FolderSteps(cfg, out_dir, jobs)

    def load_model(todo: list[int]) -> None:
        write_config(cfg, out_dir)
        steps.pipe = Pipeline(cfg)
        components = steps.pipe.remover.components
        for job in [jobs[index] for index in todo] if components is not None else ():
            try:  # every caption checked before the first photo runs
                find_target(components.tokenizer, job.prompt, job.target)
            except UserError as err:
                raise type(err)(f"{job.path.name}: {err}") from None

    summary = run_samples(
        [job.name for job in jobs], steps, out_dir, out_dir / RECORDS, records=RECORDS, unit="photos",
        retry_errors=True, progress_every=0, before_first=load_model,
    )  # fmt: skip
    return {"photos": summary.total, "done": summary.done, "failed": summary.failed}


def write_config(cfg: DictConfig, out_dir: Path) -> None:
    """The folder run's resolved config, once, beside its records."""
    atomic_write(out_dir / "config.json", json.dumps(loggable_config(cfg), indent=2).encode())
