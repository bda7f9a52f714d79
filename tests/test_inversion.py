import pytest
import torch

from magicremover.diffusion import alpha_bar, ddim_step, encode_text
from magicremover.errors import ConfigError
from magicremover.inversion import InversionConfig, invert, reconstruct, set_timesteps

PROMPT = "a photo of a red circle on horizontal stripes"


def _error(c, inversion, scale=7.5):
    return (reconstruct(c, inversion, scale) - inversion.trajectory[:1]).pow(2).mean().item()


def test_ddim_step_matches_the_diffusers_scheduler(tiny):
    set_timesteps(tiny, 50)
    g = torch.Generator().manual_seed(1)
    z, eps = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t in (981, 501, 21, 1):
        expected = tiny.scheduler.step(eps, t, z).prev_sample
        assert torch.allclose(ddim_step(z, eps, alpha_bar(tiny, t), alpha_bar(tiny, t - 20)), expected, atol=1e-5)


def test_ddim_step_is_invertible_with_the_same_noise():
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    there = ddim_step(z, eps, 0.5, 0.9)
    assert torch.allclose(ddim_step(there, eps, 0.9, 0.5), z, atol=1e-5)


def test_asymmetric_step_takes_x0_from_eps_and_direction_from_guided_eps():
    z, eps, guided = torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2)
    a_from, a_to = 0.3, 0.6
    x0 = (z - (1 - a_from) ** 0.5 * eps) / a_from**0.5
    expected = a_to**0.5 * x0 + (1 - a_to) ** 0.5 * guided
    assert torch.allclose(ddim_step(z, eps, a_from, a_to, eps_direction=guided), expected, atol=1e-6)


def test_null_text_reconstructs_better_than_plain_ddim_at_cfg_7_5(tiny, image_tensor):
    steps = 10
    plain = invert(tiny, image_tensor, PROMPT, InversionConfig(method="ddim", num_inference_steps=steps))
    null = invert(tiny, image_tensor, PROMPT, InversionConfig(method="null_text", num_inference_steps=steps))
    assert torch.equal(plain.trajectory, null.trajectory)  # same DDIM inversion underneath
    plain_error, null_error = _error(tiny, plain), _error(tiny, null)
    # Measured on the random tiny model (10 steps, CFG 7.5): plain DDIM 11.4, null-text 5.0 (latent MSE).
    assert null_error < 0.6 * plain_error, (plain_error, null_error)
    assert not torch.allclose(null.null_embeddings[0], null.null_embeddings[-1])  # one embedding per step


def test_negative_prompt_inversion_costs_only_the_ddim_inversion(tiny, image_tensor):
    inversion = invert(tiny, image_tensor, PROMPT, InversionConfig(method="negative_prompt", num_inference_steps=10))
    assert set(inversion.calls) == {"inversion"} and inversion.calls["inversion"].calls == 10
    cond = encode_text(tiny, [PROMPT])
    assert torch.equal(inversion.null_embeddings, cond.expand(10, -1, -1))
    # with ∅ = prompt, CFG collapses to the conditional prediction: any scale reconstructs the same
    assert torch.allclose(reconstruct(tiny, inversion, 7.5), reconstruct(tiny, inversion, 1.0), atol=1e-5)


def test_trajectory_layout(tiny, image_tensor):
    inversion = invert(tiny, image_tensor, PROMPT, InversionConfig(method="ddim", num_inference_steps=5))
    assert inversion.timesteps.tolist() == [801, 601, 401, 201, 1]
    assert inversion.trajectory.shape == (6, 4, 8, 8) and inversion.null_embeddings.shape == (5, 77, 32)
    assert torch.equal(inversion.latent_at_step(0), inversion.z_T)
    assert torch.equal(inversion.latent_at_step(4), inversion.trajectory[1:2])  # latent at t = 1


def test_encode_sample_mode_is_seeded(tiny, image_tensor):
    def first(seed):
        config = InversionConfig(method="ddim", num_inference_steps=2, encode="sample", seed=seed)
        return invert(tiny, image_tensor, PROMPT, config).trajectory[0]

    assert torch.equal(first(0), first(0)) and not torch.equal(first(0), first(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "magic"}, "inversion.method=magic is not one of"),
        ({"num_inference_steps": 0}, "num_inference_steps must be"),
        ({"encode": "mode"}, "inversion.encode=mode is not mean or sample"),
    ],
)
def test_bad_inversion_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        InversionConfig(**kwargs)
