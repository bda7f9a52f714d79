"""MagicRemover's attention guidance as pure functions on tensors (paper §3.3, Eq. 7–9, 12–13).

Maps are ``(1, 1, H, W)`` float tensors; gradients flow through them to the latent. Two variants of the loss:

* ``top_quantile_mse`` — the authors' released code: pixels of the normalised map at or above its
  ``lambda_`` quantile (the top 20 % for λ = 0.8) are pulled to the map's minimum with a mean squared error.
* ``relaxed_l1`` — the paper's Eq. 7. As printed, ‖A − [min A + λ(max A − min A)]·A‖₁ multiplies the level by A,
  which makes g proportional to ‖A‖₁ and relaxes nothing. We read the bracket as the *target level*
  τ = min A + λ(max A − min A) and, as the prose says constraints are relaxed below it, penalise only the
  excess: g = mean(max(A − τ, 0)), i.e. the L1 distance between A and A clipped at τ. λ = 0 then pulls every
  pixel to the minimum (no relaxation), and lower λ erases more, as App. A.3 reports.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from magicremover.attention.aggregate import layer_token_maps


def normalize_map(attention: torch.Tensor, reference_max: torch.Tensor | float, scale: float) -> torch.Tensor:
    """Â = A / max₀ · scale, where max₀ is the map's maximum at the first guided step *of this image*.

    Anchoring to the first step (rather than renormalising every step) lets the loss fall as the object fades.
    The authors' code used scale 15 and leaked max₀ across images in its COCO loop; here it is per image.
    """
    return attention / reference_max * scale


def top_region(attention: torch.Tensor, quantile: float) -> torch.Tensor:
    """Binary map of pixels at or above the ``quantile`` of ``attention`` (constant: no gradient)."""
    level = torch.quantile(attention.detach().flatten().float(), quantile)
    return (attention.detach() >= level).to(attention.dtype)


def top_quantile_mse(attention: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The released code's loss: L = mean_p m_p (Â_p − min Â)², m = top region at ``quantile`` (Eq. 7's role).

    Returns:
        ``(loss, m)`` — the scalar loss and the binary top region ``m`` (same shape as ``attention``).
    """
    region = top_region(attention, quantile)
    loss = F.mse_loss(attention * region, region * attention.min())
    return loss, region


def relaxed_l1(attention: torch.Tensor, lambda_: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7 (our reading, see module docstring): g = mean(max(Â − τ, 0)), τ = min Â + λ (max Â − min Â).

    τ is a target level, held constant (detached) like the "target matrix" of §3.3.

    Returns:
        ``(g, region)`` — the scalar loss and the binary map of the penalised pixels (Â > τ).
    """
    low, high = attention.detach().min(), attention.detach().max()
    level = low + lambda_ * (high - low)
    return F.relu(attention - level).mean(), (attention.detach() > level).to(attention.dtype)


def latent_region(region: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Image-resolution binary region → latent resolution, kept where the whole neighbourhood is inside.

    Bilinear down-sampling then truncation, as the released code does: a latent pixel is 1 only if the
    sampled image pixels around its centre are all 1.
    """
    down = F.interpolate(region.float(), size=latent_hw, mode="bilinear", align_corners=False)
    return (down >= 1 - 1e-6).float()


def gate_mask(top: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
    """M = top-region ∪ M₀ (binary, latent resolution): where the gradient may act and blending keeps the edit."""
    return top if fixed is None else torch.maximum(top, fixed)


def reweight_map(word_maps: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 8/9 reweighting: Π_n A_n, scaled to max 1 (detached). One word: A itself (Eq. 8)."""
    product = torch.stack([m.detach() for m in word_maps]).prod(dim=0)
    return product / product.max().clamp_min(1e-12)


def guided_noise(eps: torch.Tensor, grad: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """ε̂_guid = ε̂ − s · (W ⊙ ∇_z L) (Eq. 8; Eq. 13 with a user mask as W).

    The paper writes "+ A ⊙ ∇g" for an ascent direction of its own sign convention; descending the loss on the
    attention map is a subtraction in ε-space, as the released code does.

    Args:
        eps: CFG noise prediction ``(1, C, h, w)``.
        grad: ∇_z L ``(1, C, h, w)``.
        weight: gate or reweighting map ``(1, 1, h, w)`` in [0, 1]; broadcast over channels.
        scale: guidance weight s (1 in the released code).
    """
    return eps - scale * weight * grad


def word_product(word_maps: list[torch.Tensor]) -> torch.Tensor:
    """Soft AND of a phrase's words (Eq. 9 grouping): the elementwise product of their maps."""
    product = word_maps[0]
    for other in word_maps[1:]:
        product = product * other
    return product


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Scale to [0, 1] over all elements."""
    low, high = x.min(), x.max()
    return (x - low) / (high - low).clamp_min(1e-12)


def fixed_mask_map(
    maps: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    words: Sequence[Sequence[int]],
    size: tuple[int, int],
) -> torch.Tensor:
    """The soft map behind M₀, as the released code builds it from the t = 1 cross-attention.

    Per layer, at the layer's own resolution: heads summed, each word's map (its tokens summed), min-max normalised
    jointly over the words, multiplied (soft AND); only then resized to ``size``. Bilinear resizing moves minima and
    maxima, so resizing first would change the map and flip pixels of M₀ = map > threshold. Then the layers are
    averaged and the mean min-max normalised.

    Args:
        maps: layer name → conditional probabilities ``(1, heads, h*w, T)``.
        shapes: layer name → ``(h, w)``.
        words: a target's words, each a list of token positions.
        size: output ``(H, W)``, the latent grid.

    Returns:
        ``(1, 1, H, W)`` in [0, 1].
    """
    per_layer = []
    for name, probs in maps.items():
        word_maps = torch.cat([layer_token_maps(probs, shapes[name], w).sum(1, keepdim=True) for w in words])
        native = minmax(word_maps.float()).prod(dim=0, keepdim=True)
        per_layer.append(F.interpolate(native, size=size, mode="bilinear", align_corners=False))
    return minmax(torch.stack(per_layer).mean(dim=0))


def loss_maps(word_maps: list[torch.Tensor], size: tuple[int, int], product: bool) -> list[torch.Tensor]:
    """The maps the loss is taken on, at image resolution: one product map (released code) or one map per word.

    The released code multiplies a phrase's words at the latent grid and resizes the product; product and bilinear
    resizing do not commute, so that order is kept.

    Args:
        word_maps: one ``(1, 1, h, w)`` map per word, at the latent grid.
        size: the image ``(H, W)``.
        product: multiply the words first (``multiword=product_map``).
    """
    maps = [word_product(word_maps)] if product else word_maps
    return [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]


def attention_loss(
    word_maps: list[torch.Tensor], image_hw: tuple[int, int], reference_max: list[torch.Tensor], settings
) -> tuple[torch.Tensor, torch.Tensor]:
    """The attention loss (Eq. 7 / the released code) of a guided step and its binary region at image resolution.

    Args:
        word_maps: one ``(1, 1, h, w)`` map per target word at the latent grid.
        image_hw: the image's ``(H, W)``.
        reference_max: max₀ per loss map; filled in place at the first guided step of an image.
        settings: :class:`~magicremover.method.settings.Settings` (``loss``, ``lambda_``, ``map_scale``,
            ``multiword``, ``relax_constraints``).
    """
    maps = loss_maps(word_maps, image_hw, product=settings.multiword == "product_map")
    if not reference_max:
        reference_max.extend(m.detach().max().clamp_min(1e-12) for m in maps)
    losses, regions = [], []
    for attention, reference in zip(maps, reference_max):
        normalized = normalize_map(attention, reference, settings.map_scale)
        loss_fn = top_quantile_mse if settings.loss == "top_quantile_mse" else relaxed_l1
        loss, region = loss_fn(normalized, settings.effective_lambda)
        losses.append(loss)
        regions.append(region)
    return torch.stack(losses).sum(), word_product(regions)  # Eq. 9: ∇ Σ_n g_n


def perturbation_weight(mask: torch.Tensor, word_maps: list[torch.Tensor], user_mask: bool, settings) -> torch.Tensor:
    """W in ε̂ − s·W⊙∇L at the latent grid: all ones (ablation w/o Rp), the user's mask (Eq. 13) or the gate M
    (released code) — both ``mask`` — or Π_n A_n (Eq. 8/9, ``reweight=attention``)."""
    if not settings.reweight_perturbation:
        return torch.ones_like(mask)
    if user_mask or settings.reweight == "mask":
        return mask
    return reweight_map(word_maps)
