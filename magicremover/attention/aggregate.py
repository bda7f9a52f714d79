"""Aggregating stored cross-attention maps over heads, layers and resolutions."""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
import torch.nn.functional as F


def token_maps(
    maps: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    tokens: Sequence[int],
    size: tuple[int, int],
    reduce: Literal["sum", "mean"] = "sum",
) -> torch.Tensor:
    """Cross-attention of chosen tokens, resized to one resolution and reduced over heads and layers.

    Each layer's maps are bilinearly resized (``align_corners=False``) to ``size``; because resizing is linear,
    heads are summed before resizing. ``sum`` matches the authors' code (§3.7 of the spec); ``mean`` divides by
    heads × layers and so does not depend on head counts (SD 1.5: 8 heads, SD 2.1: 5–20).

    Args:
        maps: layer name → probabilities ``(B, heads, h*w, T)``, e.g. ``CrossAttentionStore.maps``.
        shapes: layer name → ``(h, w)`` of that layer's query grid.
        tokens: token positions to keep (``T`` axis).
        size: output ``(H, W)``, typically the latent size.
        reduce: ``sum`` or ``mean`` over heads and layers.

    Returns:
        ``(B, len(tokens), H, W)``, non-negative; differentiable w.r.t. the maps.
    """
    if not maps:
        raise ValueError("no cross-attention maps were stored: was a CrossAttentionStore installed and enabled?")
    total, count = None, 0
    for name, probs in maps.items():
        native = layer_token_maps(probs, shapes[name], tokens)
        resized = F.interpolate(native.float(), size=size, mode="bilinear", align_corners=False)
        total = resized if total is None else total + resized
        count += probs.shape[1]
    return total / count if reduce == "mean" else total


def attention_level(
    maps: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    words: Sequence[Sequence[int]],
    size: tuple[int, int],
) -> torch.Tensor:
    """How strongly each place attends to a target, in probability units comparable across images (no per-image
    normalisation, unlike the M₀ map): per word its tokens' probabilities summed, averaged over heads and layers
    (:func:`token_maps` ``mean``); the words' minimum (every word of the target attends there at least this much).

    Args:
        maps: layer name → probabilities ``(1, heads, h*w, T)``.
        shapes: layer name → ``(h, w)``.
        words: the target's words, each a list of token positions.
        size: output ``(H, W)``.

    Returns:
        ``(1, 1, H, W)`` in [0, 1].
    """
    per_word = [token_maps(maps, shapes, word, size, "mean").sum(1, keepdim=True) for word in words]
    return torch.stack(per_word).amin(dim=0)


def select_strides(
    maps: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    latent_hw: tuple[int, int],
    strides: Sequence[int] | None,
) -> dict[str, torch.Tensor]:
    """The layers whose query grid is the latent grid divided by one of ``strides`` (``None``: every layer; the
    model's strides are :attr:`~magicremover.models.SDComponents.cross_attention_strides`)."""
    if strides is None:
        return dict(maps)
    return {name: probs for name, probs in maps.items() if latent_hw[0] // shapes[name][0] in strides}


def layer_token_maps(probs: torch.Tensor, shape: tuple[int, int], tokens: Sequence[int]) -> torch.Tensor:
    """One layer's cross-attention of chosen tokens at the layer's own query grid, heads summed.

    Args:
        probs: probabilities ``(B, heads, h*w, T)``.
        shape: ``(h, w)`` of the layer's query grid.
        tokens: token positions to keep.

    Returns:
        ``(B, len(tokens), h, w)``, non-negative; differentiable w.r.t. ``probs``.
    """
    batch = probs.shape[0]
    selected = probs[..., list(tokens)].sum(dim=1)  # (B, h*w, n)
    return selected.transpose(1, 2).reshape(batch, len(tokens), *shape)
