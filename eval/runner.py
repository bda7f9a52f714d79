"""The one resumable sample runner behind ``magicremover.experiments.evaluate`` and folder mode of ``magicremover.experiments.remove``.

A run is a list of sample ids; each sample goes through three stages, ``load`` (read its image, mask, caption),
``run`` (the remover) and ``save`` (its files, then its manifest line). What happens when a stage fails is decided
here, once:

- errors that would fail every later sample the same way stop the run: a configuration or weights problem
  (:class:`ConfigError`, :class:`ModelLoadError`), and storage trouble (:class:`StorageError`, a full disk during any
  stage, any ``OSError`` while saving). Every finished sample is kept; rerunning resumes.
- any other failure costs one sample: a manifest line ``{"sample_id", "status": "error", "error_type", "error",
  "stage"}`` (``stage``: ``load``, ``save``, or the failing stage of the remover when it names one, else ``run``), and
  the run goes on.

A finished sample's line is ``{"sample_id", "status": "ok", "output": <file relative to out_dir>, ...}``; a sample
counts as done when its latest line is ``ok`` and its output file exists (failed ones are retried with
``retry_errors``).
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from magicremover.errors import ConfigError, ModelLoadError, StorageError
from magicremover.eval.manifest import ManifestWriter, read_manifests
from magicremover.progress import Progress

log = logging.getLogger("magicremover")

FATAL = (ConfigError, ModelLoadError, StorageError)
"""Errors that stop a run instead of costing one sample."""
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


class SampleSteps(Protocol):
    """What a run does with one sample (by its index in the run's id list)."""

    def load(self, index: int) -> Any:
        """Everything the sample needs (image, mask, caption); may raise for a bad file or annotation."""

    def run(self, loaded: Any) -> Any:
        """The removal itself."""

    def save(self, index: int, loaded: Any, result: Any) -> dict:
        """Write the sample's files under ``out_dir`` and return its ``ok`` record (without ``sample_id``/``status``)."""


class Tracker(Protocol):
    def log_sample(self, index: int, record: dict) -> None: ...


@dataclass
class RunSummary:
    """Samples in the run, finished (this run or before, ``ok`` or recorded as failed), and failed in this run."""

    total: int
    done: int
    failed: int


def is_done(record: dict | None, out_dir: Path) -> bool:
    """Whether a manifest record is a finished sample whose output is still on disk."""
    return bool(record) and record.get("status") == "ok" and (out_dir / record.get("output", "")).is_file()


def pending(ids: Sequence[str], done: dict[str, dict], out_dir: Path, retry_errors: bool) -> list[int]:
    """Indices of the samples still to run: never run, output missing, or failed when ``retry_errors``."""
    return [
        index
        for index, sample_id in enumerate(ids)
        if not is_done(done.get(sample_id), out_dir)
        and (retry_errors or done.get(sample_id, {}).get("status") != "error")
    ]


def failure(sample_id: str, err: BaseException, stage: str) -> dict:
    """The manifest line of a failed sample: error type, the message's first line, the stage it failed in."""
    message = (str(err).splitlines() or [""])[0]
    stage = getattr(err, "stage", None) or stage
    return {
        "sample_id": sample_id,
        "status": "error",
        "error_type": type(err).__name__,
        "error": message,
        "stage": stage,
    }


def attempt(sample_id: str, index: int, steps: SampleSteps, out_dir: Path) -> dict:
    """One sample through ``load``, ``run`` and ``save``; its record, ``ok`` or ``error``, under the policy above.

    Raises:
        ConfigError, ModelLoadError, StorageError: the run must stop (finished samples are kept).
    """
    stage = "load"
    try:
        loaded = steps.load(index)
        stage = "run"
        result = steps.run(loaded)
        stage = "save"
        return {"sample_id": sample_id, "status": "ok", **steps.save(index, loaded, result)}
    except FATAL:
        raise
    except OSError as err:
        if err.errno in _FULL or stage == "save":
            raise StorageError(
                f"cannot write the results of {sample_id} in {out_dir} ({err.strerror or err}); free space or fix "
                "the folder and rerun: finished samples are kept"
            ) from err
        return failure(sample_id, err, stage)
    except Exception as err:  # noqa: BLE001 - one bad sample costs one sample
        return failure(sample_id, err, stage)


def run_samples(
    ids: Sequence[str],
    steps: SampleSteps,
    out_dir: Path,
    manifest: Path,
    *,
    records: str = "manifest*.jsonl",
    unit: str = "samples",
    retry_errors: bool = False,
    progress_every: float = 60.0,
    tracker: Tracker | None = None,
    before_first: Callable[[list[int]], None] | None = None,
) -> RunSummary:
    """Run every pending sample of ``ids``, appending one line per sample to ``manifest``; the samples of every file
    matching ``records`` under ``out_dir`` count as done (shards share a folder). ``before_first(todo)`` runs once when there is work (load
    the model there, so a finished run loads nothing). Each record also goes to ``tracker.log_sample(index, ...)``."""
    with ManifestWriter(manifest) as writer:
        done = read_manifests(out_dir, records)
        todo = pending(ids, done, out_dir, retry_errors)
        finished = len(ids) - len(todo)
        log.info(
            "%d of %d %s to do in %s (rerun with out_dir=%s to resume)", len(todo), len(ids), unit, out_dir, out_dir
        )
        if not todo:
            return RunSummary(len(ids), finished, 0)
        if before_first is not None:
            before_first(todo)
        with Progress(len(ids), unit, log, progress_every, finished) as progress:
            for index in todo:
                record = attempt(ids[index], index, steps, out_dir)
                writer.append(record)
                if record["status"] != "ok":
                    log.warning(
                        "%s failed at %s: %s: %s", ids[index], record["stage"], record["error_type"], record["error"]
                    )
                progress.update(record["status"] == "ok", note=ids[index])
                if tracker is not None:
                    tracker.log_sample(index, record)
        return RunSummary(len(ids), progress.done, progress.failed)
