"""The photo as it was given, and how a full-size output keeps it: every pixel the removal leaves alone is the input's
own bytes, colour and alpha, in the input's own mode wherever a PNG can hold it.

* Mode: ``RGB``, ``RGBA``, ``L``, ``LA`` and 16-bit grey (``I;16``) come back in their mode. A palette image comes back
  as its palette's colours (``RGB``, or ``RGBA`` with transparency), a bilevel one as ``L``, CMYK as sRGB, 32-bit and
  float grey as 8-bit grey; the record's ``converted`` says so.
* Alpha: kept untouched. The model sees the photo over white; only colour channels change, and only under the mask.
* EXIF: the orientation is applied to the pixels when the photo is read, so the output's EXIF is the photo's with
  orientation 1 (every other tag kept).
* ICC profile: kept when its colour space is the output's (an RGB profile on colour, GRAY on grey); a CMYK photo is
  converted through its profile to sRGB (the model sees those colours too) and the output carries an sRGB profile; a
  profile of another colour space is dropped, never attached to pixels it does not describe.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps

from magicremover.images import READ_AS_8_BIT, SRGB

log = logging.getLogger("magicremover")
ORIENTATION = 0x0112
COLOUR_CHANNELS = {"RGB": 3, "RGBA": 3, "L": 1, "LA": 1, "I;16": 1}  # the modes an output keeps, and what it edits
_GREY = {"L", "LA", "I;16"}
_SIXTEEN = {"I;16", "I;16B", "I;16L", "I;16N"}


@dataclass(frozen=True)
class PhotoMeta:
    """The photo's own data.

    Attributes:
        original: the photo upright, in the mode the output keeps (a key of ``COLOUR_CHANNELS``).
        icc_profile: the profile the output carries (``None``: none, or dropped).
        exif: the photo's EXIF with orientation 1.
        converted: why the kept pixels differ from the file's, if they do.
        icc: what happened to the photo's profile, for the record.
    """

    original: Image.Image
    icc_profile: bytes | None = None
    exif: bytes | None = None
    converted: str | None = None
    icc: str | None = None

    def composite(self, edit: Image.Image, alpha: np.ndarray | None) -> Image.Image:
        """The photo with ``edit`` blended in, in the photo's own mode, with its ICC profile and EXIF attached (PIL
        ``info``, which :func:`magicremover.outputs.save_image` writes).

        Args:
            edit: RGB at the photo's size (the model's output over its box).
            alpha: ``(H, W)`` weights in [0, 1]; ``None`` takes the edit everywhere. Where α = 0 every byte, colour and
                alpha, is the original's; elsewhere the colour channels become ``original + α (edit − original)``.
        """
        mode = self.original.mode
        channels = COLOUR_CHANNELS[mode]
        out = np.array(self.original)
        shaped = out.reshape(*out.shape[:2], -1)  # a view: grey modes as one channel
        weight = np.ones(out.shape[:2], np.float32) if alpha is None else np.asarray(alpha, np.float32)
        changed = weight > 0
        new = _colour_values(edit, mode)[changed]
        old = shaped[changed][:, :channels].astype(np.float64)
        blended = old + weight[changed][:, None] * (new - old)
        shaped[changed, :channels] = np.round(blended).clip(0, np.iinfo(out.dtype).max).astype(out.dtype)
        image = Image.fromarray(out)
        for key in ("icc_profile", "exif"):
            if getattr(self, key):
                image.info[key] = getattr(self, key)
        return image

    def record(self) -> dict:
        """What was kept, for ``result.json``."""
        return {
            "mode": self.original.mode,
            "icc_profile": self.icc,
            "exif": "orientation applied to the pixels, written as 1" if self.exif else None,
            "alpha": "kept untouched" if self.original.mode in ("RGBA", "LA") else None,
            "converted": self.converted,
        }


def _colour_values(edit: Image.Image, mode: str) -> np.ndarray:
    """``edit`` (RGB) as float colour values of ``mode``: ``(H, W, 3)`` for colour, ``(H, W, 1)`` luma for grey (×257
    for 16 bits)."""
    if mode not in _GREY:
        return np.asarray(edit.convert("RGB"), dtype=np.float64)
    luma = np.asarray(edit.convert("L"), dtype=np.float64)[..., None]
    return luma * 257 if mode == "I;16" else luma


def read_meta(image: Image.Image, seen: Image.Image) -> PhotoMeta:
    """The metadata and kept pixels of a photo as opened (its own mode, EXIF not yet applied); ``seen`` is the upright
    RGB the model sees (:func:`magicremover.images.load_image` of it), kept where the photo's mode cannot be."""
    upright = ImageOps.exif_transpose(image)
    space = _space(image.info.get("icc_profile"))
    original, converted = _kept(upright, seen, image, space)
    if converted:
        log.warning("%s", converted)
    exif = image.getexif()
    exif_bytes = None
    if len(exif):
        exif[ORIENTATION] = 1
        exif_bytes = exif.tobytes()
    profile, icc = _profile(image.info.get("icc_profile"), space, image.mode, original.mode)
    return PhotoMeta(original, profile, exif_bytes, converted, icc)


def _kept(
    upright: Image.Image, seen: Image.Image, opened: Image.Image, space: str | None
) -> tuple[Image.Image, str | None]:
    """The photo's pixels in the mode the output keeps, and why they differ from the file's (``None``: they do not);
    ``space`` is the colour space of the photo's ICC profile."""
    mode, kind = upright.mode, opened.format or "image"
    if mode in _SIXTEEN:
        return Image.fromarray(np.asarray(upright).astype(np.uint16)), None
    if opened.info.get(READ_AS_8_BIT):
        return upright, opened.info[READ_AS_8_BIT]
    if mode in COLOUR_CHANNELS:
        return upright, None
    if mode in ("P", "PA"):
        transparent = mode == "PA" or "transparency" in upright.info
        return upright.convert("RGBA" if transparent else "RGB"), None
    if mode == "1":
        return upright.convert("L"), None
    if mode == "CMYK":
        how = "through its ICC profile to sRGB" if space == "CMYK" else "to RGB"
        return seen, f"a CMYK {kind} was converted {how}; the output is RGB"
    if mode in ("I", "F"):
        return seen.convert("L"), f"a {mode}-mode {kind} was scaled to 8-bit grey; the output is 8-bit"
    return seen, f"a {mode} {kind} was converted to RGB; the output is RGB"


def _profile(icc: bytes | None, space: str | None, mode: str, kept_mode: str) -> tuple[bytes | None, str | None]:
    """The profile the output carries and what happened to the photo's ``icc`` (of colour space ``space``)."""
    if not icc:
        return None, None
    wanted = "GRAY" if kept_mode in _GREY else "RGB"
    if mode == "CMYK" and space == "CMYK":
        return ImageCms.ImageCmsProfile(SRGB).tobytes(), "the photo's CMYK profile converted its pixels to sRGB"
    if space == wanted:
        return icc, "kept"
    reason = f"dropped: a {space or 'unreadable'} profile does not describe a {kept_mode} output"
    log.warning("the photo's ICC profile was %s", reason)
    return None, reason


def _space(icc: bytes | None) -> str | None:
    """An ICC profile's colour space (``RGB``, ``GRAY``, ``CMYK``, …), or ``None`` when it cannot be read."""
    if not icc:
        return None
    try:
        return ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip()
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None
