"""What removing an object from a photo gives back, and several one-object passes over one photo as one removal."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from magicremover.photo_meta import PhotoMeta
from magicremover.types import RemovalResult


@dataclass
class Removal:
    """What :func:`magicremover.remove` returns. Images are RGB PIL images at the photo's size (``mode="full_size"``) or at the
    model's square (``mode="model"``, the paper protocol).

    Attributes:
        input: the photo as read (upright RGB), at the output's size.
        image: the photo with the object removed.
        reconstruction: the inversion's reconstruction of the photo (every pixel re-rendered), when the method makes one.
        mask: the final mask M (grey, white = removed), when the method makes one; at full size, the compositing
            weight (the mask dilated and feathered).
        attention: the target word's attention as a heat map over the photo, when the method makes one.
        record: what ran: prompt, target, mode, sizes, paste-back figures, UNet calls and seconds per stage.
        result: the method's raw result at the model's resolution.
        passes: with several targets, each one-object pass (its mask, record, …) in order; empty otherwise.
        alpha: the compositing weight ``(H, W)`` in [0, 1] at the output's size (``None``: the method's output was
            taken everywhere, as no mask was given or made).
        edit: the method's output (RGB) over the region it saw, the photo elsewhere: what ``alpha`` blends in.
    """

    input: Image.Image
    image: Image.Image
    reconstruction: Image.Image | None
    mask: Image.Image | None
    attention: Image.Image | None
    record: dict
    result: RemovalResult = field(repr=False)
    passes: list[Removal] = field(default_factory=list, repr=False)
    alpha: np.ndarray | None = field(default=None, repr=False)
    edit: Image.Image | None = field(default=None, repr=False)


def combined(passes: list[Removal], meta: PhotoMeta) -> Removal:
    """Several one-object passes over one photo as one removal: each pixel from the pass that claims it most, by its
    α times how much its edit changed the pixel (where two masks overlap, the pass that removed something there wins
    over the pass that kept it), blended into the photo once by that pass's α (so a ring claimed by two passes is
    weighted α, never α²); α = 0 everywhere keeps the photo's bytes. Also the union of the masks and every pass's
    record."""
    base = np.asarray(passes[0].input.convert("RGB"))
    edits = np.stack([np.asarray(p.edit.convert("RGB")) for p in passes])
    alphas = np.stack([p.alpha if p.alpha is not None else np.ones(base.shape[:2], np.float32) for p in passes])
    change = np.abs(edits.astype(np.float32) - base).mean(axis=-1) / 255
    index = np.argmax(alphas * (change + 1e-6), axis=0)
    rows, cols = np.indices(index.shape)
    edit, alpha = Image.fromarray(edits[index, rows, cols]), alphas[index, rows, cols]
    masks = [np.asarray(p.mask.convert("L")) for p in passes if p.mask is not None]
    calls: dict[str, dict] = {}
    for removal in passes:
        for stage, count in removal.record["unet_calls"].items():
            total = calls.setdefault(stage, dict.fromkeys(count, 0))
            for key, value in count.items():
                total[key] = total.get(key, 0) + value
    first = passes[0].record
    record = {key: first[key] for key in ("prompt", "input_size", "method", "mode") if key in first}
    record |= {
        "targets": [p.record["target"] for p in passes],
        "unet_calls": calls,
        "passes": [p.record for p in passes],
        "output_size": passes[-1].record.get("output_size"),
    }
    return Removal(
        input=passes[0].input,
        image=meta.composite(edit, alpha),
        reconstruction=passes[0].reconstruction,
        mask=Image.fromarray(np.maximum.reduce(masks)).convert("RGB") if masks else None,
        attention=passes[0].attention,
        record=record,
        result=passes[-1].result,
        passes=passes,
        alpha=alpha,
        edit=edit,
    )
