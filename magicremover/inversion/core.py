"""Inverting an image into the diffusion model: DDIM inversion, null-text and negative-prompt inversion."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from magicremover.diffusion import (
    alpha_bar,
    cfg_eps,
    ddim_step,
    encode_image,
    encode_text,
    step_size,
    text_rows,
    unconditional_embedding,
    unet_eps,
)
from magicremover.errors import ConfigError
from magicremover.models import SDComponents
from magicremover.unet_calls import StageCount, UNetCalls

Method = Literal["null_text", "negative_prompt", "ddim"]


@dataclass(frozen=True)
class InversionConfig:
    """How to invert. Defaults are the null-text inversion reference (Mokady et al.), as the authors ran it.

    Attributes:
        method: ``null_text`` (Eq. 6: optimise the unconditional embedding per step), ``negative_prompt``
            (use the prompt embedding as the unconditional one: no optimisation, Miyake et al.), or ``ddim``
            (plain DDIM inversion; reconstruction at CFG > 1 drifts).
        num_inference_steps: DDIM steps N.
        guidance_scale: CFG scale w the reconstruction and editing will use.
        inner_steps: Adam steps per timestep at most (null-text).
        lr: Adam learning rate at step 0; it decays as lr·(1 − i/(2N)) (the reference's 1 − i/100 at N = 50,
            generalised so it stays positive for N > 100).
        early_stop: stop a timestep's optimisation once the loss is below ``early_stop + i·early_stop_growth``.
        early_stop_growth: see ``early_stop``.
        encode: VAE posterior ``mean`` or ``sample``.
        seed: seed of the VAE posterior sample.
    """

    method: Method = "null_text"
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    inner_steps: int = 10
    lr: float = 1e-2
    early_stop: float = 1e-5
    early_stop_growth: float = 2e-5
    encode: Literal["mean", "sample"] = "mean"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in ("null_text", "negative_prompt", "ddim"):
            raise ConfigError(f"inversion.method={self.method} is not one of null_text, negative_prompt, ddim")
        if self.num_inference_steps < 1 or self.inner_steps < 0:
            raise ConfigError("num_inference_steps must be ≥ 1 and inversion.inner_steps ≥ 0")
        names = {
            "guidance_scale": "guidance_scale",
            "lr": "inversion.lr",
            "early_stop": "inversion.early_stop",
            "early_stop_growth": "inversion.early_stop_growth",
        }
        for attribute, name in names.items():
            value = getattr(self, attribute)
            if not math.isfinite(value) or (attribute != "guidance_scale" and value < 0):
                raise ConfigError(
                    f"{name}={value} must be a finite number" + ("" if attribute == "guidance_scale" else " ≥ 0")
                )
        if self.encode not in ("mean", "sample"):
            raise ConfigError(f"inversion.encode={self.encode} is not mean or sample")


@dataclass
class Inversion:
    """An image inverted into the model.

    Attributes:
        timesteps: ``(N,)`` denoising timesteps, descending (981, 961, …, 1 for N = 50).
        trajectory: ``(N+1, C, h, w)`` DDIM-inversion latents; ``trajectory[0]`` is the clean VAE latent z₀ and
            ``trajectory[k]`` the latent at ``timesteps[N-k]``, so ``trajectory[-1]`` is z_T.
        null_embeddings: ``(N, L, D)``; ``null_embeddings[i]`` is the unconditional embedding for denoising step i.
        cond_embedding: ``(1, L, D)`` the prompt's embedding.
        calls: UNet cost per stage of computing this inversion (empty for a cache hit).
        from_cache: whether it was read from the inversion cache.
    """

    timesteps: torch.Tensor
    trajectory: torch.Tensor
    null_embeddings: torch.Tensor
    cond_embedding: torch.Tensor
    calls: dict[str, StageCount] = field(default_factory=dict)
    from_cache: bool = False

    @property
    def z_T(self) -> torch.Tensor:
        return self.trajectory[-1:]

    def latent_at_step(self, i: int) -> torch.Tensor:
        """The inversion latent that denoising step i starts from, ``(1, C, h, w)``."""
        return self.trajectory[len(self.timesteps) - i : len(self.timesteps) - i + 1]


def set_timesteps(c: SDComponents, num_inference_steps: int) -> torch.Tensor:
    """Configure the scheduler for N steps and return its timesteps ``(N,)``, descending."""
    c.scheduler.set_timesteps(num_inference_steps, device="cpu")
    return c.scheduler.timesteps.clone()


@torch.no_grad()
def ddim_invert(
    c: SDComponents,
    z0: torch.Tensor,
    cond: torch.Tensor,
    timesteps: torch.Tensor,
    after_call: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """DDIM inversion with the prompt only (w = 1): z₀ → z_T. Returns the trajectory ``(N+1, C, h, w)``.

    ``after_call(t)`` runs after the UNet call at timestep t (on the latent one step below it), e.g. to keep what an
    attention controller recorded during that call."""
    latents, z = [z0], z0
    step = step_size(c)
    for t in tqdm(timesteps.flip(0).tolist(), desc="DDIM inversion", leave=False, disable=None):
        eps = unet_eps(c, z, t, cond)
        if after_call is not None:
            after_call(t)
        z = ddim_step(z, eps, alpha_bar(c, t - step), alpha_bar(c, t))
        latents.append(z)
    return torch.cat(latents)


def null_text_optimize(
    c: SDComponents,
    trajectory: torch.Tensor,
    timesteps: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    config: InversionConfig,
) -> torch.Tensor:
    """Eq. 6: per timestep, fit the unconditional embedding ∅_t so the CFG step lands on the inversion latent.

    Warm-started from the previous step's result; UNet weights stay frozen, so only the embedding gets a gradient.
    Only the token rows are optimised: on SDXL the unconditional pooled row (zeros for SDXL base) and the size ids
    stay the pipeline's, since MagicRemover's attention reads the tokens and the pooled vector shifts every block
    of the UNet at once. Returns the per-step embeddings ``(N, L, D)`` (SDXL: ``(N, L + 1, D)``).
    """
    n_steps, step = len(timesteps), step_size(c)
    z, embeddings = trajectory[-1:], []
    pooled = uncond[:, text_rows(c) :]  # empty for SD 1.x/2.x
    bar = tqdm(timesteps.tolist(), desc="null-text", leave=False, disable=None)  # the longest stage: show it
    for i, t in enumerate(bar):
        alpha_t, alpha_prev = alpha_bar(c, t), alpha_bar(c, t - step)
        target = trajectory[n_steps - i - 1 : n_steps - i]
        with torch.no_grad():
            eps_c = unet_eps(c, z, t, cond)
        tokens = uncond[:, : text_rows(c)].detach().clone().requires_grad_(True)  # Adam updates in place
        optimizer = torch.optim.Adam([tokens], lr=config.lr * (1 - i / (2 * n_steps)))
        threshold = config.early_stop + i * config.early_stop_growth
        inner = 0
        for inner in range(1, config.inner_steps + 1):
            with torch.enable_grad():
                eps_u = unet_eps(c, z, t, torch.cat([tokens, pooled], dim=1))
                eps = eps_u + config.guidance_scale * (eps_c - eps_u)
                loss = F.mse_loss(ddim_step(z, eps, alpha_t, alpha_prev), target)  # Eq. 6
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            if loss.item() < threshold:
                break
        bar.set_postfix(inner=inner, refresh=False)  # Adam iterations this step took (early stop)
        uncond = torch.cat([tokens.detach(), pooled], dim=1)
        embeddings.append(uncond)
        with torch.no_grad():
            z = ddim_step(z, cfg_eps(c, z, t, uncond, cond, config.guidance_scale), alpha_t, alpha_prev)
    return torch.cat(embeddings)


def invert(
    c: SDComponents,
    image: torch.Tensor,
    prompt: str,
    config: InversionConfig,
    after_call: Callable[[int], None] | None = None,
) -> Inversion:
    """Invert ``image`` ``(1, 3, H, W)`` in [0, 1] under ``prompt``; ``after_call`` as in :func:`ddim_invert`.

    UNet calls are counted in stages ``inversion`` (DDIM) and ``null_text`` (optimisation and its advancing steps).
    """
    before = c.calls.totals()
    timesteps = set_timesteps(c, config.num_inference_steps)
    cond, uncond = encode_text(c, [prompt]), unconditional_embedding(c)
    z0 = encode_image(c, image, config.encode, config.seed)
    with c.calls.stage("inversion"):
        trajectory = ddim_invert(c, z0, cond, timesteps, after_call)
    if config.method == "null_text":
        with c.calls.stage("null_text"):
            null = null_text_optimize(c, trajectory, timesteps, cond, uncond, config)
    elif config.method == "negative_prompt":
        null = cond.expand(len(timesteps), -1, -1).clone()
    else:
        null = uncond.expand(len(timesteps), -1, -1).clone()
    return Inversion(timesteps, trajectory, null, cond, calls=UNetCalls.delta(c.calls.totals(), before))


@torch.no_grad()
def reconstruct(c: SDComponents, inversion: Inversion, guidance_scale: float) -> torch.Tensor:
    """Denoise z_T with CFG and the inversion's per-step unconditional embeddings → z₀ estimate ``(1, C, h, w)``."""
    set_timesteps(c, len(inversion.timesteps))
    z, step = inversion.z_T, step_size(c)
    with c.calls.stage("reconstruction"):
        for i, t in enumerate(inversion.timesteps.tolist()):
            eps = cfg_eps(c, z, t, inversion.null_embeddings[i : i + 1], inversion.cond_embedding, guidance_scale)
            z = ddim_step(z, eps, alpha_bar(c, t), alpha_bar(c, t - step))
    return z
