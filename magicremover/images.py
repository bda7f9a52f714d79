"""Reading images and masks from any PIL-readable file, fitting them to the model resolution, growing masks, and
comparing images (PSNR)."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from magicremover.errors import ConfigError, ImageError

Resize = Literal["stretch", "center_crop"]
MIN_SIDE = 8
UNIFORM_LEVELS = 8  # a mask colour varying by at most this many grey levels over its visible pixels is one colour
SRGB = ImageCms.createProfile("sRGB")
READ_AS_8_BIT = "magicremover.read_as_8_bit"  # info key of a 16-bit colour file PIL read as 8 bits: what was lost
log = logging.getLogger(__name__)


def open_image(source: str | Path | Image.Image, min_side: int = MIN_SIDE) -> Image.Image:
    """Open a PIL-readable file fully, in its own mode and orientation (a PIL image is returned as it is). A 16-bit
    colour file, which PIL reads as 8 bits, says so in ``info[READ_AS_8_BIT]``.

    An animated image gives its first frame (with a warning saying so).

    Raises:
        ImageError: the file is missing, not an image, truncated, larger than PIL's decompression-bomb limit, or
            smaller than ``min_side`` pixels.
    """
    if isinstance(source, Image.Image):
        image, name = source, "the image"
    else:
        path = Path(source).expanduser()
        name = str(path)
        if not path.is_file():
            raise ImageError(f"image file {path} does not exist; pass image=PATH to an existing file")
        try:
            image = Image.open(path)
            frames = getattr(image, "n_frames", 1)
            depth = str(image.tile[0][3]) if image.tile else ""  # the file's own sample format, gone after load
            image.load()
        except UnidentifiedImageError:
            raise ImageError(f"{path} is not an image PIL can read; convert it to PNG or JPEG") from None
        except Image.DecompressionBombError as err:
            raise ImageError(f"{path} is too large to read safely ({err}); downscale it first") from None
        except (OSError, SyntaxError) as err:
            raise ImageError(f"{path} is corrupt or truncated ({err}); re-export the file") from None
        if frames > 1:
            log.warning("%s has %d frames; using the first", path, frames)
        if "16" in depth and not image.mode.startswith("I;16"):
            image.info[READ_AS_8_BIT] = f"a 16-bit {image.format} was read as 8-bit; the output is 8-bit"
    if min(image.size) < min_side:
        raise ImageError(f"{name} is {image.width}x{image.height}; images must be at least {min_side} px on each side")
    return image


def load_image(source: str | Path | Image.Image, min_side: int = MIN_SIDE) -> Image.Image:
    """Open any PIL-readable image as 8-bit RGB, upright: what a model sees.

    EXIF orientation is applied; alpha is composited over white; a CMYK image with an ICC profile is converted
    through it to sRGB; palette, grey and 16-bit/32-bit integer images are converted (16-bit values scaled by 1/257,
    not clipped). Errors as :func:`open_image`.
    """
    return _to_rgb(ImageOps.exif_transpose(open_image(source, min_side)))


def load_mask(source: str | Path | Image.Image, min_side: int = 1) -> Image.Image:
    """Open a mask as an upright 8-bit grey image, white (255) = object, by one rule:

    * no alpha channel, or one that is opaque everywhere: the grey level marks the object;
    * an alpha channel that varies over a colour that does not (strokes of one colour on transparency, as painting
      tools save a mask): the alpha marks the object, whatever the colour;
    * both vary: refused, as the two can disagree on what the object is.

    A mask never goes through :func:`load_image`, whose white background would mark every transparent pixel.

    Raises:
        ImageError: as :func:`open_image`, or a mask whose alpha and grey levels both vary.
    """
    image = ImageOps.exif_transpose(open_image(source, min_side))
    if image.mode == "P" or image.mode == "PA":
        image = image.convert("RGBA")
    if image.mode not in {"RGBA", "LA"}:
        return _to_8bit(image).convert("L")
    alpha = np.asarray(image.getchannel("A"))
    if alpha.min() == 255:
        return image.convert("RGB").convert("L")
    grey = np.asarray(image.convert("RGB").convert("L"))[alpha > 0]
    if grey.size == 0 or int(grey.max()) - int(grey.min()) <= UNIFORM_LEVELS:
        return Image.fromarray(alpha, mode="L")
    raise ImageError(
        "the mask has both transparency and grey levels, which can disagree on the object; save it as grey "
        "(white = object, no alpha) or as one colour painted on transparency"
    )


def _to_8bit(image: Image.Image) -> Image.Image:
    """Integer and float grey images as 8-bit ``L`` (16-bit values scaled by 1/257); other modes unchanged."""
    if image.mode not in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        return image
    values = np.asarray(image, dtype=np.float64)
    scale = 1 / 257 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
    if image.mode == "I" and values.max() > 65535:
        scale = 255 / values.max()
    return Image.fromarray(np.clip(np.round(values * scale), 0, 255).astype(np.uint8), mode="L")


def _to_rgb(image: Image.Image) -> Image.Image:
    image = _to_8bit(image)
    if image.mode == "CMYK" and image.info.get("icc_profile"):
        converted = cmyk_to_srgb(image)
        if converted is not None:
            return converted
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in {"RGBA", "LA", "PA"}:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def cmyk_to_srgb(image: Image.Image) -> Image.Image | None:
    """A CMYK image converted through its own ICC profile to sRGB (relative colorimetric), or ``None`` (with a
    warning) when the profile cannot be used."""
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        return ImageCms.profileToProfile(image, profile, SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError) as err:
        log.warning("the CMYK image's ICC profile cannot be used (%s); converting without it", err)
        return None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image → ``(1, 3, H, W)`` float32 in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """``(1, 3, H, W)`` or ``(3, H, W)`` in [0, 1] → RGB PIL image (rounded, clamped)."""
    array = image.detach().float().cpu().reshape(-1, *image.shape[-2:]).clamp(0, 1)
    array = (array.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(array if array.shape[-1] == 3 else array[..., 0])


def fit_to_model(image: Image.Image, size: int | tuple[int, int], resize: Resize = "stretch") -> torch.Tensor:
    """Fit an image to the model resolution.

    Args:
        image: RGB image of any size.
        size: target side, or ``(height, width)``.
        resize: ``stretch`` — bilinear ``F.interpolate`` straight to the size, aspect ratio not kept, no
            antialias (the authors' code); ``center_crop`` — crop the central box of the target aspect, then PIL
            bicubic on the crop alone (the null-text reference's ``load_512``: crop first, so no pixel outside the
            box leaks into the edge rows as it does with ``ImageOps.fit``).

    Returns:
        ``(1, 3, H, W)`` float32 in [0, 1].
    """
    height, width = (size, size) if isinstance(size, int) else size
    if resize == "stretch":
        tensor = to_tensor(image)
        return F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
    if resize == "center_crop":
        return to_tensor(center_crop(image, width / height).resize((width, height), Image.Resampling.BICUBIC))
    raise ConfigError(f"resize={resize!r} is not one of stretch, center_crop")


def center_crop(image: Image.Image, aspect: float) -> Image.Image:
    """The central box of ``aspect`` = width / height, offsets rounded down as ``load_512`` (``(w − h) // 2``)."""
    width, height = image.size
    if width > height * aspect:
        crop = max(1, round(height * aspect))
        left = (width - crop) // 2
        return image.crop((left, 0, left + crop, height))
    crop = max(1, round(width / aspect))
    top = (height - crop) // 2
    return image.crop((0, top, width, top + crop))


def fit_mask(
    mask: Image.Image, image_size: tuple[int, int], size: tuple[int, int], resize: Resize = "stretch"
) -> torch.Tensor:
    """Fit a user mask exactly as its image was fitted (same stretch or crop).

    Args:
        mask: white (255) = object; grey levels give a soft mask (read by :func:`load_mask`'s rule).
        image_size: ``(width, height)`` of the image the mask belongs to.
        size: ``(height, width)`` of the model input.

    Returns:
        ``(1, 1, H, W)`` float32 in [0, 1].

    Raises:
        ImageError: the mask's size differs from the image's, it is all black, or its marked pixels vanish in the
            fitting.
    """
    if mask.size != tuple(image_size):
        raise ImageError(
            f"the mask is {mask.width}x{mask.height} but the image is {image_size[0]}x{image_size[1]}; "
            "give a mask of the image's size"
        )
    grey = load_mask(mask).convert("RGB")
    fitted = fit_to_model(grey, size, resize)[:, :1]
    if fitted.max() <= 0:
        marked = int(np.count_nonzero(np.asarray(grey.convert("L"))))
        if marked:
            raise ImageError(
                f"the mask's {marked} marked pixel(s) vanish when it is fitted to the model's {size[1]}x{size[0]}; "
                "mark a larger region"
            )
        raise ImageError("the mask is empty (all black); white marks the object to remove")
    return fitted


def dilate(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Binary dilation by a ``kernel`` × ``kernel`` square (as ``cv2.dilate`` with a ones kernel); ``(1, 1, H, W)``."""
    if kernel <= 1:
        return mask
    grown = F.max_pool2d(mask, kernel_size=kernel, stride=1, padding=kernel // 2)
    return grown[..., : mask.shape[-2], : mask.shape[-1]]


def psnr(a: np.ndarray, b: np.ndarray, region: np.ndarray | None = None) -> float:
    """PSNR (dB, peak 255) of images ``(H, W[, 3])`` in [0, 255] (uint8 or float), over the pixels where ``region``
    (``(H, W)`` or the images' shape; bool or a weight > 0.5) holds; NaN for an empty region. Errors below 1e-10
    count as 1e-10 (a cap of 148 dB for identical pixels)."""
    diff = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if region is not None:
        diff = diff[np.asarray(region) > 0.5]
    return float(10 * np.log10(255.0**2 / max(diff.mean(), 1e-10))) if diff.size else float("nan")
