"""The SD3 family: Stable Diffusion 3's MM-DiT over 16-channel latents, loaded as a diffusers
``StableDiffusion3Pipeline``.

An SD3 folder (``model_index.json`` naming ``StableDiffusion3Pipeline``) holds ``transformer/`` (24 joint blocks for
SD3-medium; image and text attend together, image tokens first, no RoPE: positions are added by the patch
embedding), ``vae/`` (16 latent channels, a shift and a scale), three text encoders (CLIP ViT-L and OpenCLIP ViT-bigG,
their penultimate layers joined and their pooled outputs concatenated; T5-XXL, optional: without ``text_encoder_3/``
its tokens are zeros) and a flow-matching Euler scheduler (shift 3). Unlike FLUX.1-dev it has real classifier-free
guidance: an unconditional branch, whose embedding an inversion can optimise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import StableDiffusion3Pipeline

from magicremover.errors import ModelLoadError
from magicremover.pipeline_components import PipelineComponents

SD3_PIPELINES = {"StableDiffusion3Pipeline": StableDiffusion3Pipeline}
SD3_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2")
T5_TOKENS = 256  # StableDiffusion3Pipeline's default max_sequence_length


@dataclass
class SD3Text:
    """A prompt encoded for SD3: ``tokens`` ``(1, 77 + 256, D)`` (the CLIP tokens, padded to T5's width, then T5's)
    and ``pooled`` ``(1, P)`` (both CLIPs' pooled outputs)."""

    tokens: torch.Tensor
    pooled: torch.Tensor


class SD3Components(PipelineComponents):
    """An SD3-family model (``pipe``: a ``StableDiffusion3Pipeline``; its T5 encoder may be ``None``)."""

    family = "sd3"

    @property
    def side_multiple(self) -> int:
        return self.vae_scale_factor * self.transformer.config.patch_size


def load_sd3(folder, pipeline: str, identity: str, device: torch.device, dtype: torch.dtype, resolution: int | None):
    """An SD3 folder as :class:`SD3Components` (``text_encoder_3/`` may be absent: T5's tokens are then zeros)."""
    optional = {} if (folder / "text_encoder_3").is_dir() else {"text_encoder_3": None, "tokenizer_3": None}
    try:
        pipe = SD3_PIPELINES[pipeline].from_pretrained(folder, dtype=dtype, **optional)
    except (OSError, ValueError, TypeError) as err:
        raise ModelLoadError(f"could not load the SD3 model from {folder}: {str(err).splitlines()[0]}") from err
    return SD3Components(pipe.to(device), identity, resolution or pipe.default_sample_size * pipe.vae_scale_factor)


@torch.no_grad()
def encode_prompt(c: SD3Components, prompt: str) -> SD3Text:
    """``StableDiffusion3Pipeline.encode_prompt`` (one prompt for all three encoders, no CFG pair)."""
    tokens, _, pooled, _ = c.pipe.encode_prompt(
        prompt, None, None, do_classifier_free_guidance=False, max_sequence_length=T5_TOKENS
    )
    return SD3Text(tokens.float(), pooled.float())


@torch.no_grad()
def encode_image(c: SD3Components, image: torch.Tensor) -> torch.Tensor:
    """Images ``(1, 3, H, W)`` in [0, 1] → latents ``(1, 16, H/f, W/f)`` float32 (posterior mean, shifted and
    scaled as ``StableDiffusion3Img2ImgPipeline`` does)."""
    posterior = c.vae.encode((image * 2 - 1).to(c.device, c.vae.dtype)).latent_dist
    return (posterior.mean.float() - c.vae.config.shift_factor) * c.vae.config.scaling_factor


@torch.no_grad()
def decode(c: SD3Components, latents: torch.Tensor) -> torch.Tensor:
    """Latents ``(1, 16, h, w)`` → images ``(1, 3, h·f, w·f)`` in [0, 1]."""
    image = c.vae.decode((latents / c.vae.config.scaling_factor + c.vae.config.shift_factor).to(c.vae.dtype)).sample
    return (image.float() / 2 + 0.5).clamp(0, 1)


def sigmas(c: SD3Components, steps: int) -> list[float]:
    """The ``steps + 1`` noise levels from 1 to 0 the pipeline samples with (its scheduler's shift applied)."""
    c.pipe.scheduler.set_timesteps(steps, device="cpu")
    return c.pipe.scheduler.sigmas.tolist()


def velocity(c: SD3Components, latents: torch.Tensor, sigma: float, text: SD3Text) -> torch.Tensor:
    """One transformer call: the flow ``v`` ``(B, 16, h, w)`` float32 at noise level ``sigma`` for latents
    ``(B, 16, h, w)`` under embeddings ``text`` (batch 1, or B for a CFG batch)."""
    batch = latents.shape[0]
    return c.transformer(
        hidden_states=latents.to(c.dtype),
        encoder_hidden_states=text.tokens.to(c.dtype).expand(batch, -1, -1),
        pooled_projections=text.pooled.to(c.dtype).expand(batch, -1),
        timestep=torch.full((batch,), sigma * 1000, device=c.device, dtype=c.dtype),
        return_dict=False,
    )[0].float()
