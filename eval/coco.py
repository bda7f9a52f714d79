"""COCO 2017 val as the authors evaluated it: every (image, category) pair, prompt "a photo of a {category}".

The object mask of a pair is the union of all instances of that category in the image (crowd RLE included),
dilated by a square kernel (30 as the authors' masked runs). Images are loaded lazily; grayscale and CMYK files
are converted to RGB. Seeded subsets (``size``), one-object images and area filters give quick runs.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magicremover.errors import ConfigError
from magicremover.eval.data import EvalItem, check_size, shard
from magicremover.images import dilate, load_image
from magicremover.types import RemovalSample


class CocoDataset:
    """(image, category) pairs of a COCO-format annotation file.

    Args:
        root: folder with ``val2017/`` and ``annotations/instances_val2017.json``.
        annotations: another annotation file (default: the one under ``root``).
        images: the image folder (default: ``root/val2017``).
        prompt_template: the caption, ``{category}`` replaced by the category name.
        mask_dilation: square dilation kernel for the union mask (pixels).
        size: keep a seeded random subset of this many pairs (``null``: all, ~14.6k).
        seed: the subset's seed.
        one_object_per_image: keep only images with exactly one annotation in total.
        min_area / max_area: keep pairs whose union mask covers this fraction of the image.
        num_shards / shard_index: this process's share of the pairs.
    """

    provides = frozenset({"mask"})
    has_ground_truth = False

    def __init__(
        self,
        root: str | None = None,
        annotations: str | None = None,
        images: str | None = None,
        prompt_template: str = "a photo of a {category}",
        mask_dilation: int = 30,
        size: int | None = None,
        seed: int = 0,
        one_object_per_image: bool = False,
        min_area: float = 0.0,
        max_area: float = 1.0,
        num_shards: int = 1,
        shard_index: int = 0,
    ):
        from pycocotools.coco import COCO

        check_size(size)
        root_path = Path(root).expanduser() if root else None
        if root_path is not None and not root_path.is_dir():
            raise ConfigError(
                f"data.root={root} does not exist; it must hold val2017/ and annotations/instances_val2017.json"
            )
        annotation_file = (
            Path(annotations).expanduser()
            if annotations
            else (root_path / "annotations" / "instances_val2017.json" if root_path else None)
        )
        if annotation_file is None or not annotation_file.is_file():
            raise ConfigError(
                f"no COCO annotation file at {annotation_file}; set data.root=DIR or data.annotations=FILE"
            )
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
                self.coco = COCO(str(annotation_file))
            self.coco.getCatIds()
        except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as err:
            raise ConfigError(f"{annotation_file} is not a COCO instances file ({type(err).__name__}: {err})") from None
        self.image_dir = (
            Path(images).expanduser() if images else (root_path / "val2017" if root_path else annotation_file.parent)
        )
        self.prompt_template, self.mask_dilation = prompt_template, mask_dilation
        pairs = []
        for category in self.coco.loadCats(self.coco.getCatIds()):  # category order, then image order, as the authors
            for image_id in self.coco.getImgIds(catIds=[category["id"]]):
                pairs.append((image_id, category["id"]))
        pairs = [p for p in pairs if self._keep(p, one_object_per_image, min_area, max_area)]
        if size is not None and size < len(pairs):
            pairs = sorted(random.Random(seed).sample(pairs, size))
        self.pairs = shard(pairs, num_shards, shard_index)
        self.ids = [f"coco{image_id:012d}_{category_id}" for image_id, category_id in self.pairs]

    def _keep(self, pair, one_object: bool, min_area: float, max_area: float) -> bool:
        image_id, category_id = pair
        if one_object and len(self.coco.getAnnIds(imgIds=[image_id], iscrowd=None)) != 1:
            return False
        info = self.coco.loadImgs([image_id])[0]
        area = sum(
            a["area"]
            for a in self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], catIds=[category_id], iscrowd=None))
        )
        return min_area <= area / (info["width"] * info["height"]) <= max_area

    def mask(self, image_id: int, category_id: int) -> np.ndarray:
        """The union of the category's instance masks (polygons and RLE, crowd included), dilated; ``(H, W)`` bool."""
        anns = self.coco.loadAnns(self.coco.getAnnIds(imgIds=[image_id], catIds=[category_id], iscrowd=None))
        union = np.zeros((self.coco.imgs[image_id]["height"], self.coco.imgs[image_id]["width"]), dtype=bool)
        for ann in anns:
            union |= self.coco.annToMask(ann).astype(bool)
        grown = dilate(torch.from_numpy(union.astype(np.float32))[None, None], self.mask_dilation)
        return grown[0, 0].numpy() > 0.5

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> EvalItem:
        image_id, category_id = self.pairs[index]
        info = self.coco.imgs[image_id]
        category = self.coco.cats[category_id]["name"]
        image = load_image(self.image_dir / info["file_name"])
        mask = Image.fromarray(self.mask(image_id, category_id).astype(np.uint8) * 255)
        sample = RemovalSample(
            image, self.prompt_template.format(category=category), category, mask=mask, sample_id=self.ids[index]
        )
        return EvalItem(sample, category=category)
