"""LEDITS++ (Brack et al., CVPR 2024) as a remover: diffusers' ``LEditsPPPipelineStableDiffusion`` (or its ``…XL``
twin on an SDXL model) on the shared model.

Text-only and mask-free: edit-friendly DDPM inversion (``invert``), then removal as the target word's editing prompt
in the reverse direction (``editing_prompt=[target]``, ``reverse_editing_direction=True``), with the pipeline's
implicit masks (cross-attention ∩ noise, ``use_intersect_mask``). The pipeline is diffusers' own, built from the loaded
components with a fresh multistep DPM-Solver++ (SDE) scheduler, as its documentation builds it; nothing is copied.
Its implicit masks stay inside the pipeline (diffusers exposes none), so the result carries no compositing mask and
the full-size paste-back says so in its record.
"""

from __future__ import annotations

import time
from typing import ClassVar

import torch

from magicremover.errors import ConfigError
from magicremover.images import Resize, fit_to_model, load_image, to_pil, to_tensor
from magicremover.models import SDComponents
from magicremover.target_tokens import find_target
from magicremover.types import RemovalResult, RemovalSample


def ledits_pipeline(c: SDComponents):
    """diffusers' LEDITS++ pipeline over ``c``'s modules, with its own DPM-Solver++ SDE scheduler (the pipeline
    rewrites its scheduler's config, so the shared DDIM scheduler is not handed to it). On SDXL, no invisible
    watermark: an evaluated removal must differ from its input only where the method changed it."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        LEditsPPPipelineStableDiffusion,
        LEditsPPPipelineStableDiffusionXL,
    )

    scheduler = DPMSolverMultistepScheduler.from_config(
        c.scheduler.config, algorithm_type="sde-dpmsolver++", solver_order=2
    )
    if c.is_xl:
        pipe = LEditsPPPipelineStableDiffusionXL(
            c.vae,
            c.text_encoder,
            c.text_encoder_2,
            c.tokenizer,
            c.tokenizer_2,
            c.unet,
            scheduler,
            force_zeros_for_empty_prompt=c.zero_empty_prompt,
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe
    pipe = LEditsPPPipelineStableDiffusion(
        c.vae,
        c.text_encoder,
        c.tokenizer,
        c.unet,
        scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


class LeditsPP:
    """Removal by LEDITS++ with its paper's removal settings as defaults.

    Args:
        components: the diffusion model (shared with every other method).
        num_inversion_steps: DDPM inversion steps (30); ``skip``: the fraction of them skipped at the noisy end (0.15).
        source_prompt: the inversion's prompt (``""``, the pipeline's default); ``source_guidance_scale``: its CFG.
        edit_guidance_scale: strength of the reversed target direction (5); ``edit_threshold``: the implicit mask's
            quantile (0.9); ``edit_warmup_steps``: steps before the edit starts (0).
        use_intersect_mask: intersect the noise mask with the target's cross-attention mask (needs cross-attention
            at a quarter of the latent side, as SD has); ``auto``: where the model has it (the toy and tiny models do
            not), recorded in the result.
        resize: how the image is fitted to the model's square.
        seed: the inversion's noise generator seed.
    """

    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        components: SDComponents,
        num_inversion_steps: int = 30,
        skip: float = 0.15,
        source_prompt: str = "",
        source_guidance_scale: float = 3.5,
        edit_guidance_scale: float = 5.0,
        edit_threshold: float = 0.9,
        edit_warmup_steps: int = 0,
        use_intersect_mask: bool | str = "auto",
        resize: Resize = "stretch",
        seed: int = 0,
    ):
        if not 0 <= skip < 1:
            raise ConfigError(f"method.skip={skip} must be a fraction of the inversion steps in [0, 1)")
        if not 0 <= edit_threshold <= 1:
            raise ConfigError(f"method.edit_threshold={edit_threshold} must be a quantile in [0, 1]")
        strides = components.cross_attention_strides  # a quarter of the latent side is stride 4
        if use_intersect_mask not in (True, False, "auto"):
            raise ConfigError(f"method.use_intersect_mask={use_intersect_mask} is not true, false or auto")
        if use_intersect_mask == "auto":
            use_intersect_mask = 4 in strides
        elif use_intersect_mask and 4 not in strides:
            side = components.resolution // components.vae_scale_factor
            quarter, grids = side // 4, {side // k for k in strides}
            raise ConfigError(
                f"LEDITS++ reads cross-attention at a quarter of the latent side ({quarter}²) and this model has it at "
                f"{', '.join(f'{g}²' for g in sorted(grids))} only; set method.use_intersect_mask=auto or false"
            )
        self.components = components
        self.settings = dict(
            num_inversion_steps=num_inversion_steps,
            skip=skip,
            source_prompt=source_prompt,
            source_guidance_scale=source_guidance_scale,
        )
        self.edit = dict(
            edit_guidance_scale=edit_guidance_scale,
            edit_threshold=edit_threshold,
            edit_warmup_steps=edit_warmup_steps,
            use_intersect_mask=use_intersect_mask,
        )
        self.resize, self.seed = resize, seed

    @property
    def resolution(self) -> int:
        return self.components.resolution

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        c = self.components
        find_target(c.tokenizer, sample.prompt, sample.target)  # the target must be a word of the prompt, checked first
        start, before = time.perf_counter(), c.calls.totals()
        image = fit_to_model(load_image(sample.image), self.resolution, self.resize)
        pipe = ledits_pipeline(c)
        saved = dict(c.unet.attn_processors)  # the pipeline installs its own processors on the shared UNet
        try:
            with c.calls.stage("inversion"):
                pipe.invert(
                    to_pil(image),
                    generator=torch.Generator(c.device).manual_seed(self.seed),
                    height=self.resolution,
                    width=self.resolution,
                    **self.settings,
                )
            with c.calls.stage("edit"):
                output = pipe(editing_prompt=[sample.target], reverse_editing_direction=[True], **self.edit).images[0]
        finally:
            c.unet.set_attn_processor(saved)
        calls, seconds = c.calls.since(before, start)
        return RemovalResult(
            image=to_tensor(output),
            calls=calls,
            seconds=seconds,
            extras={
                "editing_prompt": [sample.target],
                "mask": "LEDITS++'s implicit masks are not exposed by diffusers' pipeline: no compositing mask",
                **self.settings,
                **self.edit,
            },
        )
