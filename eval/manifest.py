"""The manifest of an evaluation: one fsync'd JSON line per finished sample, written by one process at a time.

Sample ids name files under ``out_dir``, so they are data that must never act as paths: only a safe character set
is accepted, and a dataset with two samples of one id is refused before anything runs.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Iterable

from magicremover.errors import ConfigError

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")


def check_sample_id(sample_id: str, where: str) -> str:
    """``sample_id`` if it is a safe file stem (letters, digits, ``._-``, not starting with a dot, ≤ 200 characters).

    Raises:
        ConfigError: naming ``where`` (e.g. the line of ``prompts.jsonl``) and the rule.
    """
    if not isinstance(sample_id, str) or not _SAFE_ID.fullmatch(sample_id):
        raise ConfigError(
            f"{where}: sample id {sample_id!r} is not a safe file name; use letters, digits, '.', '_' and '-' "
            "(not starting with '.', at most 200 characters)"
        )
    return sample_id


def check_unique(ids: Iterable[str], where: str) -> None:
    """Refuse a dataset that holds one id twice (its outputs would overwrite each other)."""
    repeated = [sample_id for sample_id, count in Counter(ids).items() if count > 1]
    if repeated:
        raise ConfigError(f"{where}: sample ids must be unique, but {', '.join(map(repr, repeated[:5]))} repeat")


def read_manifests(out_dir: Path, pattern: str = "manifest*.jsonl") -> dict[str, dict]:
    """Finished samples by id, from every shard's manifest (files matching ``pattern``); a torn line (a crash or a
    full disk mid-write) is ignored."""
    done = {}
    for manifest in sorted(Path(out_dir).glob(pattern)):
        for line in manifest.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "sample_id" in record:
                done[record["sample_id"]] = record
    return done


class ManifestWriter:
    """Exclusive appender of one manifest file: an advisory lock held for the whole run (a second writer is refused
    with the holder's pid), a torn last line repaired on open, and every record fsync'd.

    Args:
        path: the manifest (``manifest.jsonl`` or a shard's ``manifest-shardXXX-of-YYY.jsonl``).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = None

    def __enter__(self) -> ManifestWriter:
        self._lock = open(self.lock_path, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise ConfigError(
                f"another evaluation (pid {holder}) is writing {self.path}; wait for it to finish or use another out_dir"
            ) from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(str(os.getpid()))
        self._lock.flush()
        self._repair()
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    def _repair(self) -> None:
        """Drop a torn tail (bytes after the last newline), so the next record starts on its own line."""
        if not self.path.is_file():
            return
        with open(self.path, "rb+") as stream:
            data = stream.read()
            if data and not data.endswith(b"\n"):
                stream.truncate(data.rfind(b"\n") + 1)
                stream.flush()
                os.fsync(stream.fileno())

    def append(self, record: dict) -> None:
        """One line, written and fsync'd; on failure (a full disk) the partial line is removed again."""
        line = memoryview((json.dumps(record) + "\n").encode())
        handle = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            start = os.lseek(handle, 0, os.SEEK_END)
            try:
                while line:
                    line = line[os.write(handle, line) :]
                os.fsync(handle)
            except OSError:
                os.ftruncate(handle, start)
                raise
        finally:
            os.close(handle)
