"""Prompt-to-Prompt removal on our null-text inversion and attention kernel (paper App. A.2).

Two branches per step from the inverted z_T with the per-step null embeddings: the *source* branch reconstructs
the image under its prompt and records its self-attention K/V and conditional cross-attention; the *target*
branch denoises with an edited cross-attention:

* ``p2p_reweight``: the same prompt; the target words' cross-attention is the source's multiplied by ``factor``
  (0 removes, 1 changes nothing) — P2P's ``AttentionReweight`` with an equaliser.
* ``p2p_refine``: the target words are deleted from the prompt; each remaining token takes the source's
  attention of the token it came from — P2P's ``AttentionRefine`` with a deletion-only alignment.

Cross-attention is edited on the conditional half for the first ``cross_replace_steps`` of the steps (after that
the target branch attends on its own), and the target's self-attention uses the source's K/V for the first
``self_replace_steps`` (P2P swaps self-attention maps at ≤ 16² resolution; K/V injection is our kernel's
equivalent that never materialises those maps). No LocalBlend.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

import torch

from magicremover.accounting import UNetCalls
from magicremover.attention import AttentionController, AttnContext, ComposedController, SelfAttentionKV, controlled_attention
from magicremover.diffusion import alpha_bar, cfg_eps, ddim_step, decode_latents, encode_text, step_size
from magicremover.errors import PromptError
from magicremover.images import Resize
from magicremover.inversion import InversionConfig, set_timesteps
from magicremover.models import SDComponents
from magicremover.reconstruction import InvertingRemover
from magicremover.tokens import find_target
from magicremover.types import RemovalResult, RemovalSample


class CrossAttentionEdit(AttentionController):
    """Records the source branch's conditional cross-attention, and rewrites the target branch's from it.

    Args:
        source_index: for each target token position, the source token whose attention it takes (−1: keep its own).
        scale: per target token multiplier applied after the mapping (the reweighting equaliser).
    """

    def __init__(self, source_index: torch.Tensor, scale: torch.Tensor):
        self.source_index, self.scale = source_index, scale
        self.mode: Literal["off", "record", "edit"] = "off"
        self.source: dict[str, torch.Tensor] = {}

    def wants_probs(self, ctx: AttnContext) -> bool:
        return self.mode != "off"

    def on_probs(self, ctx: AttnContext, probs: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            self.source[ctx.name] = probs[1:].detach()  # conditional half of [uncond, cond]
            return probs
        mapped = self.source[ctx.name][..., self.source_index.clamp(min=0)]
        own = probs[1:]
        edited = torch.where(self.source_index >= 0, mapped, own) * self.scale.to(probs.dtype)
        return torch.cat([probs[:1], edited])

    def reset(self) -> None:
        self.source.clear()
        self.mode = "off"


class PromptToPrompt(InvertingRemover):
    """P2P removal (``edit="reweight"`` or ``"refine"``); same call contract as MagicRemover.

    Args:
        components: the diffusion model.
        inversion: how to invert (null-text by default, as the paper's App. A.2).
        edit: ``reweight`` or ``refine``.
        factor: reweighting factor for the target words (0 in the paper).
        cross_replace_steps: fraction of steps, from the start, with edited cross-attention.
        self_replace_steps: fraction of steps, from the start, with the source's self-attention K/V.
        resize: how to fit the image to the model resolution.
        cache_dir: inversion cache folder (shared with every other method).
    """

    def __init__(
        self,
        components: SDComponents,
        inversion: InversionConfig,
        edit: Literal["reweight", "refine"] = "reweight",
        factor: float = 0.0,
        cross_replace_steps: float = 1.0,
        self_replace_steps: float = 0.4,
        resize: Resize = "stretch",
        cache_dir: str | Path | None = None,
    ):
        if edit not in ("reweight", "refine"):
            raise PromptError(f"method.edit={edit} is not reweight or refine")
        super().__init__(components, inversion, resize, cache_dir)
        self.edit, self.factor = edit, factor
        self.cross_replace_steps, self.self_replace_steps = cross_replace_steps, self_replace_steps

    def _edit_plan(self, sample: RemovalSample) -> tuple[str, torch.Tensor, torch.Tensor]:
        """The target prompt, and per target token the source token it maps to and its scale."""
        tokenizer, length = self.components.tokenizer, self.components.tokenizer.model_max_length
        target = find_target(tokenizer, sample.prompt, sample.target)
        source_index = torch.arange(length)
        scale = torch.ones(length)
        if self.edit == "reweight":
            scale[list(target.flat)] = self.factor
            return sample.prompt, source_index, scale
        removed = set(target.flat)
        kept = [i for i in range(length) if i not in removed]
        words = sample.prompt.split()
        lowered = [w.lower().strip(".,") for w in words]
        for word in sample.target.lower().split():
            if word in lowered:
                del words[lowered.index(word)], lowered[lowered.index(word)]
        source_index = torch.tensor(kept + [-1] * (length - len(kept)))
        return " ".join(words), source_index, scale

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        c = self.components
        start, before = time.perf_counter(), c.calls.totals()
        target_prompt, source_index, scale = self._edit_plan(sample)
        _, image = self.fit(sample)
        inversion = self.invert(sample, image)
        n_steps = len(inversion.timesteps)
        set_timesteps(c, n_steps)
        stride, w = step_size(c), self.inversion.guidance_scale
        cond_source, cond_target = inversion.cond_embedding, encode_text(c, [target_prompt])
        kv, cross = SelfAttentionKV(), CrossAttentionEdit(source_index.to(c.device), scale.to(c.device))
        z_source = z_target = inversion.z_T
        with controlled_attention(c.unet, ComposedController([kv, cross])), torch.no_grad():
            for i, t in enumerate(inversion.timesteps.tolist()):
                null = inversion.null_embeddings[i : i + 1]
                alpha_t, alpha_prev = alpha_bar(c, t), alpha_bar(c, t - stride)
                kv.mode, cross.mode = "record", "record"
                with c.calls.stage("reconstruction"):
                    z_source_next = ddim_step(z_source, cfg_eps(c, z_source, t, null, cond_source, w), alpha_t, alpha_prev)
                kv.mode = "inject" if i < self.self_replace_steps * n_steps else "off"
                cross.mode = "edit" if i < self.cross_replace_steps * n_steps else "off"
                with c.calls.stage("edit"):
                    z_target = ddim_step(z_target, cfg_eps(c, z_target, t, null, cond_target, w), alpha_t, alpha_prev)
                z_source = z_source_next
        calls = UNetCalls.delta(c.calls.totals(), before)
        return RemovalResult(
            image=decode_latents(c, z_target).cpu(),
            reconstruction=decode_latents(c, z_source).cpu(),
            calls=calls,
            seconds={name: count.seconds for name, count in calls.items()} | {"total": time.perf_counter() - start},
            extras={"target_prompt": target_prompt, "inversion_from_cache": inversion.from_cache},
        )
