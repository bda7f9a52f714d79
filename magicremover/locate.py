"""Where the target is in a photo of any size, from its word alone: coarse-to-fine locate.

The first pass reads the target's attention on the whole photo squeezed to the model's square, where a small object
is a speck of a few pixels and its box is as coarse as the model's grid. Each separate region of that map (two dogs)
is an instance, refined on its own: the photo is cropped to a square around the region (``margin`` × its box, at
least the model's side, as the removal's crop) and located again, the object now many times larger in the square.
Refining goes on while the next window is at most half the side of the one before (at least a 2× zoom) and stops at
``passes`` passes in all. Each pass is one UNet call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from magicremover.fullsize import Box, crop_box, model_input, whole

REFINE_ZOOM = 0.5  # a refining window is at most this fraction of the previous window's side
MERGE = 1 / 16  # map regions closer than this fraction of the model's side are one instance

Attend = Callable[[Image.Image], torch.Tensor]
"""The target's attention on a model-size square image: ``(1, 1, s, s)`` in [0, 1] (``remover.locate``)."""


@dataclass(frozen=True)
class Pass:
    """One locate pass: the ``window`` of the photo the model saw and the ``region`` found in it (photo pixels)."""

    window: Box
    region: Box

    def record(self) -> dict:
        return {"window": list(self.window), "region": list(self.region)}


def locate(
    photo: Image.Image, side: int, attend: Attend, threshold: float, margin: float, passes: int, instances: int
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

    Returns:
        A list per instance (empty when the map marks nothing).
    """
    coarse = whole(photo.size)
    found = _regions(attend(model_input(photo, coarse, side)), coarse, threshold)
    located = []
    for region in found[:instances]:
        chain = [Pass(coarse, region)]
        while len(chain) < passes:
            window = crop_box(chain[-1].region, photo.size, side, margin)
            if _side(window) > REFINE_ZOOM * _side(chain[-1].window):
                break
            finer = _regions(attend(model_input(photo, window, side)), window, threshold)
            if not finer:
                break
            chain.append(Pass(window, finer[0]))
        located.append(chain)
    return located


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


def _side(box: Box) -> int:
    return max(box[2] - box[0], box[3] - box[1])
