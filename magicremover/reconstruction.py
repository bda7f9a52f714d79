"""Inversion followed by plain reconstruction: the identity "removal", and the reference every edit starts from."""

from __future__ import annotations

import time
from pathlib import Path
from typing import ClassVar

from magicremover.accounting import UNetCalls
from magicremover.diffusion import decode_latents
from magicremover.images import Resize, fit_to_model, load_image
from magicremover.inversion import InversionCache, InversionConfig, invert_cached, reconstruct
from magicremover.models import SDComponents
from magicremover.tokens import find_target
from magicremover.types import RemovalResult, RemovalSample


class Reconstruction:
    """Invert the image under its prompt, then denoise it back with CFG; nothing is removed.

    Its output shows what the inversion alone preserves (the null-text reconstruction the authors' code used as the
    FID reference), and its cost is the inversion's.

    Args:
        components: the diffusion model.
        inversion: how to invert.
        resize: how to fit the image to the model resolution (``stretch`` or ``center_crop``).
        cache_dir: folder of the inversion cache; ``None`` disables caching.
    """

    requires: ClassVar[frozenset[str]] = frozenset()

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

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        c = self.components
        find_target(c.tokenizer, sample.prompt, sample.target)  # fail on a bad target before any UNet call
        before = c.calls.totals()
        start = time.perf_counter()
        image = fit_to_model(load_image(sample.image), c.resolution, self.resize)
        inversion = invert_cached(c, image, sample.prompt, self.inversion, self.cache)
        latents = reconstruct(c, inversion, self.inversion.guidance_scale)
        output = decode_latents(c, latents).cpu()
        calls = UNetCalls.delta(c.calls.totals(), before)
        seconds = {name: count.seconds for name, count in calls.items()}
        seconds["total"] = time.perf_counter() - start
        return RemovalResult(
            image=output,
            reconstruction=output,
            calls=calls,
            seconds=seconds,
            extras={"inversion_from_cache": inversion.from_cache},
        )
