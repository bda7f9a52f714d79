"""Equation-level checks of the guidance functions on hand-built tensors, against independent computations."""

import pytest
import torch

from magicremover.diffusion import ddim_step
from magicremover.method import guidance as G

A = torch.tensor([[0.1, 0.5, 0.9, 0.3], [0.2, 0.7, 0.4, 0.6]]).reshape(1, 1, 2, 4)


def test_normalize_map_anchors_to_the_first_maximum():
    assert torch.allclose(G.normalize_map(A, torch.tensor(0.9), 15.0), A / 0.9 * 15)


def test_top_quantile_mse_value_and_gradient():
    a = A.clone().requires_grad_(True)
    loss, region = G.top_quantile_mse(a, 0.75)
    # numpy-style quantile at 0.75 of the 8 values (linear interpolation) = 0.625 → pixels 0.9 and 0.7 are "top".
    values = A.flatten()
    level = torch.quantile(values, 0.75)
    top = (values >= level).float()
    assert top.tolist() == [0, 0, 1, 0, 0, 1, 0, 0] and torch.equal(region.flatten(), top)
    expected = ((values - values.min()) ** 2 * top).sum() / values.numel()  # MSE over all pixels, zero outside m
    assert torch.allclose(loss, expected)
    (grad,) = torch.autograd.grad(loss, a)
    manual = 2 * (values - values.min()) * top / values.numel()
    manual[values.argmin()] = -(2 * (values - values.min()) * top).sum() / values.numel()  # through min(A)
    assert torch.allclose(grad.flatten(), manual, atol=1e-7)


def test_no_relaxation_penalises_every_pixel():
    _, region = G.top_quantile_mse(A, 0.0)
    assert region.all()
    loss, region = G.relaxed_l1(A, 0.0)
    assert torch.allclose(loss, (A - A.min()).mean()) and region.sum() == 7  # all but the minimum itself


def test_relaxed_l1_value_and_gradient():
    a = A.clone().requires_grad_(True)
    loss, region = G.relaxed_l1(a, 0.8)
    level = 0.1 + 0.8 * (0.9 - 0.1)  # τ = min + λ (max − min) = 0.74
    values = A.flatten()
    assert torch.allclose(loss, torch.clamp(values - level, min=0).mean())
    assert region.flatten().tolist() == [0, 0, 1, 0, 0, 0, 0, 0]
    (grad,) = torch.autograd.grad(loss, a)
    assert torch.allclose(grad.flatten(), (values > level).float() / values.numel())  # τ is a constant target


def test_latent_region_keeps_only_fully_covered_cells():
    region = torch.zeros(1, 1, 8, 8)
    region[..., :4, :4] = 1  # covers latent cell (0, 0) of a 2x2 grid entirely
    region[..., 4:, 4:6] = 1  # half of cell (1, 1)
    assert G.latent_region(region, (2, 2)).flatten().tolist() == [1, 0, 0, 0]


def test_gate_is_the_union_with_the_fixed_mask():
    top = torch.tensor([[1.0, 0.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    fixed = torch.tensor([[0.0, 0.0], [0.0, 1.0]]).reshape(1, 1, 2, 2)
    assert G.gate_mask(top, fixed).flatten().tolist() == [1, 0, 0, 1]
    assert torch.equal(G.gate_mask(top, None), top)


def test_reweight_map_is_the_normalised_product():
    a, b = torch.rand(1, 1, 3, 3), torch.rand(1, 1, 3, 3)
    expected = a * b / (a * b).max()
    assert torch.allclose(G.reweight_map([a, b]), expected) and torch.allclose(G.reweight_map([a]), a / a.max())


def test_guided_noise_subtracts_the_weighted_gradient():
    eps, grad = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
    weight = torch.rand(1, 1, 3, 3)
    assert torch.allclose(G.guided_noise(eps, grad, weight, 2.0), eps - 2.0 * weight.expand(1, 4, 3, 3) * grad)


@pytest.mark.parametrize("alpha_t", [0.05, 0.5, 0.95])
def test_classifier_optimization_step_moves_only_along_the_perturbation(alpha_t):
    # Eq. 11/12 at the same t: z_opt = √ᾱ x̂₀(ε̂) + √(1−ᾱ) ε̂_guid = z − √(1−ᾱ) · s·W⊙∇L
    z, eps, grad, weight = (
        torch.randn(1, 4, 3, 3),
        torch.randn(1, 4, 3, 3),
        torch.randn(1, 4, 3, 3),
        torch.rand(1, 1, 3, 3),
    )
    guided = G.guided_noise(eps, grad, weight, 1.0)
    z_opt = ddim_step(z, eps, alpha_t, alpha_t, eps_direction=guided)
    assert torch.allclose(z_opt, z - (1 - alpha_t) ** 0.5 * weight * grad, atol=1e-5)


def test_word_product_and_minmax():
    a, b = torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2)
    assert torch.allclose(G.word_product([a, b]), a * b)
    scaled = G.minmax(a * 3 + 1)
    assert torch.isclose(scaled.min(), torch.tensor(0.0)) and torch.isclose(scaled.max(), torch.tensor(1.0))
