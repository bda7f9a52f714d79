"""The base of every remover that inverts the image first (:class:`InvertingRemover`), and the plainest of them:
inversion followed by reconstruction (:class:`Reconstruction`), the identity "removal" every edit starts from."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, ClassVar

import torch
from PIL import Image

from magicremover.diffusion import decode_latents
from magicremover.images import Resize, fit_to_model, load_image
from magicremover.inversion import Inversion, InversionCache, InversionConfig, invert_cached, reconstruct
from magicremover.models import SDComponents
from magicremover.target_tokens import find_target
from magicremover.types import RemovalResult, RemovalSample


class InvertingRemover:
    """Base of the removers that start from the image's inversion into the diffusion model.

    Args:
        components: the diffusion model.
        inversion: how to invert.
        resize: how to fit the image to the model resolution (``stretch`` or ``center_crop``).
        cache_dir: folder of the inversion cache, shared by every method; ``None`` disables caching.
    """

    requires: ClassVar[frozenset[str]] = frozenset()
    needs_full_trajectory: bool = False  # every trajectory latent is read back (Direct Inversion), not only the ends

    def __init__(
        self,
        components: SDComponents,
        inversion: InversionConfig,
        resize: Resize = "stretch",
        cache_dir: str | Path | None = None,
    ):
        self.components = components
        self.inversion = inversion
        self.resize = resize
        self.cache = InversionCache(cache_dir) if cache_dir else None

    @property
    def resolution(self) -> int:
        """The diffusion model's side."""
        return self.components.resolution

    def fit(self, sample: RemovalSample) -> tuple[Image.Image, torch.Tensor]:
        """The input as read, and fitted to the model: ``(1, 3, H, W)`` in [0, 1]."""
        source = load_image(sample.image)
        return source, fit_to_model(source, self.resolution, self.resize)

    def invert(
        self, sample: RemovalSample, image: torch.Tensor, after_call: Callable[[int], None] | None = None
    ) -> Inversion:
        """The inversion of the fitted ``image`` under the sample's prompt, from the cache when possible
        (``after_call``: see :func:`~magicremover.inversion.cache.invert_cached`)."""
        return invert_cached(
            self.components, image, sample.prompt, self.inversion, self.cache, self.needs_full_trajectory, after_call
        )

    def provenance(self, inversion: Inversion) -> dict:
        """What every result records about how it was computed: the model's precision and the inversion's source."""
        return {
            "dtype": str(self.components.dtype).removeprefix("torch."),
            "inversion_from_cache": inversion.from_cache,
        }


class Reconstruction(InvertingRemover):
    """Invert the image under its prompt, then denoise it back with CFG; nothing is removed.

    Its output shows what the inversion alone preserves (the null-text reconstruction the authors' code used as the
    FID reference), and its cost is the inversion's.
    """

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        c = self.components
        find_target(c.tokenizer, sample.prompt, sample.target)  # fail on a bad target before any UNet call
        before = c.calls.totals()
        start = time.perf_counter()
        _, image = self.fit(sample)
        inversion = self.invert(sample, image)
        latents = reconstruct(c, inversion, self.inversion.guidance_scale)
        output = decode_latents(c, latents).cpu()
        calls, seconds = c.calls.since(before, start)
        return RemovalResult(
            image=output,
            reconstruction=output,
            calls=calls,
            seconds=seconds,
            extras=self.provenance(inversion),
        )
