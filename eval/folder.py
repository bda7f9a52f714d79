"""Removal benchmarks stored as folders (OBER / RORD style): an input, an object mask and the ground truth without the
object, per sample, plus the caption that names the object.

Layout: ``images/<id>.<ext>``, ``masks/<id>.png`` (white = object, with its shadow/reflection), ``ground_truth/<id>.<ext>``
and ``prompts.jsonl`` with one ``{"id": ..., "prompt": "a photo of a dog", "target": "dog"}`` line per sample
(samples without a line are skipped; a line without files is an error).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from magicremover.errors import ConfigError
from magicremover.eval.data import EvalItem, check_size, shard
from magicremover.eval.manifest import check_sample_id, check_unique
from magicremover.images import load_image, load_mask
from magicremover.types import RemovalSample


class FolderDataset:
    """Samples with ground truth from a folder.

    Args:
        root: the folder (see the module docstring for its layout).
        size: keep the first N samples (in ``prompts.jsonl`` order).
        num_shards / shard_index: this process's share.
    """

    provides = frozenset({"mask"})
    has_ground_truth = True

    def __init__(self, root: str | None = None, size: int | None = None, num_shards: int = 1, shard_index: int = 0):
        self.root = Path(root).expanduser() if root else None
        if self.root is None or not (self.root / "prompts.jsonl").is_file():
            raise ConfigError(
                f"data.root={root} must be a folder with prompts.jsonl, images/, masks/ and ground_truth/"
            )
        check_size(size)
        records = []
        prompts = self.root / "prompts.jsonl"
        for number, line in enumerate(prompts.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                sample_id = str(record["id"]) if type(record["id"]) is int else record["id"]  # 12 → "12"
                records.append(
                    (check_sample_id(sample_id, f"{prompts} line {number}"), record["prompt"], record["target"])
                )
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ConfigError(f'{prompts} line {number} is not {{"id", "prompt", "target"}} ({err})') from None
        check_unique([sample_id for sample_id, _, _ in records], str(prompts))
        self.records = shard(records[:size] if size else records, num_shards, shard_index)
        self.ids = [sample_id for sample_id, _, _ in self.records]
        for sample_id in self.ids:
            for folder in ("images", "masks", "ground_truth"):
                self._file(folder, sample_id)

    def _file(self, folder: str, sample_id: str) -> Path:
        matches = sorted((self.root / folder).glob(f"{sample_id}.*"))
        if not matches:
            raise ConfigError(
                f"sample {sample_id} has no file in {self.root / folder}; every prompts.jsonl id needs an image, a mask and a ground truth"
            )
        return matches[0]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> EvalItem:
        sample_id, prompt, target = self.records[index]
        image = load_image(self._file("images", sample_id))
        mask = load_mask(self._file("masks", sample_id))
        sample = RemovalSample(image, prompt, target, mask=mask, sample_id=sample_id)
        region = np.asarray(mask, dtype=np.float32) / 255
        return EvalItem(
            sample, ground_truth=load_image(self._file("ground_truth", sample_id)), region=region, category=target
        )
