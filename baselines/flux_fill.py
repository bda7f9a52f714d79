"""FLUX.1 Fill: the mask-based inpainter of FLUX's generation, through diffusers' ``FluxFillPipeline``.

What SD-Inpaint was for the paper: a model trained to fill a masked region, given the image, the mask and a prompt.
Its transformer reads, per packed token, the noisy latent, the masked image's latent and the mask (64 + 64 + 256 =
384 channels). Settings follow the model card of ``black-forest-labs/FLUX.1-Fill-dev`` (50 steps, guidance 30, 512
T5 tokens); the prompt is empty, as SD-Inpaint's is blank, so the model fills from the surroundings alone.
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch

from magicremover.errors import ImageError, ModelLoadError
from magicremover.flux import TEXT_TOKENS, FluxComponents
from magicremover.images import Resize, dilate, fit_mask, fit_to_model, load_image, to_pil, to_tensor
from magicremover.models import load_pretrained
from magicremover.types import RemovalResult, RemovalSample


class FluxFill:
    """Mask-based removal with a FLUX.1 Fill model (``model=flux_fill`` or a local ``FluxFillPipeline`` folder).

    Args:
        components: the loaded model: a FLUX Fill model, unless ``path`` names one.
        path: a local FLUX Fill folder (or hub id) to load instead of ``components`` (``weights.flux_fill``), so that a
            comparison on FLUX.1-dev (``+artefact=sota_flux``) runs this row too; loaded at the model's side, device
            and precision.
        prompt: what the filled region should show (``""``: let the surroundings decide).
        num_inference_steps / guidance_scale: the model card's 50 and 30 (guidance-distilled: one call per step).
        mask_dilation: square kernel applied to the binarised mask first (0).
        resize: how the photo is fitted to the model's square.
        seed: the generator's seed per call.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"mask"})
    families: ClassVar[frozenset[str]] = frozenset({"flux"})

    def __init__(
        self,
        components: FluxComponents,
        path: str | None = None,
        prompt: str = "",
        num_inference_steps: int = 50,
        guidance_scale: float = 30.0,
        mask_dilation: int = 0,
        resize: Resize = "stretch",
        seed: int = 0,
    ):
        if path and isinstance(components, FluxComponents):
            dtype = str(components.dtype).removeprefix("torch.")
            components = load_pretrained(
                path=path, device=str(components.device), dtype=dtype, resolution=components.resolution
            )
        if not isinstance(components, FluxComponents) or not components.is_fill:
            raise ModelLoadError(
                "method=flux_fill needs a FLUX.1 Fill model: model=flux_fill, or model=local model.path=DIR with a "
                "FluxFillPipeline folder"
            )
        self.components = components
        self.prompt, self.steps, self.guidance_scale = prompt, num_inference_steps, guidance_scale
        self.mask_dilation, self.resize, self.seed = mask_dilation, resize, seed

    @property
    def resolution(self) -> int:
        return self.components.resolution

    @staticmethod
    def planned_calls(num_inference_steps: int, **_) -> dict[str, int]:
        """What one removal with these settings runs: one transformer call per step over every token (guidance is
        distilled), two VAE encodes (the image and the masked image) and one decode."""
        return {"full": num_inference_steps, "foreground": 0, "vae_encode": 2, "vae_decode": 1}

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        if sample.mask is None:
            raise ImageError(f"FLUX Fill needs a mask and sample {sample.sample_id} has none; pass mask=PATH")
        c = self.components
        before, start = c.calls.totals(), time.perf_counter()
        source = load_image(sample.image)
        image = fit_to_model(source, self.resolution, self.resize)
        hole = fit_mask(sample.mask, source.size, tuple(image.shape[-2:]), self.resize) > 0.5
        hole = dilate(hole.float(), self.mask_dilation)
        height, width = image.shape[-2:]
        with c.calls.stage("edit"):
            output = c.pipe(
                prompt=self.prompt,
                image=to_pil(image),
                mask_image=to_pil(hole),
                height=height,
                width=width,
                num_inference_steps=self.steps,
                guidance_scale=self.guidance_scale,
                max_sequence_length=TEXT_TOKENS,
                generator=torch.Generator(c.device).manual_seed(self.seed),
            ).images[0]
        calls, seconds = c.calls.since(before, start)
        return RemovalResult(
            image=to_tensor(output), mask=hole, calls=calls, seconds=seconds, extras={"prompt": self.prompt}
        )
