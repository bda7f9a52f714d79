"""What a photo carries besides its RGB pixels, and how a full-size output keeps it.

* EXIF: the orientation is applied to the pixels when the photo is read, so the output's EXIF is the photo's with
  orientation 1 (every other tag kept).
* ICC profile: copied unchanged (the pixels are edited in the photo's own colour space).
* Alpha: kept untouched on an RGBA photo's output (the object is removed from the colour channels only; a transparent
  region stays transparent where it was).
* 16-bit PNGs are read as 8-bit; the record says so (``converted``) and a warning is logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

log = logging.getLogger("magicremover")
ORIENTATION = 0x0112


@dataclass(frozen=True)
class PhotoMeta:
    """The photo's own data: ``icc_profile`` and ``exif`` bytes (EXIF with orientation 1), ``alpha`` (upright, L) and
    ``converted`` (why the pixels were converted, if they were)."""

    icc_profile: bytes | None = None
    exif: bytes | None = None
    alpha: Image.Image | None = None
    converted: str | None = None

    def apply(self, image: Image.Image) -> Image.Image:
        """``image`` (RGB, the photo's size) with the photo's alpha, ICC profile and EXIF attached (PIL ``info``,
        which :func:`magicremover.outputs.save_image` writes)."""
        out = image.copy()
        if self.alpha is not None and self.alpha.size == out.size:
            out.putalpha(self.alpha)
        for key in ("icc_profile", "exif"):
            if getattr(self, key):
                out.info[key] = getattr(self, key)
        return out

    def record(self) -> dict:
        """What was kept, for ``result.json``."""
        return {
            "icc_profile": self.icc_profile is not None,
            "exif": "orientation applied to the pixels, written as 1" if self.exif else None,
            "alpha": "kept untouched" if self.alpha is not None else None,
            "converted": self.converted,
        }


def read_meta(source) -> PhotoMeta:
    """The metadata of a photo given as a path or a PIL image (arrays carry none)."""
    if isinstance(source, (str, Path)):
        with Image.open(Path(source).expanduser()) as image:
            return _meta(image)
    if isinstance(source, Image.Image):
        return _meta(source)
    return PhotoMeta()


def _meta(image: Image.Image) -> PhotoMeta:
    rawmode = str(image.tile[0][3]) if getattr(image, "tile", None) else ""
    sixteen = image.mode.startswith("I;16") or "16" in rawmode
    converted = None
    if sixteen:
        converted = f"a 16-bit {image.format or 'image'} was read as 8-bit; the output is 8-bit"
        log.warning("%s", converted)
    exif = image.getexif()
    exif_bytes = None
    if len(exif):
        exif[ORIENTATION] = 1
        exif_bytes = exif.tobytes()
    alpha = None
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        alpha = ImageOps.exif_transpose(image).convert("RGBA").getchannel("A")
    return PhotoMeta(image.info.get("icc_profile"), exif_bytes, alpha, converted)
