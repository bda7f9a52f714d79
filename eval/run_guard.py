"""Guards of an evaluation's ``out_dir``: usable before any compute, resumed only with the settings that produced
what is already there, and cleaned of the temporary files a killed run left behind."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from magicremover.errors import ConfigError
from magicremover.outputs import atomic_write, remove_orphans
from magicremover.secrets import redact

log = logging.getLogger(__name__)
RUN_FILE = "run.json"
# Everything that changes a finished sample's files; which samples run (size, shards, the data's location) does not.
RESULT_KEYS = ("model", "inversion", "method", "num_inference_steps", "guidance_scale", "resolution", "resize", "seed")
_DATA_IGNORED = {"size", "seed", "num_shards", "shard_index", "root", "annotations", "images"}


def prepare_out_dir(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it writable; remove this host's orphaned temporary files.

    Raises:
        ConfigError: ``out_dir`` is a file, or cannot be created or written.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir={out_dir} is a file; give a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as err:
        raise ConfigError(
            f"out_dir={out_dir} cannot be written ({err.strerror}); give a folder you can write to"
        ) from None
    removed = remove_orphans(out_dir)
    if removed:
        log.info("removed %d temporary files left by a killed run in %s", removed, out_dir)


def fingerprint(cfg: DictConfig, keys: tuple[str, ...] = RESULT_KEYS) -> dict:
    """The settings among ``keys`` (and the data's) that determine each sample's result (secrets redacted, so a
    rotated token is no mismatch)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    result = {key: container.get(key) for key in keys}
    if isinstance(result.get("method"), dict):
        result["method"] = {k: v for k, v in result["method"].items() if k != "cache_dir"}
    data = container.get("data") or {}
    result["data"] = {k: v for k, v in data.items() if k not in _DATA_IGNORED}
    return redact(result)


def check_resume(out_dir: Path, cfg: DictConfig, force: bool = False) -> None:
    """Record the fingerprint of a new run; refuse to resume one made with other settings (unless ``force``).

    Raises:
        ConfigError: naming the first settings that differ.
    """
    current = fingerprint(cfg)
    path = out_dir / RUN_FILE
    if path.is_file() and not force:
        stored = json.loads(path.read_text()).get("fingerprint", {})
        differ = sorted(set(_flatten(stored)) ^ set(_flatten(current)))
        if differ:
            names = sorted({key for key, _ in differ})
            raise ConfigError(
                f"out_dir={out_dir} holds a run with other settings ({', '.join(names[:4])}); use another out_dir, "
                "or resume=force if the difference does not change results"
            )
    atomic_write(path, json.dumps({"fingerprint": current}, indent=2).encode())


def check_numbers(cfg: DictConfig) -> None:
    """Top-level numbers that every method uses, checked before anything loads."""
    if not isinstance(cfg.num_inference_steps, int) or cfg.num_inference_steps < 1:
        raise ConfigError(f"num_inference_steps={cfg.num_inference_steps} must be a positive integer")
    if not math.isfinite(float(cfg.guidance_scale)):
        raise ConfigError(f"guidance_scale={cfg.guidance_scale} must be a finite number")


def _flatten(value, prefix: str = "") -> set[tuple[str, str]]:
    if isinstance(value, dict):
        return {pair for key, item in value.items() for pair in _flatten(item, f"{prefix}{key}.")}
    return {(prefix.rstrip("."), json.dumps(value, sort_keys=True))}
