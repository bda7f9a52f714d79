"""The FLUX family: a rectified-flow transformer over packed latents, loaded as a diffusers ``FluxPipeline``.

A FLUX folder (``model_index.json`` naming ``FluxPipeline`` or ``FluxFillPipeline``) holds ``transformer/`` (an
MM-DiT: 19 double-stream and 38 single-stream blocks for FLUX.1-dev), ``vae/`` (16 latent channels, a shift and a
scale), ``text_encoder/`` + ``tokenizer/`` (CLIP ViT-L: only its pooled embedding is read), ``text_encoder_2/`` +
``tokenizer_2/`` (T5-XXL: 512 tokens of text features) and ``scheduler/`` (flow-matching Euler with a resolution-
dependent shift). Latents are packed 2×2 into tokens: a ``(1, C, h, w)`` latent becomes ``(1, h/2 · w/2, 4C)``.

FLUX.1-dev is guidance-distilled: the guidance scale is an input of the transformer, not a second, unconditional
call, so there is no unconditional branch to optimise (null-text inversion does not apply).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import FluxFillPipeline, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from magicremover.errors import ModelLoadError
from magicremover.pipeline_components import PipelineComponents

FLUX_PIPELINES = {"FluxPipeline": FluxPipeline, "FluxFillPipeline": FluxFillPipeline}
FLUX_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
TEXT_TOKENS = 512  # T5 tokens FLUX.1 was trained with (FluxPipeline's max_sequence_length; KV-Edit hard-codes it)


@dataclass
class FluxText:
    """A prompt encoded for FLUX: T5 ``tokens`` ``(1, 512, D)``, CLIP's ``pooled`` ``(1, P)``, ``ids`` ``(512, 3)``
    (zeros: text has no position in FLUX's RoPE)."""

    tokens: torch.Tensor
    pooled: torch.Tensor
    ids: torch.Tensor


class FluxComponents(PipelineComponents):
    """A FLUX-family model (``pipe``: a ``FluxPipeline``, or a ``FluxFillPipeline`` for a Fill folder)."""

    family = "flux"

    @property
    def side_multiple(self) -> int:
        return 2 * self.vae_scale_factor  # the VAE's factor times the 2×2 packing

    @property
    def is_fill(self) -> bool:
        """A FLUX.1 Fill model: its transformer also reads the masked image and the mask (384 input channels)."""
        return self.transformer.config.in_channels != 4 * self.vae.config.latent_channels


def load_flux(folder, pipeline: str, identity: str, device: torch.device, dtype: torch.dtype, resolution: int | None):
    """A FLUX folder as :class:`FluxComponents` (``pipeline``: the class its ``model_index.json`` names)."""
    try:
        pipe = FLUX_PIPELINES[pipeline].from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"could not load the FLUX model from {folder}: {str(err).splitlines()[0]}") from err
    return FluxComponents(pipe.to(device), identity, resolution or pipe.default_sample_size * pipe.vae_scale_factor)


@torch.no_grad()
def encode_prompt(c: FluxComponents, prompt: str) -> FluxText:
    """``FluxPipeline.encode_prompt`` with FLUX.1's 512 T5 tokens."""
    tokens, pooled, ids = c.pipe.encode_prompt(prompt, prompt_2=None, max_sequence_length=TEXT_TOKENS)
    return FluxText(tokens.to(c.dtype), pooled.to(c.dtype), ids)


@torch.no_grad()
def encode_image(c: FluxComponents, image: torch.Tensor) -> torch.Tensor:
    """Images ``(1, 3, H, W)`` in [0, 1] → packed latents ``(1, H/2f · W/2f, 4C)`` float32 (the posterior mean,
    shifted and scaled as ``FluxImg2ImgPipeline`` does)."""
    posterior = c.vae.encode((image * 2 - 1).to(c.device, c.vae.dtype)).latent_dist
    latent = (posterior.mean.float() - c.vae.config.shift_factor) * c.vae.config.scaling_factor
    return pack(latent)


@torch.no_grad()
def decode(c: FluxComponents, packed: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Packed latents ``(1, L, 4C)`` of a ``latent_hw`` latent → images ``(1, 3, H, W)`` in [0, 1]."""
    latent = unpack(packed, latent_hw) / c.vae.config.scaling_factor + c.vae.config.shift_factor
    image = c.vae.decode(latent.to(c.vae.dtype)).sample
    return (image.float() / 2 + 0.5).clamp(0, 1)


def pack(latent: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` → ``(B, h/2 · w/2, 4C)``, each token's features ordered (channel, row, column)."""
    batch, channels, height, width = latent.shape
    return FluxPipeline._pack_latents(latent, batch, channels, height, width)


def unpack(packed: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """The inverse of :func:`pack`."""
    batch, _, features = packed.shape
    height, width = latent_hw
    grid = packed.view(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(batch, features // 4, height, width)


def image_ids(c: FluxComponents, latent_hw: tuple[int, int]) -> torch.Tensor:
    """``(h/2 · w/2, 3)``: (0, row, column) of every packed token, FLUX's RoPE positions."""
    return FluxPipeline._prepare_latent_image_ids(1, latent_hw[0] // 2, latent_hw[1] // 2, c.device, c.dtype)


def sigmas(c: FluxComponents, steps: int, tokens: int) -> list[float]:
    """The ``steps + 1`` noise levels from 1 to 0 FluxPipeline samples with: ``linspace(1, 1/steps)`` shifted by
    the scheduler's resolution-dependent μ (``calculate_shift`` of the image's token count), then 0."""
    scheduler, config = c.pipe.scheduler, c.pipe.scheduler.config
    mu = calculate_shift(
        tokens, config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
    )
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps).tolist(), mu=mu, device="cpu")
    return scheduler.sigmas.tolist()


def velocity(
    c: FluxComponents,
    packed: torch.Tensor,
    sigma: float,
    text: FluxText,
    ids: torch.Tensor,
    guidance: float | None,
) -> torch.Tensor:
    """One transformer call: the flow ``v`` ``(1, L, 4C)`` float32 at noise level ``sigma`` for tokens ``packed``
    ``(1, L, 4C)`` at positions ``ids`` ``(L, 3)``; ``guidance`` is FLUX.1-dev's distilled guidance scale
    (``None`` for a model without the guidance embedding)."""
    batch = packed.shape[0]
    embed = c.transformer.config.guidance_embeds
    return c.transformer(
        hidden_states=packed.to(c.dtype),
        encoder_hidden_states=text.tokens.expand(batch, -1, -1),
        pooled_projections=text.pooled.expand(batch, -1),
        timestep=torch.full((batch,), sigma, device=c.device, dtype=c.dtype),
        img_ids=ids,
        txt_ids=text.ids,
        guidance=torch.full((batch,), guidance, device=c.device, dtype=c.dtype) if embed else None,
        return_dict=False,
    )[0].float()
