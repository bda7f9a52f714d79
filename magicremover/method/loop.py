"""The two-branch DDIM loop every inverting editor runs (MagicRemover, Prompt-to-Prompt).

Per step: a reconstruction branch from the inversion (its attention recorded for the edit), an edit branch, then the
step's hooks, which may replace either next latent — latent blending, Direct Inversion's trajectory correction — as
diffusers' ``callback_on_step_end`` and P2P's ``step_callback`` do. On a *shared* step (MagicRemover before its edit
start) the edit branch is the reconstruction branch and does not run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from magicremover.diffusion import alpha_bar, step_size
from magicremover.inversion import Inversion, set_timesteps
from magicremover.models import SDComponents


@dataclass
class Step:
    """One denoising step as the branches and hooks see it. Latents are ``(1, C, h, w)``.

    Attributes:
        index: the step's position, 0 at z_T.
        t: its timestep; ``alpha_t``/``alpha_prev``: ᾱ at t and at the next (lower) timestep.
        null: the step's unconditional embedding ``(1, L, D)`` (null-text inversion's ∅_t).
        on_trajectory: the inversion latent at the next timestep.
        shared: the edit branch is the reconstruction branch at this step.
        z_rec, z_edit: the latents the step starts from; ``z_rec_next``, ``z_edit_next``: where it ends (set by the
            branches, possibly replaced by the hooks).
    """

    index: int
    t: int
    alpha_t: float
    alpha_prev: float
    null: torch.Tensor
    on_trajectory: torch.Tensor
    shared: bool
    z_rec: torch.Tensor
    z_edit: torch.Tensor
    z_rec_next: torch.Tensor | None = None
    z_edit_next: torch.Tensor | None = None


Branch = Callable[[Step], torch.Tensor]
Hook = Callable[[Step], None]


def denoise_two_branches(
    c: SDComponents,
    inversion: Inversion,
    reconstruct: Branch,
    edit: Branch,
    hooks: Sequence[Hook] = (),
    shared: Callable[[int], bool] = lambda index: False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise both branches from the inversion's z_T over its timesteps; returns the final ``(z_rec, z_edit)``.

    ``reconstruct(step)`` and ``edit(step)`` return their branch's next latent; each hook then sees the step with both.
    """
    set_timesteps(c, len(inversion.timesteps))
    stride = step_size(c)
    z_rec = z_edit = inversion.z_T
    for index, t in enumerate(tqdm(inversion.timesteps.tolist(), desc="denoising", leave=False, disable=None)):
        step = Step(
            index,
            t,
            alpha_bar(c, t),
            alpha_bar(c, t - stride),
            inversion.null_embeddings[index : index + 1],
            inversion.latent_at_step(index + 1),
            shared(index),
            z_rec,
            z_edit,
        )
        step.z_rec_next = reconstruct(step)
        step.z_edit_next = step.z_rec_next if step.shared else edit(step)
        for hook in hooks:
            hook(step)
        z_rec, z_edit = step.z_rec_next, step.z_edit_next.detach()
    return z_rec, z_edit
