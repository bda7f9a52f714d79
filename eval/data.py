"""Evaluation datasets: indexable sequences of :class:`EvalItem` with an ``ids`` list (cheap, loaded up front) and
lazily built items, split into deterministic shards. ``provides`` names the optional sample fields they fill."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from magicremover.errors import ConfigError
from magicremover.types import RemovalSample


@dataclass(frozen=True)
class EvalItem:
    """One evaluation unit: what a remover gets, plus what metrics compare against.

    Attributes:
        sample: the removal request (its ``sample_id`` names the output files and manifest lines).
        ground_truth: the scene without the object, when the dataset has it.
        region: ``(H, W)`` float in [0, 1], the object (with its shadow) for inside/outside metrics.
        category: the object's class name (for CLIP similarity).
    """

    sample: RemovalSample
    ground_truth: Image.Image | None = None
    region: np.ndarray | None = None
    category: str | None = None


def check_size(size: int | None) -> int | None:
    """``data.size``: ``None`` (every sample) or a positive count."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ConfigError(f"data.size={size} must be a positive number of samples, or null for all of them")
    return size


def shard(items: Sequence, num_shards: int = 1, shard_index: int = 0) -> list:
    """Every ``num_shards``-th item starting at ``shard_index``: disjoint, covering, independent of timing."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ConfigError(f"data.shard_index={shard_index} must be in [0, data.num_shards={num_shards})")
    return list(items)[shard_index::num_shards]


class ToyDataset:
    """Held-out toy scenes with ground truth: the first object of each scene is the one to remove.

    Args:
        size: number of scenes.
        first_seed: the first scene seed (held-out seeds start at 10,000,000).
        with_mask: give removers the object's mask (with its shadow), for mask-based methods.
        num_shards, shard_index: keep only this shard of the scenes (see :func:`shard`).
    """

    has_ground_truth = True

    def __init__(
        self,
        size: int = 50,
        first_seed: int = 10_000_000,
        with_mask: bool = True,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        from magicremover.toy.quality import held_out_cases

        check_size(size)
        self.provides = frozenset({"mask"} if with_mask else ())
        self.items = []
        for case in shard(held_out_cases(size, first_seed), num_shards, shard_index):
            mask = Image.fromarray((case.obj.shadow_mask * 255).round().astype(np.uint8)) if with_mask else None
            sample = RemovalSample(
                Image.fromarray(case.scene.image),
                case.scene.caption,
                case.obj.phrase,
                mask=mask,
                sample_id=case.sample.sample_id,
            )
            touched = (case.obj.shadow_mask > 0).astype(np.float32)  # the toy report's inside/outside split
            self.items.append(EvalItem(sample, Image.fromarray(case.obj.removed), touched, case.obj.shape))
        self.ids = [item.sample.sample_id for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> EvalItem:
        return self.items[index]
