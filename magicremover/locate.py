"""Where the target is in a photo of any size, from its word alone: coarse-to-fine locate.

The first pass reads the target's attention on the whole photo squeezed to the model's square, where a small object
is a speck of a few pixels whose attention can lose to a patch of background, and on squares of the photo
(``tiles`` across its longer side, each overlapping its neighbours by half), where the same object is ``tiles`` times
larger. The attention is in probability units, comparable across squares, so the squares' maps are laid into one map
of the photo, each place keeping its strongest reading. Each separate region of that map (two dogs) is an instance,
refined on its own: the photo is cropped to a square around the region (``margin`` × its box, at least the model's
side, as the removal's crop) and located again, the object now many times larger in the square. Refining goes on
while the next square is at most half the side of the squares the region was read from (at least a 2× zoom) and
stops at ``passes`` passes in all. Each square read is one UNet call: ``1 + (2·tiles − 1)²`` for the first pass on a
square photo (50 for 4 tiles; 36 on a 4:3 one), one per refining pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from magicremover.fullsize import Box, crop_box, longer_side, model_input, whole

REFINE_ZOOM = 0.5  # a refining window is at most this fraction of the previous window's side
MERGE = 1 / 16  # map regions closer than this fraction of the model's side are one instance

Attend = Callable[[Image.Image], torch.Tensor]
"""How strongly each place of a model-size square image attends to the target: ``(1, 1, s, s)``, non-negative, in
units comparable across squares (``remover.locate``: attention probabilities)."""


@dataclass(frozen=True)
class Pass:
    """One locate pass: the ``window`` of the photo it covers, the ``region`` found in it (photo pixels), how many
    squares it read (``looks``, one UNet call each) and the side of the smallest one (``square``, photo pixels: the
    region's resolution is ``square`` / the model's side)."""

    window: Box
    region: Box
    looks: int
    square: int

    def record(self) -> dict:
        return {"window": list(self.window), "region": list(self.region), "looks": self.looks, "square": self.square}


def locate(
    photo: Image.Image,
    side: int,
    attend: Attend,
    threshold: float,
    margin: float,
    passes: int,
    instances: int,
    tiles: int,
) -> list[list[Pass]]:
    """The target's instances in ``photo``, each as its passes, coarse first (the last one's region is the finest).

    Args:
        photo: RGB, any size.
        side: the model's square side.
        attend: the target's attention on a square (one UNet call).
        threshold: a map, divided by its maximum, marks the target where it exceeds this (``paste.threshold``).
        margin: a refining window's side as a multiple of the region's longer side (``paste.crop_margin``).
        passes: at most this many passes per instance, the coarse one included (1 = no refining).
        instances: at most this many instances, those with the most attention first.
        tiles: the first pass also reads squares of 1 / ``tiles`` of the photo's longer side (at least ``side``)
            overlapping by half; 1 reads the whole photo only.

    Returns:
        A list per instance (empty when the map marks nothing).
    """
    coarse, windows = whole(photo.size), coarse_windows(photo.size, side, tiles)
    found = _regions(_mosaic(photo, side, attend, windows), coarse, threshold)
    located = []
    for region in found[:instances]:
        chain = [Pass(coarse, region, len(windows), longer_side(windows[-1]))]
        while len(chain) < passes:
            window = crop_box(chain[-1].region, photo.size, side, margin)
            if longer_side(window) > REFINE_ZOOM * chain[-1].square:
                break
            finer = _regions(attend(model_input(photo, window, side)), window, threshold)
            if not finer:
                break
            chain.append(Pass(window, finer[0], 1, longer_side(window)))
        located.append(chain)
    return located


def coarse_windows(photo_size: tuple[int, int], side: int, tiles: int) -> list[Box]:
    """The first pass's squares: the whole photo, then (``tiles`` > 1) squares of 1 / ``tiles`` of its longer side
    (at least ``side``, at most its shorter side) starting every half square along each axis, the last one flush
    with the photo's far edge, so every part of the photo lies in a square."""
    windows = [whole(photo_size)]
    length = min(max(round(max(photo_size) / tiles), side), min(photo_size))
    if tiles == 1 or length == max(photo_size):
        return windows
    starts = [
        np.unique(np.linspace(0, extent - length, max(1, math.ceil(2 * extent / length) - 1)).round().astype(int))
        for extent in photo_size
    ]
    return windows + [(int(x), int(y), int(x) + length, int(y) + length) for y in starts[1] for x in starts[0]]


def _mosaic(photo: Image.Image, side: int, attend: Attend, windows: list[Box]) -> torch.Tensor:
    """The squares' maps laid into one map of the photo ``(1, 1, h, w)``, each place its strongest reading; its grid
    is the smallest square's map pixel."""
    maps = [attend(model_input(photo, window, side)).float() for window in windows]
    cell = min((w[2] - w[0]) / m.shape[-1] for w, m in zip(windows, maps))
    width, height = photo.size
    mosaic = torch.zeros(1, 1, math.ceil(height / cell), math.ceil(width / cell))
    for (left, top, right, bottom), soft in zip(windows, maps):
        x0, y0, x1, y1 = (round(v / cell) for v in (left, top, right, bottom))
        placed = F.interpolate(soft, size=(y1 - y0, x1 - x0), mode="bilinear", align_corners=False)
        mosaic[..., y0:y1, x0:x1] = torch.maximum(mosaic[..., y0:y1, x0:x1], placed)
    return mosaic


def _regions(soft: torch.Tensor, window: Box, threshold: float) -> list[Box]:
    """The boxes (photo pixels) of the separate regions where ``soft`` ``(1, 1, s, s)``, seen over ``window``, exceeds
    ``threshold`` × its maximum; regions closer than ``MERGE`` × s are one; the most attention first."""
    values = soft[0, 0].detach().float().cpu().numpy()
    if not values.max() > 0:
        return []
    marked = values > threshold * values.max()
    reach = max(1, round(MERGE * values.shape[0]))
    labels, count = ndimage.label(ndimage.binary_dilation(marked, iterations=reach))
    labels[~marked] = 0
    mass = ndimage.sum(values, labels, index=np.arange(1, count + 1))
    left, top, right, bottom = window
    scale_x, scale_y = (right - left) / values.shape[1], (bottom - top) / values.shape[0]
    boxes = []
    for index in np.argsort(-mass):
        rows, cols = np.nonzero(labels == index + 1)
        if len(rows):
            boxes.append(
                (
                    left + int(np.floor(cols.min() * scale_x)),
                    top + int(np.floor(rows.min() * scale_y)),
                    left + int(np.ceil((cols.max() + 1) * scale_x)),
                    top + int(np.ceil((rows.max() + 1) * scale_y)),
                )
            )
    return boxes
