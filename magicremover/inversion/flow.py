"""Inverting an image into a rectified-flow model with real CFG (SD3): Euler inversion, then null-text optimisation.

A flow model moves z_σ = (1 − σ) x₀ + σ ε along v = ε − x₀; an Euler step from σ to σ' is z + (σ' − σ) v. Run
backwards with the velocity at the current (lower) level, the step inverts the sampler to first order, as DDIM
inversion does for ε-models (the same scheme as KV-Edit's inversion on FLUX). At CFG scale w > 1 the denoising drifts
from that trajectory, and null-text optimisation (Mokady et al., Eq. 6 of MagicRemover) fits, per step, the
unconditional input so the CFG Euler step lands on it. Here the pooled embedding is fitted with the tokens (SDXL's
port keeps it): SD3's blocks are modulated by it (AdaLN), and with the tokens alone the fit plateaus (tiny SD3, 10
steps, CFG 7.5: latent MSE 0.022 with tokens alone, 0.0006 with both, 0.062 without optimisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from magicremover.inversion.core import InversionConfig
from magicremover.sd3 import SD3Components, SD3Text, encode_prompt, sigmas, velocity
from magicremover.unet_calls import UNetCalls


@dataclass
class FlowInversion:
    """An image inverted into a flow model.

    Attributes:
        levels: ``N + 1`` noise levels σ, descending from 1 to 0 (the denoising schedule).
        trajectory: ``(N + 1, C, h, w)``: ``trajectory[k]`` is the latent at ``levels[N − k]`` (``[0]`` the clean
            latent, ``[-1]`` the top).
        null_tokens: ``(N, L, D)``: the unconditional tokens of denoising step i.
        null_pooled: ``(N, P)``: its pooled embedding.
        cond: the prompt's encoding.
        calls: transformer cost per stage.
    """

    levels: list[float]
    trajectory: torch.Tensor
    null_tokens: torch.Tensor
    null_pooled: torch.Tensor
    cond: SD3Text
    calls: dict

    def null(self, step: int) -> SD3Text:
        """Step ``step``'s unconditional input."""
        return SD3Text(self.null_tokens[step : step + 1], self.null_pooled[step : step + 1])

    def latent_at_step(self, step: int) -> torch.Tensor:
        """The trajectory latent at ``levels[step]`` ``(1, C, h, w)``."""
        return self.trajectory[len(self.levels) - 1 - step].unsqueeze(0)


def flow_step(
    z: torch.Tensor, v: torch.Tensor, level: float, level_to: float, eps_shift: torch.Tensor | None = None
) -> torch.Tensor:
    """Move ``z`` from noise level σ to σ' through x̂₀ = z − σ v and ε̂ = z + (1 − σ) v: z' = (1 − σ') x̂₀ + σ' ε̂
    (the Euler step z + (σ' − σ) v). With ``eps_shift`` the noise direction is ε̂ − shift: the flow form of
    MagicRemover's asymmetric step (Eq. 12), x̂₀ from the plain prediction, the direction guided."""
    x0, eps = z - level * v, z + (1 - level) * v
    direction = eps if eps_shift is None else eps - eps_shift
    return (1 - level_to) * x0 + level_to * direction


def cfg_velocity(
    c: SD3Components, z: torch.Tensor, level: float, uncond: SD3Text, cond: SD3Text, scale: float
) -> torch.Tensor:
    """v_u + w (v_c − v_u) from one batch-2 call ordered [unconditional, conditional]."""
    both = SD3Text(torch.cat([uncond.tokens, cond.tokens]), torch.cat([uncond.pooled, cond.pooled]))
    v_u, v_c = velocity(c, z.expand(2, -1, -1, -1), level, both).chunk(2)
    return v_u + scale * (v_c - v_u)


@torch.no_grad()
def euler_invert(c: SD3Components, z0: torch.Tensor, cond: SD3Text, levels: list[float]) -> torch.Tensor:
    """Euler inversion under the prompt alone (w = 1): ``(N + 1, C, h, w)`` from the clean latent up."""
    latents, z = [z0], z0
    ascending = levels[::-1]
    for low, high in zip(tqdm(ascending[:-1], desc="flow inversion", leave=False, disable=None), ascending[1:]):
        z = flow_step(z, velocity(c, z, low, cond), low, high)
        latents.append(z)
    return torch.cat(latents)


def null_text_optimize(
    c: SD3Components, trajectory: torch.Tensor, levels: list[float], cond: SD3Text, uncond: SD3Text, config
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per step, fit the unconditional tokens and pooled embedding so the CFG Euler step lands on the trajectory
    (Eq. 6, in flow form); warm-started from the previous step. Returns ``(N, L, D)`` and ``(N, P)``."""
    n_steps = len(levels) - 1
    z, found, null = trajectory[-1:], [], uncond
    for i in tqdm(range(n_steps), desc="null-text", leave=False, disable=None):
        level, level_to, target = levels[i], levels[i + 1], trajectory[n_steps - i - 1 : n_steps - i]
        with torch.no_grad():
            v_c = velocity(c, z, level, cond)
        fitted = SD3Text(
            null.tokens.detach().clone().requires_grad_(True), null.pooled.detach().clone().requires_grad_(True)
        )
        optimizer = torch.optim.Adam([fitted.tokens, fitted.pooled], lr=config.lr * (1 - i / (2 * n_steps)))
        for _ in range(config.inner_steps):
            with torch.enable_grad():
                v_u = velocity(c, z, level, fitted)
                v = v_u + config.guidance_scale * (v_c - v_u)
                loss = F.mse_loss(flow_step(z, v, level, level_to), target)
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            if loss.item() < config.early_stop + i * config.early_stop_growth:
                break
        null = SD3Text(fitted.tokens.detach(), fitted.pooled.detach())
        found.append(null)
        with torch.no_grad():
            z = flow_step(z, cfg_velocity(c, z, level, null, cond, config.guidance_scale), level, level_to)
    return torch.cat([n.tokens for n in found]), torch.cat([n.pooled for n in found])


def invert(c: SD3Components, z0: torch.Tensor, prompt: str, config: InversionConfig) -> FlowInversion:
    """Invert the clean latent ``z0`` ``(1, C, h, w)`` under ``prompt`` with ``config``'s method (``null_text``,
    ``negative_prompt``: the prompt as the unconditional input, or ``ddim``: the plain ``""``)."""
    before = c.calls.totals()
    levels = sigmas(c, config.num_inference_steps)
    cond, uncond = encode_prompt(c, prompt), encode_prompt(c, "")
    with c.calls.stage("inversion"):
        trajectory = euler_invert(c, z0, cond, levels)
    n_steps = len(levels) - 1
    if config.method == "null_text":
        with c.calls.stage("null_text"):
            tokens, pooled = null_text_optimize(c, trajectory, levels, cond, uncond, config)
    else:
        base = cond if config.method == "negative_prompt" else uncond
        tokens, pooled = base.tokens.expand(n_steps, -1, -1).clone(), base.pooled.expand(n_steps, -1).clone()
    return FlowInversion(levels, trajectory, tokens, pooled, cond, UNetCalls.delta(c.calls.totals(), before))


@torch.no_grad()
def reconstruct(c: SD3Components, inversion: FlowInversion, guidance_scale: float) -> torch.Tensor:
    """Denoise the top latent with CFG and the per-step unconditional tokens → the clean latent's estimate."""
    z, levels = inversion.latent_at_step(0), inversion.levels
    for i in range(len(levels) - 1):
        v = cfg_velocity(c, z, levels[i], inversion.null(i), inversion.cond, guidance_scale)
        z = flow_step(z, v, levels[i], levels[i + 1])
    return z
