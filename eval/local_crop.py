"""The square crop around a removed object that ``fid_local`` scores (FID on crops, as removal papers report beside
global FID).

Rule: the smallest square containing the mask's bounding box, grown by a quarter of its side on every side (so the
crop is 1.5 × the object's longer side, and never less than :data:`MIN_SIDE` px), moved (not shrunk) to lie inside
the image, and clipped to it only when larger than the image; then resized to the image's side (PIL bicubic), so
every crop enters the FID extractor at one size.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GROW = 0.25  # of the box's longer side, on each side
MIN_SIDE = 32  # px


def local_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(left, top, right, bottom)`` (exclusive) of the crop around ``mask`` ``(H, W)``; ``None`` if it is empty."""
    rows, cols = np.nonzero(mask.max(-1) if mask.ndim == 3 else mask)
    if not len(rows):
        return None
    height, width = mask.shape[:2]
    box_side = max(cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)
    side = min(max(round(box_side * (1 + 2 * GROW)), MIN_SIDE), height, width)
    centre_x, centre_y = (cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2
    left = int(min(max(round(centre_x - side / 2), 0), width - side))
    top = int(min(max(round(centre_y - side / 2), 0), height - side))
    return left, top, left + side, top + side


def local_crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``image`` uint8 ``(H, W, 3)`` cut to ``box`` and resized back to ``(H, W)``."""
    left, top, right, bottom = box
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((width, height), Image.BICUBIC))
