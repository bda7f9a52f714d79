"""The call contract every remover (the method, its ablations, every baseline) implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Protocol

import torch
from PIL import Image

from magicremover.errors import NonFiniteError

if TYPE_CHECKING:
    from magicremover.models import SDComponents
from magicremover.unet_calls import StageCount


@dataclass(frozen=True)
class RemovalSample:
    """One removal request.

    Attributes:
        image: the input, RGB, any size.
        prompt: a caption of the image that names the object, e.g. ``"a photo of a dog"``.
        target: the word or phrase of the prompt naming the object to remove, e.g. ``"dog"``.
        mask: optional object mask, same size as ``image``; white (1) = object, grey = soft.
        instruction: optional instruction for instruction-following baselines, e.g. ``"remove the dog"``.
        sample_id: a name for logs and output files.
    """

    image: Image.Image
    prompt: str
    target: str
    mask: Image.Image | None = None
    instruction: str | None = None
    sample_id: str = "sample"


@dataclass
class RemovalResult:
    """What a remover returns. Images are ``(1, 3, H, W)`` float32 in [0, 1] at the model resolution.

    Attributes:
        image: the edited image.
        reconstruction: the inversion's reconstruction of the input, when the method makes one.
        attention: the soft target attention map ``(1, 1, H, W)`` in [0, 1], when the method makes one.
        mask: the final removal mask M ``(1, 1, H, W)`` in [0, 1], when the method makes one.
        calls: UNet cost per stage for this sample.
        seconds: wall time per stage.
        extras: anything else worth recording (JSON-serialisable).
    """

    image: torch.Tensor
    reconstruction: torch.Tensor | None = None
    attention: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    calls: dict[str, StageCount] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    extras: dict = field(default_factory=dict)

    def images(self) -> dict[str, torch.Tensor]:
        """The images the result holds, by kind (``output``, ``reconstruction``, ``attention``, ``mask``)."""
        kinds = {
            "output": self.image,
            "reconstruction": self.reconstruction,
            "attention": self.attention,
            "mask": self.mask,
        }
        return {kind: image for kind, image in kinds.items() if image is not None}

    def check_finite(self) -> None:
        """Raise :class:`~magicremover.errors.NonFiniteError` naming the first image with NaN or infinite values."""
        for kind, image in self.images().items():
            if not torch.isfinite(image).all():
                raise NonFiniteError(kind, f"the {kind}")


class Remover(Protocol):
    """A removal method: the method, each ablation and each baseline.

    Attributes:
        requires: the optional sample fields it cannot work without (``"mask"``, ``"instruction"``), so a harness
            can refuse a dataset that lacks them before running anything.
        families: the model families it runs on (``sd``, ``sdxl``, ``flux``); ``{"sd", "sdxl"}`` when not declared,
            checked by :func:`~magicremover.config.build_remover` before it is built.
        resolution: the side of the square it works at and returns (its diffusion model's, or its own setting).
        resize: how it fits a photo to that square (``stretch`` or ``center_crop``).
        components: the loaded diffusion model it runs on, which a second configuration (mask mode) can share;
            ``None`` for removers that bring their own network (LaMa, SD-Inpaint, Inst-Inpaint).
    """

    requires: ClassVar[frozenset[str]]
    resolution: int
    resize: str
    components: SDComponents | None

    def __call__(self, sample: RemovalSample) -> RemovalResult: ...
