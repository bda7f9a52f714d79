"""Operations every method shares: encoding text and images, noise prediction with CFG, DDIM steps.

Latents are kept in float32 between UNet calls; each call casts to the model dtype (fp16 on GPUs), so the DDIM
arithmetic and inversion error stay in full precision.
"""

from __future__ import annotations

from typing import Literal

import torch

from magicremover.models import SDComponents
from magicremover.sdxl import encode_text_xl, unet_inputs_xl


@torch.no_grad()
def encode_text(c: SDComponents, prompts: list[str]) -> torch.Tensor:
    """Prompts → text-encoder hidden states ``(B, L, D)`` (L = 77 for SD), padded to the full context; for SDXL
    ``(B, L + 1, D)``, the pooled embedding in the last row (:func:`~magicremover.sdxl.encode_text_xl`).
    The unconditional input of classifier-free guidance is :func:`unconditional_embedding`."""
    if c.is_xl:
        return encode_text_xl(c, prompts)
    ids = c.tokenizer(
        prompts, padding="max_length", max_length=c.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    return c.text_encoder(ids.to(c.device))[0].float()


def unconditional_embedding(c: SDComponents) -> torch.Tensor:
    """``(1, L, D)`` (SDXL ``(1, L + 1, D)``): the CFG pipelines' default negative input, the encoded ``""``, or
    zeros for a model saved with ``force_zeros_for_empty_prompt`` (SDXL base), as its pipeline does."""
    empty = encode_text(c, [""])
    return torch.zeros_like(empty) if c.zero_empty_prompt else empty


@torch.no_grad()
def encode_image(
    c: SDComponents, image: torch.Tensor, mode: Literal["mean", "sample"] = "mean", seed: int = 0
) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in [0, 1] → scaled latents ``(B, C, H/f, W/f)``.

    ``mean`` takes the posterior mean (deterministic, the null-text reference); ``sample`` draws from the
    posterior with a generator seeded by ``seed`` (the authors' code, unseeded there).
    """
    posterior = c.vae.encode((image * 2 - 1).to(c.device, c.vae.dtype)).latent_dist
    if mode == "mean":
        latent = posterior.mean
    elif mode == "sample":
        latent = posterior.sample(generator=torch.Generator(c.device).manual_seed(seed))
    else:
        raise ValueError(f"encode mode {mode!r} is not mean or sample")
    return latent.float() * c.vae.config.scaling_factor


@torch.no_grad()
def decode_latents(c: SDComponents, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents ``(B, C, h, w)`` → images ``(B, 3, h*f, w*f)`` in [0, 1]."""
    images = c.vae.decode((latents / c.vae.config.scaling_factor).to(c.vae.dtype)).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


def unet_eps(c: SDComponents, latents: torch.Tensor, t: int, embeddings: torch.Tensor) -> torch.Tensor:
    """One UNet call: noise prediction ``(B, C, h, w)`` float32 for latents ``(B, C, h, w)`` and embeddings from
    :func:`encode_text` (``(B, L, D)``; SDXL's ``(B, L + 1, D)`` become its tokens and added conditioning)."""
    embeddings = embeddings.to(c.dtype)
    text = unet_inputs_xl(c, embeddings, latents.shape[-2:]) if c.is_xl else {"encoder_hidden_states": embeddings}
    return c.unet(latents.to(c.dtype), t, **text).sample.float()


def text_rows(c: SDComponents) -> int:
    """How many rows of an embedding are tokens (the rest, SDXL's pooled row, is not read by attention)."""
    return c.tokenizer.model_max_length


def cfg_eps(
    c: SDComponents,
    latents: torch.Tensor,
    t: int,
    uncond: torch.Tensor,
    cond: torch.Tensor,
    scale: float,
    fold: bool = False,
) -> torch.Tensor:
    """Classifier-free guidance in one batch-2 UNet call: ε_u + w (ε_c − ε_u).

    The paper writes (1+s) ε_c − s ε_u (Eq. 5), i.e. w = 1 + s. Latents ``(1, C, h, w)``, embeddings
    ``(1, L, D)``; the batch is ordered [unconditional, conditional]. With ``fold`` and equal embeddings
    (negative-prompt inversion: the null embedding *is* the prompt's) the two halves are one computation and
    ε_u + w (ε_c − ε_u) = ε_c, so one batch-1 call gives it; callers whose attention controllers index the batch
    must handle both sizes.
    """
    if fold and (uncond is cond or torch.equal(uncond, cond)):
        return unet_eps(c, latents, t, cond)
    eps_u, eps_c = unet_eps(c, latents.expand(2, -1, -1, -1), t, torch.cat([uncond, cond])).chunk(2)
    return eps_u + scale * (eps_c - eps_u)


def alpha_bar(c: SDComponents, t: int) -> float:
    """ᾱ_t; for t < 0 the scheduler's final value (ᾱ_0 with ``set_alpha_to_one=False``)."""
    scheduler = c.scheduler
    return float(scheduler.alphas_cumprod[t]) if t >= 0 else float(scheduler.final_alpha_cumprod)


def step_size(c: SDComponents) -> int:
    """Training timesteps between two inference timesteps (20 for 50 DDIM steps)."""
    return c.scheduler.config.num_train_timesteps // c.scheduler.num_inference_steps


def ddim_step(
    sample: torch.Tensor,
    eps: torch.Tensor,
    alpha_from: float,
    alpha_to: float,
    eps_direction: torch.Tensor | None = None,
) -> torch.Tensor:
    """Deterministic DDIM transfer of ``sample`` from noise level ᾱ_from to ᾱ_to (Eq. 3 with σ_t = 0).

    x̂₀ = (z − √(1−ᾱ_from) ε) / √ᾱ_from, then z' = √ᾱ_to x̂₀ + √(1−ᾱ_to) ε_dir. With ``eps_direction`` given,
    x̂₀ comes from ``eps`` and the direction from ``eps_direction`` — the asymmetric step of Eq. 12. Used
    forwards (denoising, ᾱ_to > ᾱ_from) and backwards (inversion, ᾱ_to < ᾱ_from).
    """
    x0 = (sample - (1 - alpha_from) ** 0.5 * eps) / alpha_from**0.5
    direction = eps if eps_direction is None else eps_direction
    return alpha_to**0.5 * x0 + (1 - alpha_to) ** 0.5 * direction
