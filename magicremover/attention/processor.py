"""The attention processor that hands a layer's K/V and cross-attention probabilities to a controller.

The maths is diffusers' ``AttnProcessor2_0`` (SDPA). Two additions: K/V pass through
``controller.on_kv``, and layers whose controller asks for probabilities compute them explicitly
(softmax of Q Kᵀ · scale, the logits first through ``controller.on_scores``) so the maps exist as tensors that keep
their autograd graph. Every other call stays on fused SDPA.

Under gradient checkpointing a block's forward runs again during backward; controllers must then answer
``wants_probs`` and ``on_kv`` as they did in the forward pass (keep their mode until the gradient is taken).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from magicremover.attention.controller import AttentionController, AttnContext


def grid_size(num_tokens: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """The (height, width) of a query grid with ``num_tokens`` cells inside a UNet fed ``latent_hw`` latents.

    UNet down-sampling halves each side rounding up (stride-2 conv with padding 1).
    """
    height, width = latent_hw
    for _ in range(8):
        if height * width == num_tokens:
            return height, width
        height, width = math.ceil(height / 2), math.ceil(width / 2)
    raise ValueError(f"{num_tokens} query tokens do not match any down-sampling of a {latent_hw} latent")


class ControlledAttnProcessor:
    """One per attention layer; all share a controller and a ``state`` dict holding the current latent size.

    Args:
        name: the processor key without ``.processor``.
        controller: receives the hooks.
        state: shared mutable dict; ``state["latent_hw"]`` is set by a UNet pre-hook on every call.
    """

    def __init__(self, name: str, controller: AttentionController, state: dict):
        self.name = name
        self.place = name.split(".")[0].split("_")[0]
        self.controller = controller
        self.state = state

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, q_len, _ = hidden_states.shape
        is_cross = encoder_hidden_states is not None
        context_len = encoder_hidden_states.shape[1] if is_cross else q_len
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context_len, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if not is_cross:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (x.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for x in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        ctx = AttnContext(self.name, self.place, is_cross, *grid_size(q_len, self.state["latent_hw"]))
        key, value = self.controller.on_kv(ctx, key, value)
        if self.controller.wants_probs(ctx):
            scores = self.controller.on_scores(ctx, _scores(attn, query, key, attention_mask))
            probs = self.controller.on_probs(ctx, scores.softmax(dim=-1).to(query.dtype))
            hidden_states = probs.to(value.dtype) @ value
        else:
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask)

        hidden_states = hidden_states.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _scores(attn: Attention, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Q Kᵀ · scale (+ the attention mask) → ``(B, heads, L_q, L_k)``, in the dtype the layer's upcast settings ask
    the softmax to run in."""
    if attn.upcast_attention:
        query, key = query.float(), key.float()
    scores = (query @ key.transpose(-1, -2)) * attn.scale
    if mask is not None:
        scores = scores + mask
    return scores.float() if attn.upcast_softmax else scores
