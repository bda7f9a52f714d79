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

from magicremover.fullsize import Box, crop_box, mask_box

GROW = 0.25  # of the box's longer side, on each side
MIN_SIDE = 32  # px


def local_box(mask: np.ndarray) -> Box | None:
    """``(left, top, right, bottom)`` (exclusive) of the crop around ``mask`` ``(H, W)``; ``None`` if it is empty.
    The photo path's square around a region (:func:`magicremover.fullsize.crop_box`) with this module's rule."""
    region = mask_box((mask.max(-1) if mask.ndim == 3 else mask) > 0)
    if region is None:
        return None
    height, width = mask.shape[:2]
    return crop_box(region, (width, height), MIN_SIDE, 1 + 2 * GROW)


def local_crop(image: np.ndarray, box: Box) -> np.ndarray:
    """``image`` uint8 ``(H, W, 3)`` cut to ``box`` and resized back to ``(H, W)``."""
    left, top, right, bottom = box
    height, width = image.shape[:2]
    return np.asarray(Image.fromarray(image[top:bottom, left:right]).resize((width, height), Image.BICUBIC))
