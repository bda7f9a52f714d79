"""Folder mode of ``magicremover.experiments.remove``: every photo of a folder, glob or list file, resumable, one record each
(through the same sample runner as ``magicremover.experiments.evaluate``)."""

from __future__ import annotations

import csv
import glob
import io
import json
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from PIL import Image

from magicremover.api import Pipeline, Removal, default_prompt
from magicremover.errors import ConfigError, ImageError, UserError
from magicremover.eval.manifest import read_manifests
from magicremover.eval.redact import loggable_config
from magicremover.eval.run_guard import RESULT_KEYS, RUN_FILE, fingerprint, prepare_out_dir
from magicremover.eval.runner import is_done, run_samples
from magicremover.experiments._cli import log
from magicremover.inputs import as_pil
from magicremover.outputs import atomic_write, save_image
from magicremover.target_tokens import find_target

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
RECORDS = "results.jsonl"
SEVERAL = "|"  # separates several targets in one CSV cell
_FOLDER_KEYS = (*RESULT_KEYS, "paste", "full_size")  # what changes a photo's output, besides its target and prompt


@dataclass(frozen=True)
class Job:
    """One photo of a folder run: its file, output name, target(s) and prompt."""

    path: Path
    name: str
    targets: tuple[str, ...]
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
    elif path.suffix.lower() == ".txt" and path.is_file():
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
    """Per-photo ``target`` and optional ``prompt`` from a CSV (header ``image,target,prompt``; several targets in one
    cell separated by ``|``) or JSONL file (``target``: a string or a list), keyed by the photo's file name or stem;
    each row's ``target`` is returned as a tuple.

    Raises:
        ConfigError: the file is missing, a JSONL line is not JSON, or a row lacks ``image`` or ``target`` (naming
            the file and line).
    """
    if not path:
        return {}
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"targets={path} does not exist; give a CSV or JSONL with columns image,target[,prompt]")
    text = file.read_text(encoding="utf-8-sig")  # a spreadsheet's byte-order mark is not part of the first column
    if file.suffix.lower() == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{file} line {number} is not JSON ({err.msg}); fix or remove the line") from None
    else:
        rows = list(enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2))
    table = {}
    for number, row in rows:
        targets = _row_targets(row.get("target")) if isinstance(row, dict) else ()
        if not targets or not isinstance(row.get("image"), str) or not row["image"]:
            raise ConfigError(f"{file} line {number}: each row needs 'image' and 'target' (and may give 'prompt')")
        table[row["image"]] = row | {"target": targets}
    return table


def _row_targets(value) -> tuple[str, ...]:
    """A row's target(s) as a tuple of non-empty strings (empty when the value is not one)."""
    values = value.split(SEVERAL) if isinstance(value, str) else value if isinstance(value, list) else []
    targets = tuple(v.strip() for v in values if isinstance(v, str))
    return targets if targets and all(targets) and len(targets) == len(values) else ()


def plan_jobs(cfg: DictConfig, images: list[Path]) -> list[Job]:
    """A job per photo; the output name is the file's stem, which must be unique across the photos.

    Raises:
        ConfigError: two photos would write one output, or ``target=`` is not a word or a list of words.
    """
    targets, jobs, seen = read_targets(cfg.targets), [], {}
    default = _row_targets(OmegaConf.to_object(cfg.target) if OmegaConf.is_list(cfg.target) else cfg.target)
    for path in images:
        if path.stem in seen:
            raise ConfigError(f"{seen[path.stem]} and {path} would both write {path.stem}.png; rename one")
        seen[path.stem] = path
        row = targets.get(path.name) or targets.get(path.stem) or {}
        words = row.get("target") or default
        if not words:
            raise ConfigError(f"target={cfg.target!r}: give a word of the prompt, or a list of them (target=[dog,cat])")
        prompt = row.get("prompt") or cfg.prompt or default_prompt(words)
        jobs.append(Job(path, path.stem, words, prompt))
    unused = set(targets) - {p.name for p in images} - {p.stem for p in images}
    if unused:
        log.warning("targets=%s names %d photo(s) not among the inputs, e.g. %s", cfg.targets, len(unused), min(unused))
    return jobs


def check_rerun(cfg: DictConfig, out_dir: Path, jobs: list[Job]) -> None:
    """Refuse to run into an ``out_dir`` whose finished photos were made with other settings, or another target or
    prompt: the folder would hold outputs its ``config.json`` does not describe.

    Raises:
        ConfigError: naming what differs and the photos it concerns.
    """
    done = read_manifests(out_dir, RECORDS)
    finished = [job for job in jobs if is_done(done.get(job.name), out_dir)]
    if not finished:
        return
    run_file = out_dir / RUN_FILE
    stored = json.loads(run_file.read_text()).get("fingerprint") if run_file.is_file() else None
    current = fingerprint(cfg, _FOLDER_KEYS)
    settings = sorted(key for key in current if stored is not None and stored.get(key) != current[key])
    changed = [job.name for job in finished if _made_for(done[job.name]) != (job.targets, job.prompt)]
    if settings or changed:
        what = ", ".join(settings + ([f"target or prompt of {', '.join(changed[:3])}"] if changed else []))
        raise ConfigError(
            f"out_dir={out_dir} holds {len(finished)} finished photo(s) made with other settings ({what}); use "
            "another out_dir, or delete their outputs there to redo them"
        )


def _made_for(record: dict) -> tuple[tuple[str, ...], str | None]:
    """The target(s) and prompt a finished photo's record says it was made for."""
    targets = record.get("targets") or [record.get("target")]
    return tuple(targets), record.get("prompt")


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
    """One photo through the runner's stages (:mod:`magicremover.eval.runner`): read it, remove its target at full size, write
    ``<name>.png`` (and ``<name>_grid.png``) and its record."""

    def __init__(self, cfg: DictConfig, out_dir: Path, jobs: list[Job], pipe: Pipeline | None = None):
        self.cfg, self.out_dir, self.jobs, self.pipe = cfg, out_dir, jobs, pipe

    def load(self, index: int) -> tuple[Job, Image.Image]:
        job = self.jobs[index]
        return job, as_pil(job.path)  # in its own mode: the output keeps its alpha, depth and metadata

    def run(self, loaded: tuple[Job, Image.Image]) -> Removal:
        job, photo = loaded
        return self.pipe(photo, list(job.targets), job.prompt, name=job.name)

    def save(self, index: int, loaded, removal: Removal) -> dict:
        job = self.jobs[index]
        save_image(removal.image, self.out_dir / f"{job.name}.png")
        record = {"output": f"{job.name}.png", "image": str(job.path), **removal.record}
        if self.cfg.grid:
            panels = [p for p in (removal.input, removal.mask, removal.image.convert("RGB")) if p is not None]
            save_image(grid(*panels), self.out_dir / f"{job.name}_grid.png")
            record["grid"] = f"{job.name}_grid.png"
        return record


def run_folder(cfg: DictConfig, out_dir: Path, images: list[Path]) -> dict:
    """Run every photo not finished in ``out_dir/results.jsonl`` (error policy: :mod:`magicremover.eval.runner`; a photo that
    failed before is tried again); the model loads, and every caption is checked, only when there is work."""
    if cfg.mask:
        raise ConfigError(f"mask={cfg.mask} is for one photo; leave it out in folder mode (image={cfg.image})")
    jobs = plan_jobs(cfg, images)
    prepare_out_dir(out_dir)
    check_rerun(cfg, out_dir, jobs)
    steps = FolderSteps(cfg, out_dir, jobs)

    def load_model(todo: list[int]) -> None:
        steps.pipe = Pipeline(cfg)
        components = steps.pipe.remover.components
        for job in [jobs[index] for index in todo] if components is not None else ():
            try:  # every caption checked before the first photo runs
                for word in job.targets:
                    find_target(components.tokenizer, job.prompt, word)
            except UserError as err:
                raise type(err)(f"{job.path.name}: {err}") from None
        write_config(cfg, out_dir)

    summary = run_samples(
        [job.name for job in jobs],
        steps,
        out_dir,
        out_dir / RECORDS,
        records=RECORDS,
        unit="photos",
        retry_errors=True,
        progress_every=0,
        before_first=load_model,
    )
    return {"photos": summary.total, "done": summary.done, "failed": summary.failed}


def write_config(cfg: DictConfig, out_dir: Path) -> None:
    """The folder run's resolved config beside its records, and the fingerprint :func:`check_rerun` compares."""
    atomic_write(out_dir / "config.json", json.dumps(loggable_config(cfg), indent=2).encode())
    atomic_write(out_dir / RUN_FILE, json.dumps({"fingerprint": fingerprint(cfg, _FOLDER_KEYS)}, indent=2).encode())
