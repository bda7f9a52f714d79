"""Prompt-to-Prompt removal on our null-text inversion and attention kernel (paper App. A.2).

Two branches per step from the inverted z_T with the per-step null embeddings: the *source* branch reconstructs
the image under its prompt and records its conditional attention; the *target* branch denoises with edited
attention, as P2P's null-text notebook (``AttentionControlEdit``) does:

* ``p2p_reweight``: the same prompt; the target words' cross-attention is the source's multiplied by ``factor``
  (0 removes, 1 changes nothing) — P2P's ``AttentionReweight`` with an equaliser.
* ``p2p_refine``: the target words are deleted from the prompt; each target token takes the source's attention of
  the token P2P's global alignment maps it to (:func:`~magicremover.baselines.alignment.refinement_mapper`) — ``AttentionRefine``.

Cross-attention is edited in the conditional half for the first ``int(cross_replace_steps · (steps + 1))`` steps.
Self-attention (``self_attention=maps``, P2P's own): for the first ``int(self_replace_steps · steps)`` steps the
target's conditional self-attention probabilities are replaced by the source's, on query grids of at most
``self_max_tokens`` cells (32², as the notebook's ``replace_self_attention``). ``self_attention=kv`` instead injects
the source's K/V into both halves at every resolution (our kernel's cheaper variant; not P2P). No LocalBlend.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Literal

import torch

from magicremover.attention import (
    AttentionController,
    AttnContext,
    ComposedController,
    SelfAttentionKV,
    controlled_attention,
)
from magicremover.baselines.alignment import refinement_mapper
from magicremover.diffusion import cfg_eps, ddim_step, decode_latents, encode_text
from magicremover.errors import ConfigError, PromptError
from magicremover.images import Resize
from magicremover.inversion import InversionConfig
from magicremover.method.loop import Step, denoise_two_branches
from magicremover.models import SDComponents
from magicremover.remover_base import InvertingRemover
from magicremover.target_tokens import find_target
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
        return self.mode != "off" and ctx.is_cross

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


class SelfAttentionMapEdit(AttentionController):
    """P2P's self-attention replacement: the target's conditional self-attention probabilities become the source's.

    Args:
        max_tokens: only query grids of at most this many cells take part (P2P: 32² — memory, and the coarse
            layers carry the layout).
    """

    def __init__(self, max_tokens: int = 32**2):
        self.max_tokens = max_tokens
        self.mode: Literal["off", "record", "edit"] = "off"
        self.source: dict[str, torch.Tensor] = {}

    def wants_probs(self, ctx: AttnContext) -> bool:
        return self.mode != "off" and not ctx.is_cross and ctx.height * ctx.width <= self.max_tokens

    def on_probs(self, ctx: AttnContext, probs: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            self.source[ctx.name] = probs[1:].detach()  # conditional half of [uncond, cond]
            return probs
        return torch.cat([probs[:1], self.source[ctx.name].to(probs.dtype)])

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
        self_replace_steps: fraction of steps, from the start, with the source's self-attention.
        self_attention: ``maps`` (P2P: probabilities, conditional half, grids ≤ ``self_max_tokens``) or ``kv``.
        self_max_tokens: the largest query grid whose self-attention maps are replaced (32² in P2P).
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
        self_attention: Literal["maps", "kv"] = "maps",
        self_max_tokens: int = 32**2,
        resize: Resize = "stretch",
        cache_dir: str | Path | None = None,
    ):
        if edit not in ("reweight", "refine"):
            raise PromptError(f"method.edit={edit} is not reweight or refine")
        if self_attention not in ("maps", "kv"):
            raise PromptError(f"method.self_attention={self_attention} is not maps or kv")
        if not math.isfinite(factor):
            raise ConfigError(f"method.factor={factor} must be a finite number")
        for name, value in (("cross_replace_steps", cross_replace_steps), ("self_replace_steps", self_replace_steps)):
            if not 0 <= value <= 1:
                raise ConfigError(f"method.{name}={value} must be a fraction of the steps in [0, 1]")
        super().__init__(components, inversion, resize, cache_dir)
        self.edit, self.factor = edit, factor
        self.cross_replace_steps, self.self_replace_steps = cross_replace_steps, self_replace_steps
        self.self_attention, self.self_max_tokens = self_attention, self_max_tokens

    def _edit_plan(self, sample: RemovalSample) -> tuple[str, torch.Tensor, torch.Tensor]:
        """The target prompt, and per target token the source token it maps to and its scale."""
        tokenizer, length = self.components.tokenizer, self.components.tokenizer.model_max_length
        target = find_target(tokenizer, sample.prompt, sample.target)
        source_index = torch.arange(length)
        scale = torch.ones(length)
        if self.edit == "reweight":
            scale[list(target.flat)] = self.factor
            return sample.prompt, source_index, scale
        words = sample.prompt.split()
        lowered = [w.lower().strip(".,") for w in words]
        for word in sample.target.lower().split():
            if word in lowered:
                del words[lowered.index(word)], lowered[lowered.index(word)]
        target_prompt = " ".join(words)
        ids = [tokenizer(text, truncation=True, max_length=length).input_ids for text in (sample.prompt, target_prompt)]
        return target_prompt, refinement_mapper(*ids, length), scale

    def __call__(self, sample: RemovalSample) -> RemovalResult:
        c = self.components
        start, before = time.perf_counter(), c.calls.totals()
        target_prompt, source_index, scale = self._edit_plan(sample)
        _, image = self.fit(sample)
        inversion = self.invert(sample, image)
        n_steps, w = len(inversion.timesteps), self.inversion.guidance_scale
        cond_source, cond_target = inversion.cond_embedding, encode_text(c, [target_prompt])
        cross = CrossAttentionEdit(source_index.to(c.device), scale.to(c.device))
        maps = self.self_attention == "maps"
        own = SelfAttentionMapEdit(self.self_max_tokens) if maps else SelfAttentionKV()
        # P2P's step counts: cross-attention over int(f · (steps + 1)) alphas, self-attention int(f · steps) steps
        cross_steps, self_steps = int(self.cross_replace_steps * (n_steps + 1)), int(self.self_replace_steps * n_steps)

        def reconstruct(step: Step) -> torch.Tensor:  # the source prompt, its attention recorded
            own.mode = "record" if step.index < self_steps else "off"
            cross.mode = "record" if step.index < cross_steps else "off"
            with c.calls.stage("reconstruction"):
                eps = cfg_eps(c, step.z_rec, step.t, step.null, cond_source, w)
                return ddim_step(step.z_rec, eps, step.alpha_t, step.alpha_prev)

        def edit(step: Step) -> torch.Tensor:  # the target prompt with the source's attention edited in
            own.mode = ("edit" if maps else "inject") if step.index < self_steps else "off"
            cross.mode = "edit" if step.index < cross_steps else "off"
            with c.calls.stage("edit"):
                eps = cfg_eps(c, step.z_edit, step.t, step.null, cond_target, w)
                return ddim_step(step.z_edit, eps, step.alpha_t, step.alpha_prev)

        with controlled_attention(c.unet, ComposedController([own, cross])), torch.no_grad():
            z_source, z_target = denoise_two_branches(c, inversion, reconstruct, edit)
        calls, seconds = c.calls.since(before, start)
        return RemovalResult(
            image=decode_latents(c, z_target).cpu(),
            reconstruction=decode_latents(c, z_source).cpu(),
            calls=calls,
            seconds=seconds,
            extras={"target_prompt": target_prompt, **self.provenance(inversion)},
        )
