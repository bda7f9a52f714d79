"""The attention processor of FLUX's transformer blocks, handing joint K/V and probabilities to a controller.

A diffusion transformer has no cross-attention layer: text and image tokens attend together in one call. FLUX's
double-stream blocks project text and image separately and concatenate them as ``[text, image]``; its single-stream
blocks receive that concatenation already (``encoder_hidden_states`` is ``None`` there), so the text length comes from
the transformer's own call, recorded by :func:`~magicremover.attention.install.controlled_attention`.

The maths is diffusers' ``FluxAttnProcessor``: Q/K/V projections, RMS norms, RoPE on the joint sequence, SDPA. The
controller sees keys and values **after** RoPE, so a cached key keeps its own position whatever tokens the current
call holds (KV-Edit feeds only the masked image tokens while attending to every cached one). Controllers that ask
for probabilities get them explicitly (softmax of Q Kᵀ · scale, the logits first through ``on_scores``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.embeddings import apply_rotary_emb


@dataclass(frozen=True)
class JointContext:
    """Facts about one joint-attention call.

    Attributes:
        name: processor key without ``.processor``, e.g. ``"transformer_blocks.0.attn"`` or
            ``"single_transformer_blocks.3.attn"``.
        stream: ``"double"`` (separate text and image projections) or ``"single"`` (one projection of both).
        text_len: text tokens at the front of the joint sequence (512 T5 tokens for FLUX.1).
        image_len: image tokens after them in this call (fewer than the grid when a caller feeds a subset).
        height, width: the packed image grid of the transformer's call (latent side / 2).
    """

    name: str
    stream: Literal["double", "single"]
    text_len: int
    image_len: int
    height: int
    width: int


class JointController:
    """Base controller for joint attention: hooks that default to doing nothing.

    Layouts: keys/values ``(B, heads, text_len + L_img, head_dim)``, text first, RoPE applied; probabilities
    ``(B, heads, L_q, L_k)``; an attention mask is anything SDPA accepts, broadcast to ``(B, heads, L_q, L_k)``.
    """

    def wants_probs(self, ctx: JointContext) -> bool:
        """Whether this call must compute explicit probabilities (and call :meth:`on_probs`)."""
        return False

    def on_kv(self, ctx: JointContext, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See, store or replace the joint keys and values; the returned ones are attended to (they may be longer
        than the queries)."""
        return key, value

    def attention_mask(self, ctx: JointContext) -> torch.Tensor | None:
        """A boolean mask (True = may attend) or an additive bias on the logits for this call, or ``None``."""
        return None

    def on_scores(self, ctx: JointContext, scores: torch.Tensor) -> torch.Tensor:
        """Edit the logits ``(B, heads, L_q, L_k)`` of a call this controller asked probabilities for."""
        return scores

    def on_probs(self, ctx: JointContext, probs: torch.Tensor) -> torch.Tensor:
        """See, store or edit the probabilities of a call this controller asked for."""
        return probs


class ControlledFluxAttnProcessor:
    """One per FLUX attention layer; all share a controller and a ``state`` dict (``text_len``, ``grid``) that the
    transformer's pre-hook fills on every call.

    Args:
        name: the processor key without ``.processor``.
        controller: receives the hooks.
        state: shared mutable dict.
    """

    def __init__(self, name: str, controller: JointController, state: dict):
        self.name = name
        self.stream = "single" if name.startswith("single_") else "double"
        self.controller = controller
        self.state = state

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attn.fused_projections:
            raise NotImplementedError("fused QKV projections: call transformer.unfuse_qkv_projections() first")
        query, key, value = (_heads(attn, proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if encoder_hidden_states is not None:  # double stream: the text's own projections go in front
            text = [_heads(attn, p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]
            text[0], text[1] = attn.norm_added_q(text[0]), attn.norm_added_k(text[1])
            query, key, value = (torch.cat([t, x], dim=1) for t, x in zip(text, (query, key, value)))
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)
        query, key, value = (x.transpose(1, 2) for x in (query, key, value))  # (B, heads, L, head_dim)

        text_len = self.state["text_len"]
        ctx = JointContext(self.name, self.stream, text_len, query.shape[2] - text_len, *self.state["grid"])
        key, value = self.controller.on_kv(ctx, key, value)
        mask = self.controller.attention_mask(ctx)
        if attention_mask is not None:
            raise NotImplementedError("a controlled FLUX layer takes its mask from the controller")
        if self.controller.wants_probs(ctx):
            scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            probs = self.controller.on_probs(ctx, self.controller.on_scores(ctx, scores).softmax(dim=-1))
            out = probs.to(value.dtype) @ value
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
        out = out.transpose(1, 2).flatten(2, 3).to(query.dtype)

        if encoder_hidden_states is None:
            return out
        text_out, image_out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        return attn.to_out[1](attn.to_out[0](image_out.contiguous())), attn.to_add_out(text_out.contiguous())


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    """``(B, L, heads · head_dim)`` → ``(B, L, heads, head_dim)``."""
    return x.unflatten(-1, (-1, attn.head_dim))
