"""Read back an offline W&B run file (``run-<id>.wandb``): a W&B header, then LevelDB-log-framed protobuf records."""

import json
import struct
import time
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK, _HEADER = 32768, 7
_FULL, _LAST = 1, 4


def records(path: Path, timeout: float = 30.0):
    """Every :class:`wandb_internal_pb2.Record` in the file, in order. wandb-core may still be writing the file after
    ``run.finish()`` returns, so this waits (up to ``timeout`` s) for the run's exit record."""
    deadline = time.monotonic() + timeout
    while True:
        found = list(_parse(Path(path).read_bytes(), path))
        if any(r.WhichOneof("record_type") == "exit" for r in found) or time.monotonic() > deadline:
            return iter(found)
        time.sleep(0.2)


def _parse(data: bytes, path: Path):
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending = _HEADER, b""
    while position + _HEADER <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < _HEADER:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + _HEADER])
        if length == 0 and kind == 0:
            position += left
            continue
        pending += data[position + _HEADER : position + _HEADER + length]
        position += _HEADER + length
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def history(path: Path) -> list[dict]:
    """The logged steps: ``[{key: value}]`` (nested keys joined with ``/``)."""
    rows = []
    for record in records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {"/".join(item.nested_key) or item.key: json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def of_type(path: Path, kind: str) -> list:
    """The payloads of every record of ``kind`` (``run``, ``artifact``, ``summary``, …)."""
    return [getattr(r, kind) for r in records(path) if r.WhichOneof("record_type") == kind]
