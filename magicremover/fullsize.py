"""Photos at their own size: fit a box of the photo to the model's square, then paste the result back into the photo.

The model sees a square (512² for SD, 64² for the toy). A practitioner wants the photo back at its size and aspect
ratio with every pixel away from the object untouched, so the model's output is resized to the box it came from and
composited into the photo through the final mask, dilated and feathered: beyond the dilated mask the photo's bytes
are kept exactly (IOPaint and diffusers' ``apply_overlay`` do the same).

The box is the whole photo (``paste.strategy=resize``, the authors' protocol) or a square crop around the object
(``crop``; IOPaint's HD crop strategy), so a small object in a large photo is seen at the model's full resolution.
``auto`` crops when the crop's side is at most half the photo's longer side (the model then sees the object at least
twice as large as the squeezed photo shows it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from magicremover.errors import ConfigError, ImageError
from magicremover.images import to_pil

Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL's crop box)
STRATEGIES = ("resize", "crop", "auto")
AUTO_CROP_FRACTION = 0.5  # auto crops when the crop's side ≤ this fraction of the photo's longer side
MOST_OF_THE_PHOTO = 0.5  # a located box covering more of the photo's area than this is no object: resize


@dataclass(frozen=True)
class PasteSettings:
    """How a model-resolution result is composited into the full-size photo.

    Attributes:
        dilate: the final mask is grown by this fraction of the longer side of the region the model saw (the whole
            photo, or the crop; at least one pixel); beyond it the photo is kept byte for byte.
        feather: width of the linear ramp from the output to the photo, as a fraction of the same side, ending at
            the dilated edge (0 = a hard edge).
        threshold: the final mask, divided by its maximum, is binarised at this level.
        locate_threshold: without a mask, the located attention, divided by its maximum, marks the object where it
            exceeds this level; the marked region's box frames the crop.
        strategy: ``resize`` (the whole photo squeezed to the model's square), ``crop`` (a square around the object)
            or ``auto`` (crop when it enlarges the object at least 2×).
        crop_margin: the crop's side as a multiple of the object box's longer side (at least the model's side where
            the photo allows): the object spans 1 / ``crop_margin`` of the square the model sees.
        locate_passes: without a mask, the target is located in at most this many passes: the whole photo (and its
            squares, ``locate_tiles``), then crops around what the previous pass found while they zoom in at least
            2×, one UNet call each (:mod:`magicremover.locate`); 1 = no refining.
        locate_tiles: the first locate pass reads the whole photo and squares of 1 / ``locate_tiles`` of its longer
            side overlapping by half (``(2 · locate_tiles − 1)²`` squares on a square photo, one UNet call each),
            so a small object is seen ``locate_tiles`` times larger; 1 reads the whole photo only.
        instances: without a mask, at most this many separate regions of the target's map are removed, each in its
            own framed pass.
    """

    dilate: float = 0.03
    feather: float = 0.02
    threshold: float = 0.5
    locate_threshold: float = 0.4
    strategy: str = "auto"
    crop_margin: float = 2.5
    locate_passes: int = 3
    locate_tiles: int = 4
    instances: int = 4

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"paste.strategy={self.strategy} is not one of {', '.join(STRATEGIES)}")
        counts = {"locate_passes": self.locate_passes, "locate_tiles": self.locate_tiles, "instances": self.instances}
        if not all(isinstance(n, int) and n >= 1 for n in counts.values()):
            given = ", ".join(f"paste.{key}={n}" for key, n in counts.items())
            raise ConfigError(f"{given}: each must be a positive integer")
        if not self.crop_margin >= 1:
            raise ConfigError(f"paste.crop_margin={self.crop_margin} must be at least 1 (the crop holds the object)")
        levels = (self.threshold, self.locate_threshold)
        if not (0 <= self.feather <= self.dilate < 1) or not all(0 < level < 1 for level in levels):
            raise ConfigError(
                f"paste.dilate={self.dilate}, paste.feather={self.feather}, paste.threshold={self.threshold}, "
                f"paste.locate_threshold={self.locate_threshold} are invalid; need 0 ≤ feather ≤ dilate < 1 and "
                "0 < threshold, locate_threshold < 1"
            )

    def pixels(self, size: tuple[int, int]) -> tuple[int, int]:
        """``(dilate, feather)`` in pixels for a region of ``size`` = (width, height) seen by the model."""
        side = max(size)
        return max(1, round(self.dilate * side)), round(self.feather * side)


def model_input(photo: Image.Image, box: Box, side: int) -> Image.Image:
    """The box of the photo resized to the model's ``side``² with an antialiased filter (Lanczos when shrinking, so a
    4000-px photo does not alias; bicubic when enlarging)."""
    region = photo.crop(box)
    shrinking = region.width > side or region.height > side
    return region.resize((side, side), Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC)


def check_mask_size(mask: Image.Image, photo_size: tuple[int, int]) -> None:
    """Raises :class:`ImageError` (one line) when a mask's size differs from its photo's."""
    if mask.size != tuple(photo_size):
        raise ImageError(
            f"the mask is {mask.width}x{mask.height} but the image is {photo_size[0]}x{photo_size[1]}; "
            "give a mask of the image's size"
        )


def model_mask(mask: Image.Image, photo_size: tuple[int, int], box: Box, side: int) -> Image.Image:
    """A user mask (grey, the photo's size, white = object) fitted exactly as :func:`model_input` fits the photo.

    Raises:
        ImageError: the mask's size differs from the photo's, or its marked pixels vanish in the fitting.
    """
    check_mask_size(mask, photo_size)
    fitted = mask.convert("L").crop(box).resize((side, side), Image.Resampling.BILINEAR)
    if fitted.getbbox() is None and mask.crop(box).getbbox() is not None:
        marked = int(np.count_nonzero(np.asarray(mask.crop(box))))
        raise ImageError(
            f"the mask's {marked} marked pixel(s) vanish when the {box[2] - box[0]}x{box[3] - box[1]} region the model "
            f"sees is fitted to its {side}x{side} square; mark a larger region, or crop around it (paste.strategy=crop)"
        )
    return fitted


def paste_alpha(mask: torch.Tensor, photo_size: tuple[int, int], box: Box, settings: PasteSettings) -> np.ndarray:
    """The compositing weight α at the photo's size: 1 on the mask grown by ``dilate − feather``, a linear ramp to 0
    at ``dilate`` pixels (Euclidean distance), and exactly 0 beyond, and outside the box.

    The widths are fractions of the box's longer side (the region the model saw, so a crop's blend is as wide, in
    the model's pixels, as a resized photo's), and α also ramps from 0 on the box's border over the feather width
    on every side that is not the photo's own edge: a crop never ends in a seam, whatever the photo's size.

    Args:
        mask: the final mask ``(1, 1, h, w)`` in [0, 1] at the model's resolution.
        photo_size: ``(width, height)``.
        box: where the model's square sits in the photo.

    Returns:
        ``(height, width)`` float32 in [0, 1].
    """
    left, top, right, bottom = box
    soft = mask.detach().float().cpu()
    soft = soft / soft.max().clamp_min(1e-12)
    soft = F.interpolate(soft, size=(bottom - top, right - left), mode="bilinear", align_corners=False)
    inside = soft[0, 0].numpy() > settings.threshold
    alpha = np.zeros(photo_size[::-1], dtype=np.float32)
    if not inside.any():
        return alpha
    dilate, feather = settings.pixels((right - left, bottom - top))
    distance = ndimage.distance_transform_edt(~inside)  # the mask lies in the box: the box alone gives the same
    if feather == 0:
        region = (distance <= dilate).astype(np.float32)
    else:
        region = np.clip((dilate - distance) / feather, 0.0, 1.0)
    alpha[top:bottom, left:right] = np.minimum(region, _border_ramp(box, photo_size, max(feather, 1)))
    return alpha


def _border_ramp(box: Box, photo_size: tuple[int, int], width: int) -> np.ndarray:
    """``(box height, box width)``: 0 on the box's border rows and columns that lie inside the photo, rising
    linearly to 1 at ``width`` pixels from them; 1 throughout next to the photo's own edges."""
    left, top, right, bottom = box
    far = np.inf
    rows, cols = np.arange(bottom - top, dtype=np.float64), np.arange(right - left, dtype=np.float64)
    from_rows = np.minimum(rows if top > 0 else far, rows[::-1] if bottom < photo_size[1] else far)
    from_cols = np.minimum(cols if left > 0 else far, cols[::-1] if right < photo_size[0] else far)
    return np.clip(np.minimum.outer(from_rows, from_cols) / width, 0.0, 1.0).astype(np.float32)


def placed(photo: Image.Image, output: torch.Tensor, box: Box) -> Image.Image:
    """The model's ``output`` ``(1, 3, s, s)`` in [0, 1] resized (bicubic) over ``box`` of ``photo`` (RGB): the
    edit before compositing, the photo's own pixels outside the box."""
    left, top, right, bottom = box
    edit = photo.convert("RGB")
    edit.paste(to_pil(output).resize((right - left, bottom - top), Image.Resampling.BICUBIC), (left, top))
    return edit


def full_size_map(image: torch.Tensor, photo_size: tuple[int, int], box: Box) -> Image.Image:
    """A model-resolution map or image ``(1, C, s, s)`` in [0, 1] placed over ``box`` on a black canvas of the
    photo's size (for the mask and the attention heat map)."""
    left, top, right, bottom = box
    region = to_pil(image).resize((right - left, bottom - top), Image.Resampling.BICUBIC)
    canvas = Image.new(region.mode, photo_size)
    canvas.paste(region, (left, top))
    return canvas


def whole(photo_size: tuple[int, int]) -> Box:
    """The box of the whole photo: the model sees it stretched to its square, as in the authors' code."""
    return 0, 0, photo_size[0], photo_size[1]


def longer_side(box: Box) -> int:
    """The longer side of ``box``, in pixels."""
    return max(box[2] - box[0], box[3] - box[1])


def mask_box(mask: np.ndarray) -> Box | None:
    """The bounding box of the ``True`` pixels of a ``(H, W)`` boolean mask, or ``None`` when there are none."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_box(region: Box, photo_size: tuple[int, int], side: int, margin: float) -> Box:
    """A square around ``region``: ``margin`` × its longer side, at least ``side`` px, centred on it, shifted (not
    shrunk) to stay inside the photo; clamped to the photo where the photo is smaller than the square."""
    left, top, right, bottom = region
    length = max(margin * longer_side(region), side)
    box = []
    for low, high, extent in ((left, right, photo_size[0]), (top, bottom, photo_size[1])):
        span = min(round(length), extent)
        start = min(max(round((low + high - span) / 2), 0), extent - span)
        box.append((start, start + span))
    (x0, x1), (y0, y1) = box
    return x0, y0, x1, y1


def choose_box(
    region: Box | None, photo_size: tuple[int, int], side: int, settings: PasteSettings, source: str
) -> tuple[Box, dict]:
    """Where the model looks: the crop around the object's ``region`` (from ``source``: ``mask`` or ``located``)
    or the whole photo, by ``settings.strategy``. Returns the box and what was decided, for the record."""
    record = {"strategy": settings.strategy, "region": list(region) if region else None, "region_from": source}
    if settings.strategy == "resize":
        return whole(photo_size), record | {"used": "resize"}
    if region is None:
        return whole(photo_size), record | {"used": "resize", "reason": f"no object region ({source})"}
    area = (region[2] - region[0]) * (region[3] - region[1])
    if area > MOST_OF_THE_PHOTO * photo_size[0] * photo_size[1]:
        return whole(photo_size), record | {"used": "resize", "reason": "the object region covers most of the photo"}
    box = crop_box(region, photo_size, side, settings.crop_margin)
    if settings.strategy == "auto" and longer_side(box) > AUTO_CROP_FRACTION * max(photo_size):
        return whole(photo_size), record | {"used": "resize", "reason": "a crop would not enlarge the object 2x"}
    return box, record | {"used": "crop", "crop": list(box)}
