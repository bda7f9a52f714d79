"""The attention processors of FLUX's and SD3's transformer blocks, handing joint K/V and probabilities to a
controller.

A diffusion transformer has no cross-attention layer: text and image tokens attend together in one call. FLUX's
double-stream blocks project text and image separately and concatenate them as ``[text, image]``; its single-stream
blocks receive that concatenation already (``encoder_hidden_states`` is ``None`` there), so the text length comes from
the transformer's own call, recorded by :func:`~magicremover.attention.install.controlled_attention`. SD3's joint
blocks concatenate ``[image, text]`` and use no RoPE (positions are added by the patch embedding).

The maths is diffusers' ``FluxAttnProcessor`` and ``JointAttnProcessor2_0``: projections, norms, (RoPE,) SDPA. The
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
        text_len: text tokens of the joint sequence (FLUX.1: 512 T5 tokens; SD3: 77 CLIP + 256 T5; 0 in SD3.5's
            image-only ``attn2``).
        image_len: image tokens of the queries in this call (fewer than the grid when a caller feeds a subset).
        height, width: the image token grid of the transformer's call (latent side / patch).
        image_first: the order of the joint sequence: ``[image, text]`` (SD3) or ``[text, image]`` (FLUX).
    """

    name: str
    stream: Literal["double", "single"]
    text_len: int
    image_len: int
    height: int
    width: int
    image_first: bool = False

    @property
    def text(self) -> slice:
        """Where the text tokens sit in the joint sequence."""
        return slice(self.image_len, self.image_len + self.text_len) if self.image_first else slice(0, self.text_len)

    @property
    def image(self) -> slice:
        """Where the image tokens sit in the joint sequence (of the queries; keys may hold more after them)."""
        return slice(0, self.image_len) if self.image_first else slice(self.text_len, None)


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
    """One per FLUX attention layer (diffusers' ``FluxAttnProcessor`` with the controller's hooks); all share a controller and a ``state`` dict (``text_len``, ``grid``) that the
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

        if attention_mask is not None:
            raise NotImplementedError("a controlled FLUX layer takes its mask from the controller")
        text_len = self.state["text_len"]
        ctx = JointContext(self.name, self.stream, text_len, query.shape[2] - text_len, *self.state["grid"])
        out = _attend(self.controller, ctx, query, key, value)

        if encoder_hidden_states is None:
            return out
        text_out, image_out = out.split_with_sizes([text_len, out.shape[1] - text_len], dim=1)
        return attn.to_out[1](attn.to_out[0](image_out.contiguous())), attn.to_add_out(text_out.contiguous())


class ControlledSD3AttnProcessor:
    """One per SD3 attention layer: diffusers' ``JointAttnProcessor2_0`` with the controller's hooks.

    SD3 concatenates ``[image, text]`` (``JointContext.image_first``); the last block's text output is not projected
    (``context_pre_only``); SD3.5's image-only ``attn2`` layers get no text (``text_len`` 0).

    Args:
        name: the processor key without ``.processor``.
        controller: receives the hooks.
        state: shared mutable dict (``grid``) that the transformer's pre-hook fills on every call.
    """

    def __init__(self, name: str, controller: JointController, state: dict):
        self.name = name
        self.controller = controller
        self.state = state

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if attention_mask is not None:
            raise NotImplementedError("a controlled SD3 layer takes its mask from the controller")
        image_len = hidden_states.shape[1]
        query, key, value = (_split(attn, proj(hidden_states)) for proj in (attn.to_q, attn.to_k, attn.to_v))
        if attn.norm_q is not None:
            query, key = attn.norm_q(query), attn.norm_k(key)
        text_len = 0
        if encoder_hidden_states is not None:
            text_len = encoder_hidden_states.shape[1]
            text = [_split(attn, p(encoder_hidden_states)) for p in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj)]
            if attn.norm_added_q is not None:
                text[0], text[1] = attn.norm_added_q(text[0]), attn.norm_added_k(text[1])
            query, key, value = (torch.cat([x, t], dim=2) for x, t in zip((query, key, value), text))

        ctx = JointContext(self.name, "double", text_len, image_len, *self.state["grid"], image_first=True)
        out = _attend(self.controller, ctx, query, key, value)
        image_out = attn.to_out[1](attn.to_out[0](out[:, :image_len]))
        if encoder_hidden_states is None:
            return image_out
        text_out = out[:, image_len:]
        return image_out, (text_out if attn.context_pre_only else attn.to_add_out(text_out))


def _attend(
    controller: JointController, ctx: JointContext, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
) -> torch.Tensor:
    """The controller's K/V and mask, then explicit probabilities or SDPA: ``(B, heads, L, head_dim)`` in,
    ``(B, L_q, heads · head_dim)`` out."""
    key, value = controller.on_kv(ctx, key, value)
    mask = controller.attention_mask(ctx)
    if controller.wants_probs(ctx):
        scores = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        probs = controller.on_probs(ctx, controller.on_scores(ctx, scores).softmax(dim=-1))
        out = probs.to(value.dtype) @ value
    else:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask)
    return out.transpose(1, 2).flatten(2, 3).to(query.dtype)


def _heads(attn, x: torch.Tensor) -> torch.Tensor:
    """``(B, L, heads · head_dim)`` → ``(B, L, heads, head_dim)``."""
    return x.unflatten(-1, (-1, attn.head_dim))


def _split(attn, x: torch.Tensor) -> torch.Tensor:
    """``(B, L, heads · head_dim)`` → ``(B, heads, L, head_dim)``."""
    return x.unflatten(-1, (attn.heads, -1)).transpose(1, 2)
