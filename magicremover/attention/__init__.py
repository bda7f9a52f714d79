"""Attention control: per-layer processors, controllers, and map aggregation."""

from magicremover.attention.aggregate import attention_level, layer_token_maps, select_strides, token_maps
from magicremover.attention.controller import (
    AttentionController,
    AttnContext,
    ComposedController,
    CrossAttentionStore,
    EmptyController,
    SelfAttentionKV,
)
from magicremover.attention.install import controlled_attention

__all__ = [
    "attention_level",
    "AttentionController",
    "AttnContext",
    "ComposedController",
    "CrossAttentionStore",
    "EmptyController",
    "SelfAttentionKV",
    "controlled_attention",
    "layer_token_maps",
    "select_strides",
    "token_maps",
]
