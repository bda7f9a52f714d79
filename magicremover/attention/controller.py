"""Attention controllers: the one interface through which the method, its ablations and P2P act on attention.

A controller never identifies layers by call order: every hook receives an :class:`AttnContext` built from
the processor's layer name and the query's spatial size. Per-step state (which branch runs, which step) is set
explicitly by the denoising loop, so extra UNet calls for gradients cannot misalign stored tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import torch

Place = Literal["down", "mid", "up"]


@dataclass(frozen=True)
class AttnContext:
    """Facts about one attention call.

    Attributes:
        name: processor key without ``.processor``, e.g.
            ``"up_blocks.1.attentions.0.transformer_blocks.0.attn2"``.
        place: ``"down"``, ``"mid"`` or ``"up"``.
        is_cross: True for text cross-attention (``attn2``), False for self-attention (``attn1``).
        height, width: spatial size of the query grid (the latent size divided by the block's stride).
    """

    name: str
    place: Place
    is_cross: bool
    height: int
    width: int


class AttentionController:
    """Base controller: hooks that default to doing nothing.

    Tensor layouts passed to the hooks (B = UNet batch, e.g. 2 for CFG with the unconditional half first):
    keys/values ``(B, heads, L_k, head_dim)``; probabilities ``(B, heads, L_q, L_k)``, rows summing to 1.
    """

    def wants_probs(self, ctx: AttnContext) -> bool:
        """Whether this attention call must compute explicit probabilities (and call :meth:`on_probs`).

        Asked for every layer. Self-attention probabilities are ``L × L`` (1 GB per 64² layer at 512 px), so a
        controller asks for them only on the layers it edits (P2P: query grids of at most 32²).
        """
        return False

    def on_kv(self, ctx: AttnContext, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See, store or replace a layer's keys and values before attention is computed."""
        return key, value

    def on_scores(self, ctx: AttnContext, scores: torch.Tensor) -> torch.Tensor:
        """Edit the logits Q Kᵀ · scale ``(B, heads, L_q, L_k)`` of a call this controller asked probabilities for,
        before the softmax (masking keys, sharpening or flattening rows); the returned tensor is used."""
        return scores

    def on_probs(self, ctx: AttnContext, probs: torch.Tensor) -> torch.Tensor:
        """See, store or edit the probabilities of a call this controller asked for; the returned tensor is used."""
        return probs

    def reset(self) -> None:
        """Forget everything stored (called between samples)."""


class EmptyController(AttentionController):
    """Does nothing: installing it must leave the UNet's output unchanged."""


class CrossAttentionStore(AttentionController):
    """Keeps the cross-attention probabilities of the most recent UNet call, per layer.

    Args:
        keep_graph: keep the autograd graph (for a loss on the maps) instead of detaching.
        batch_index: which entries of the UNet batch to keep, e.g. ``slice(1, 2)`` for the conditional half of a
            CFG batch; ``None`` keeps all.
        enabled: store only while True; the loop switches it per branch.
    """

    def __init__(self, keep_graph: bool = False, batch_index: slice | None = None, enabled: bool = True):
        self.keep_graph = keep_graph
        self.batch_index = batch_index
        self.enabled = enabled
        self.maps: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, int]] = {}

    def wants_probs(self, ctx: AttnContext) -> bool:
        return self.enabled and ctx.is_cross

    def on_probs(self, ctx: AttnContext, probs: torch.Tensor) -> torch.Tensor:
        kept = probs if self.batch_index is None else probs[self.batch_index]
        self.maps[ctx.name] = kept if self.keep_graph else kept.detach()
        self.shapes[ctx.name] = (ctx.height, ctx.width)
        return probs

    def reset(self) -> None:
        self.maps.clear()
        self.shapes.clear()


class SelfAttentionKV(AttentionController):
    """Records self-attention K/V in one branch and substitutes them in another (Eq. 10).

    ``mode = "record"``: store each self-attention layer's K/V (detached) under its name.
    ``mode = "inject"``: replace the layer's K/V by the stored ones, so Q comes from the edited latent and K/V
    from the reconstruction; attention still runs on SDPA. ``mode = "off"``: pass through.

    Args:
        layers: predicate on the layer name selecting which self-attention layers take part (default: all).
        broadcast: a recording of batch 1 serves every row of a larger injected batch (the inversion's conditional
            call for both CFG halves of the edit); otherwise recorded and injected batches must match.
    """

    def __init__(self, layers=None, broadcast: bool = False):
        self.layers = layers or (lambda name: True)
        self.broadcast = broadcast
        self.mode: Literal["off", "record", "inject"] = "off"
        self.kv: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def on_kv(self, ctx: AttnContext, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ctx.is_cross or self.mode == "off" or not self.layers(ctx.name):
            return key, value
        if self.mode == "record":
            self.kv[ctx.name] = (key.detach(), value.detach())
            return key, value
        if ctx.name not in self.kv:
            raise RuntimeError(f"no recorded K/V for {ctx.name}: run the recording branch first in this step")
        stored_key, stored_value = self.kv[ctx.name]
        if self.broadcast and stored_key.shape[0] == 1 < key.shape[0]:
            stored_key, stored_value = (x.expand(key.shape[0], *x.shape[1:]) for x in (stored_key, stored_value))
        if stored_key.shape[0] != key.shape[0]:
            raise RuntimeError(f"{ctx.name}: recorded batch {stored_key.shape[0]} != injected batch {key.shape[0]}")
        return stored_key.to(key.dtype), stored_value.to(value.dtype)

    def reset(self) -> None:
        self.kv.clear()
        self.mode = "off"


class ComposedController(AttentionController):
    """Runs several controllers in order; probabilities are computed if any of them wants them, and handed only to
    those that do."""

    def __init__(self, controllers: Iterable[AttentionController]):
        self.controllers = list(controllers)

    def wants_probs(self, ctx: AttnContext) -> bool:
        return any(c.wants_probs(ctx) for c in self.controllers)

    def on_kv(self, ctx, key, value):
        for c in self.controllers:
            key, value = c.on_kv(ctx, key, value)
        return key, value

    def on_scores(self, ctx, scores):
        for c in self.controllers:
            if c.wants_probs(ctx):
                scores = c.on_scores(ctx, scores)
        return scores

    def on_probs(self, ctx, probs):
        for c in self.controllers:
            if c.wants_probs(ctx):
                probs = c.on_probs(ctx, probs)
        return probs

    def reset(self) -> None:
        for c in self.controllers:
            c.reset()
