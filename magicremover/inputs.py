"""What a user may pass as a photo or a mask (a path, a PIL image, a numpy array, a torch tensor), as PIL images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magicremover.errors import ImageError
from magicremover.images import load_image, load_mask, open_image

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor


def as_pil(source: ImageInput) -> Image.Image:
    """A path, PIL image, numpy array or torch tensor as a PIL image in its own mode (a file is opened and read).

    Arrays are ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)``; tensors ``(H, W)``, ``(C, H, W)`` or ``(1, C, H, W)`` with
    C = 1, 3 or 4; either uint8, bool, or float in [0, 1].

    Raises:
        ImageError: another type, shape, dtype or range (one line naming the accepted forms), or an unreadable file.
    """
    if isinstance(source, torch.Tensor):
        tensor = source.detach().cpu()
        tensor = tensor[0] if tensor.ndim == 4 and tensor.shape[0] == 1 else tensor
        if tensor.ndim == 3 and tensor.shape[0] in (1, 3, 4):
            tensor = tensor.permute(1, 2, 0)
            tensor = tensor[..., 0] if tensor.shape[-1] == 1 else tensor
        elif tensor.ndim != 2:
            raise ImageError(f"an image tensor must be (H, W), (C, H, W) or (1, C, H, W); got {tuple(source.shape)}")
        source = tensor.float().numpy() if tensor.is_floating_point() else tensor.numpy()
    if isinstance(source, np.ndarray):
        array = source
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
            raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {array.shape}")
        if array.dtype == bool:
            array = array * 255
        elif np.issubdtype(array.dtype, np.floating):
            if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
                raise ImageError("a float image array must hold values in [0, 1]; scale it or pass uint8")
            array = np.round(array * 255)
        elif array.dtype != np.uint8:
            raise ImageError(f"an image array must be uint8, bool or float in [0, 1]; got {array.dtype}")
        return Image.fromarray(array.astype(np.uint8))
    if isinstance(source, (str, Path, Image.Image)):
        return open_image(source)
    raise ImageError(
        f"an image must be a path, a PIL image, a numpy array or a torch tensor; got {type(source).__name__}"
    )


def as_image(source: ImageInput) -> Image.Image:
    """Any :func:`as_pil` input as upright 8-bit RGB, as a model sees it (:func:`magicremover.images.load_image`)."""
    return load_image(as_pil(source))


def as_mask(source: ImageInput) -> Image.Image:
    """Any :func:`as_pil` input as an upright grey mask, white = object (:func:`magicremover.images.load_mask`'s
    rule: grey levels, or the alpha of one colour painted on transparency)."""
    return load_mask(as_pil(source))
