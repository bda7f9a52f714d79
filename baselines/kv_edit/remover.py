"""KV-Edit (Zhu et al., arXiv 2502.17363) on a FLUX-family model: removal that leaves the background's tokens alone.

As its released code (``Xilluill/KV-Edit``, ``models/kv_edit.py`` and ``flux/sampling.py``) and demo run it: Euler
inversion of the image under the source prompt, caching every block's image K/V per step; then Euler denoising of
the masked tokens only, under the target prompt, their attention reading the cached background (``KVCache``); before
each step the masked tokens' elements outside the mask are reset from the inversion, and the result is composited
into the untouched latent. Proven equal to that code on tiny weights (``tests/test_kv_edit.py``).

Where this differs from the released code, on purpose: the image is encoded with the VAE posterior's mean (BFL's
autoencoder samples it, unseeded) and ``re_init``'s noise is seeded. Two of its quirks are kept, because its numbers
come from them: the denoising starts from the latent stored one inversion step below the top (not the final
inverted latent), and the latent and K/V read at noise level t are those the inversion computed one step below t.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from magicremover import flux
from magicremover.attention.install import controlled_attention
from magicremover.baselines.kv_edit.attention import KVCache
from magicremover.errors import ConfigError, ImageError, ModelLoadError
from magicremover.flux import FluxComponents
from magicremover.images import Resize, fit_mask, fit_to_model, load_image
from magicremover.types import RemovalResult, RemovalSample


@dataclass
class Trace:
    """What a KV-Edit removal computed, in latent space.

    Attributes:
        edited: packed latents ``(1, L, 4C)``: the input's until the edit ends, then the result.
        inverted: the inversion's latents by the level they are read at (KV-Edit's keys; empty when inversion-free).
        cache: the K/V cache (the last step's only, when inversion-free).
        foreground: ``(N_fg,)`` indices of the regenerated tokens.
        pixels: ``(1, 1, H, W)`` the pixels the edit may change (the latent mask at the image's size).
    """

    edited: torch.Tensor
    inverted: dict[float, torch.Tensor]
    cache: KVCache
    foreground: torch.Tensor
    pixels: torch.Tensor


class KVEdit:
    """KV-Edit's object removal (a mask is required).

    Args:
        components: a FLUX-family model (``model=flux_dev`` or a local FLUX folder).
        num_inference_steps: Euler steps of the schedule (28, the demo's).
        skip_step: steps skipped at the noisy end: inversion stops, and denoising starts, that far below pure noise
            (4).
        inversion_guidance / denoise_guidance: FLUX.1-dev's distilled guidance while inverting (1.5) and denoising
            (5.5).
        target_prompt: the prompt the masked region is regenerated under (``""``, the demo's default; a description
            of the background also works).
        attn_scale: added to the logits of background keys while denoising (1.0): larger values tie the new content
            more to its surroundings.
        re_init: start the masked tokens from ``(1 − t)·z₀ + t·noise`` instead of the inversion (more change).
        attn_mask: mask-guided inversion: foreground and background tokens do not see each other while inverting.
        inversion_free: KV-Edit's inversion-free variant (``Flux_kv_edit_inf``): each step re-noises the image with one
            fixed noise and edits with that step's K/V alone, so no per-step cache is kept (memory: one step's K/V).
        resize: how the photo is fitted to the model's square.
        seed: seeds ``re_init``'s noise and the inversion-free variant's.
    """

    requires: ClassVar[frozenset[str]] = frozenset({"mask"})
    families: ClassVar[frozenset[str]] = frozenset({"flux"})

    def __init__(
        self,
        components: FluxComponents,
        num_inference_steps: int = 28,
        skip_step: int = 4,
        inversion_guidance: float = 1.5,
        denoise_guidance: float = 5.5,
        target_prompt: str = "",
        attn_scale: float = 1.0,
        re_init: bool = False,
        attn_mask: bool = False,
        inversion_free: bool = False,
        resize: Resize = "stretch",
        seed: int = 0,
    ):
        if not isinstance(components, FluxComponents):
            raise ModelLoadError(
                "method=kv_edit runs on a FLUX-family model: use model=flux_dev or a local FLUX folder"
            )
        if components.is_fill:
            raise ModelLoadError(
                "method=kv_edit needs FLUX's base transformer, not a Fill model (that is method=flux_fill)"
            )
        if not 0 <= skip_step < num_inference_steps:
            raise ConfigError(f"method.skip_step={skip_step} must be in [0, num_inference_steps={num_inference_steps})")
        self.components = components
        self.steps, self.skip_step = num_inference_steps, skip_step
        self.inversion_guidance, self.denoise_guidance = inversion_guidance, denoise_guidance
        self.target_prompt, self.attn_scale, self.re_init, self.attn_mask = (
            target_prompt,
            attn_scale,
            re_init,
            attn_mask,
        )
        self.inversion_free, self.resize, self.seed = inversion_free, resize, seed

    @property
    def resolution(self) -> int:
        return self.components.resolution

    @staticmethod
    def planned_calls(num_inference_steps: int, skip_step: int, **_) -> dict[str, int]:
        """What one removal with these settings runs: transformer calls over every token (``full``: the inversion, or
        the inversion-free variant's source calls) and over the masked tokens only (``foreground``: the decoupled
        denoising), VAE encodes and decodes."""
        steps = num_inference_steps - skip_step
        return {"full": steps, "foreground": steps, "vae_encode": 1, "vae_decode": 1}

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        if sample.mask is None:
            raise ImageError(f"KV-Edit needs a mask and sample {sample.sample_id} has none; pass mask=PATH")
        c = self.components
        before, start = c.calls.totals(), time.perf_counter()
        source = load_image(sample.image)
        image = fit_to_model(source, self.resolution, self.resize)
        hole = fit_mask(sample.mask, source.size, tuple(image.shape[-2:]), self.resize) > 0.5
        z0 = flux.encode_image(c, image)
        latent_hw = tuple(side // c.vae_scale_factor for side in image.shape[-2:])
        trace = self.edit(z0, latent_hw, hole.float(), sample.prompt)
        output = flux.decode(c, trace.edited, latent_hw).cpu()
        calls, seconds = c.calls.since(before, start)
        extras = {"target_prompt": self.target_prompt, "kv_cache_bytes": trace.cache.nbytes()}
        extras["foreground_tokens"] = len(trace.foreground)
        return RemovalResult(image=output, mask=trace.pixels, calls=calls, seconds=seconds, extras=extras)

    def edit(self, z0: torch.Tensor, latent_hw: tuple[int, int], hole: torch.Tensor, prompt: str) -> Trace:
        """The removal in latent space: ``z0`` ``(1, L, 4C)`` packed latents of a ``latent_hw`` latent, ``hole``
        ``(1, 1, H, W)`` in {0, 1} at the image's size, ``prompt`` the source prompt."""
        c = self.components
        elements, pixels = token_mask(hole, latent_hw, c.vae.config.latent_channels)
        foreground = torch.nonzero(elements.sum(dim=-1)[0] > 0.5)[:, 0].to(c.device)
        if self.attn_mask and len(foreground) == z0.shape[1]:
            raise ImageError("the mask covers the whole image: attn_mask needs background; set method.attn_mask=false")
        levels = flux.sigmas(c, self.steps, z0.shape[1])[self.skip_step :]
        source_text, target_text = flux.encode_prompt(c, prompt), flux.encode_prompt(c, self.target_prompt)
        ids = flux.image_ids(c, latent_hw)
        cache = KVCache(foreground, z0.shape[1], self.attn_scale, self.attn_mask, store_device="cpu")
        trace = Trace(z0, {}, cache, foreground, pixels)
        args = (trace, elements.to(c.device), levels, source_text, target_text, ids)
        run = self._inversion_free if self.inversion_free else self._with_inversion
        with controlled_attention(c.transformer, cache), torch.no_grad():
            run(*args)
        return trace

    def _with_inversion(self, trace: Trace, elements, levels, source_text, target_text, ids) -> None:
        """``Flux_kv_edit``: invert with the cache, then denoise the foreground tokens with decoupled attention."""
        c, cache, z0, foreground, inverted = (
            self.components,
            trace.cache,
            trace.edited,
            trace.foreground,
            trace.inverted,
        )
        z = z0
        with c.calls.stage("inversion"):
            for lower, upper in zip(levels[::-1][:-1], levels[::-1][1:]):  # from the image (t = 0) up
                inverted[upper] = z  # stored under the level above, as KV-Edit's code keys it
                cache.at("record", upper)
                z = z + (upper - lower) * flux.velocity(c, z, lower, source_text, ids, self.inversion_guidance)

        m = elements[:, foreground]
        if self.re_init:
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(self.seed)).to(z0.device)
            x = ((1 - levels[0]) * z0 + levels[0] * noise)[:, foreground]
        else:
            x = inverted[levels[0]][:, foreground]
        with c.calls.stage("edit"):
            for upper, lower in zip(levels[:-1], levels[1:]):
                x = inverted[upper][:, foreground] * (1 - m) + x * m  # the mask's outside, from the inversion
                cache.at("decouple", upper)
                x = x + (lower - upper) * flux.velocity(
                    c, x, upper, target_text, ids[foreground], self.denoise_guidance
                )
        cache.at("off")
        trace.edited = z0.clone()
        trace.edited[:, foreground] = z0[:, foreground] * (1 - m) + x * m

    def _inversion_free(self, trace: Trace, elements, levels, source_text, target_text, ids) -> None:
        """``Flux_kv_edit_inf``: per step, re-noise the image with one fixed noise, record that step's K/V under the
        source prompt, and move the foreground by the difference of the two flows (FlowEdit-style)."""
        c, cache, z0, foreground = self.components, trace.cache, trace.edited, trace.foreground
        m = elements[:, foreground]
        noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(self.seed)).to(z0.device)
        z_edit = z0[:, foreground]
        with c.calls.stage("edit"):
            for upper, lower in zip(levels[:-1], levels[1:]):
                z_source = (1 - upper) * z0 + upper * noise
                z_target = z_source[:, foreground] - z0[:, foreground] + z_edit
                cache.cache.clear()
                cache.at("record", upper)
                v_source = flux.velocity(c, z_source, upper, source_text, ids, self.inversion_guidance)
                cache.at("decouple", upper)
                v_target = flux.velocity(c, z_target, upper, target_text, ids[foreground], self.denoise_guidance)
                z_edit = z_edit + (lower - upper) * (v_target - v_source[:, foreground]) * m
        cache.at("off")
        trace.edited = z0.clone()
        trace.edited[:, foreground] = z_edit


def token_mask(hole: torch.Tensor, latent_hw: tuple[int, int], channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """KV-Edit's mask: ``hole`` ``(1, 1, H, W)`` in {0, 1} resized bilinearly to the latent grid, any overlap → 1.

    Returns the packed per-element mask ``(1, L, 4·channels)`` (a token is foreground when any of its four latent
    pixels is) and the latent mask at the image's size ``(1, 1, H, W)`` (the pixels the edit may change).
    """
    latent = (F.interpolate(hole, size=latent_hw, mode="bilinear", align_corners=False) > 0).float()
    pixels = F.interpolate(latent, size=hole.shape[-2:], mode="nearest")
    return flux.pack(latent.expand(-1, channels, -1, -1).contiguous()), pixels
