"""The remover end to end on the tiny model: call counts, identities, ablations, determinism, mask mode."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from magicremover.config import method_settings
from magicremover.errors import ConfigError, ImageError, PromptError
from magicremover.inversion import InversionConfig
from magicremover.method import MagicRemover
from magicremover.types import RemovalSample

PROMPT = "a photo of a red circle on horizontal stripes"
ABLATIONS = ["relax_constraints", "reweight_perturbation", "self_attention_guidance", "classifier_optimization"]
PAPER = method_settings("magicremover_paper")  # the preset exactly as conf/method/magicremover_paper.yaml sets it


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("inversions")


@pytest.fixture
def remove(tiny, example_image, cache_dir):
    def run(steps=10, inversion="negative_prompt", mask=None, target="circle", **settings):
        remover = MagicRemover(
            tiny, InversionConfig(method=inversion, num_inference_steps=steps), cache_dir=cache_dir, **settings
        )
        return remover(RemovalSample(example_image, PROMPT, target, mask=mask))

    return run


def _circle_mask(size=64):
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).ellipse([16, 18, 44, 46], fill=255)
    return mask


def test_default_call_counts_match_the_hand_derivation(remove):
    result = remove(steps=50)
    counts = {stage: (c.calls, c.samples, c.backward) for stage, c in result.calls.items()}
    # 50 DDIM steps 981…1, t_ratio 0.85 → edit start index 50 − int(42.5) = 8 (t = 821). Negative-prompt inversion:
    # the null embedding is the prompt's, so every CFG pair of halves is folded into one b1 call (method.fold_cfg):
    #   replay: steps 0–7, one call each                                       → 8 calls
    #   attention_mask: one conditional pass at t = 1 for M₀                   → 1 call
    #   reconstruction: steps 8–49, one call each                              → 42 calls
    #   edit: 41 guided calls with backward (821…21) + 1 plain (t = 1)         → 42 calls, 41 backward
    #   classifier_optimization: t ∈ {821…501}, 17 calls with backward         → 17 calls, 17 backward
    #   negative-prompt inversion: 50 b1 calls
    assert counts == {
        "inversion": (50, 50, 0),
        "attention_mask": (1, 1, 0),
        "replay": (8, 8, 0),
        "reconstruction": (42, 42, 0),
        "edit": (42, 42, 41),
        "classifier_optimization": (17, 17, 17),
    }
    unfolded = remove(steps=50, fold_cfg=False)  # the CFG batch of two: every sample count doubles
    assert {
        stage: c.samples for stage, c in unfolded.calls.items() if stage not in ("inversion", "attention_mask")
    } == {"replay": 16, "reconstruction": 84, "edit": 84, "classifier_optimization": 34}
    assert result.extras["edit_start_t"] == 821 and result.extras["guided_steps"] == 41


def test_without_guidance_the_edit_branch_reproduces_the_reconstruction(remove):
    result = remove(attention_guidance=False, self_attention_guidance=True)
    assert (result.image - result.reconstruction).abs().max() <= 1e-4
    assert "classifier_optimization" not in result.calls and result.calls["edit"].backward == 0


@pytest.mark.parametrize("preset", [{}, PAPER], ids=["released_code", "paper"])
def test_each_ablation_changes_the_output_and_runs_are_deterministic(remove, preset):
    full = remove(**preset)
    assert torch.equal(full.image, remove(**preset).image)  # same seed, same bytes
    assert (full.image - full.reconstruction).abs().max() > 1e-3  # guidance did something
    for key in ABLATIONS:
        ablated = remove(**(preset | {key: False}))
        assert (ablated.image - full.image).abs().max() > 1e-4, key


def test_results_have_documented_shapes_and_ranges(remove):
    result = remove()
    assert result.image.shape == result.reconstruction.shape == (1, 3, 64, 64)
    for soft in (result.attention, result.mask):
        assert soft.shape == (1, 1, 64, 64) and soft.min() >= 0 and soft.max() <= 1
    # min-max normalised at latent resolution, then bilinearly upsampled: the peak survives up to interpolation
    assert result.attention.max() > 0.9 and result.attention.min() < 0.1


def test_mask_mode_keeps_the_outside_closer_to_the_reconstruction(remove):
    mask = _circle_mask()
    soft = torch.from_numpy(np.array(mask, dtype=np.float32) / 255)[None, None]
    outside = (soft == 0).float()

    def outside_change(result):
        return ((result.image - result.reconstruction).abs() * outside).sum() / (3 * outside.sum())

    with_mask, without = remove(mask=mask, use_mask=True), remove()
    assert outside_change(with_mask) < outside_change(without)
    assert torch.equal(remove(mask=mask).image, without.image)  # a dataset's mask alone does not switch mask mode on
    # Eq. 13: the user's mask (at latent resolution) is the gate M, reported back at image resolution
    latent_mask = F.interpolate(soft, size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.allclose(
        with_mask.mask, F.interpolate(latent_mask, size=(64, 64), mode="bilinear", align_corners=False), atol=1e-5
    )


def test_multi_word_targets(remove):
    product = remove(target="red circle")
    summed = remove(target="red circle", multiword="sum_of_losses")
    assert product.extras["target_tokens"] == [[5], [6]]
    assert (product.image - summed.image).abs().max() > 1e-5


def test_bad_inputs_fail_before_any_unet_call(tiny, remove):
    before = tiny.calls.totals()
    with pytest.raises(PromptError, match="target 'dog' is not in the prompt"):
        remove(target="dog")
    with pytest.raises(ImageError, match="the mask is 32x32 but the image is 64x64"):
        remove(mask=_circle_mask(32), use_mask=True)
    with pytest.raises(ImageError, match="the mask is empty"):
        remove(mask=Image.new("L", (64, 64), 0), use_mask=True)
    assert tiny.calls.delta(tiny.calls.totals(), before) == {}
    with pytest.raises(ConfigError, match="method.loss=l2 is not one of"):
        remove(loss="l2")


def test_null_text_inversion_path(remove):
    result = remove(steps=5, inversion="null_text")
    assert result.calls["null_text"].backward > 0 and result.image.shape == (1, 3, 64, 64)


def test_gradient_checkpointing_changes_nothing_but_memory(tiny, remove):
    with_checkpointing, without = remove(gradient_checkpointing=True), remove(gradient_checkpointing=False)
    assert torch.equal(with_checkpointing.image, without.image)
    assert {k: v.calls for k, v in with_checkpointing.calls.items()} == {k: v.calls for k, v in without.calls.items()}
    assert not tiny.unet.is_gradient_checkpointing  # restored after the run


def test_direct_inversion_keeps_the_reconstruction_on_the_trajectory_without_replay_calls(tiny, remove, image_tensor):
    from magicremover.diffusion import decode_latents
    from magicremover.inversion import invert

    result = remove(steps=10, inversion="ddim", trajectory_correction="reconstruction")
    z0 = invert(tiny, image_tensor, PROMPT, InversionConfig(method="ddim", num_inference_steps=10)).trajectory[:1]
    assert torch.allclose(result.reconstruction, decode_latents(tiny, z0).cpu(), atol=1e-6)  # exact: z₀ decoded
    # 10 steps, edit start 10 − int(8.5) = 2: no replay call; 8 reconstruction, 8 edit, 1 attention, 10 inversion.
    calls = {stage: c.calls for stage, c in result.calls.items()}
    assert "replay" not in calls and calls["reconstruction"] == calls["edit"] == 8 and calls["inversion"] == 10
    plain = remove(steps=10, inversion="ddim")
    assert not torch.allclose(plain.reconstruction, result.reconstruction, atol=1e-3)  # CFG drifts without it
    both = remove(steps=10, inversion="ddim", trajectory_correction="both")
    assert torch.isfinite(both.image).all() and (both.image - result.image).abs().max() > 1e-3
    with pytest.raises(ConfigError, match="trajectory_correction=all is not one of none, reconstruction, both"):
        remove(steps=10, trajectory_correction="all")


def test_kv_from_the_inversion_replaces_the_reconstruction_branch(tiny, remove, image_tensor, example_image, cache_dir):
    from magicremover.attention import SelfAttentionKV, controlled_attention
    from magicremover.diffusion import encode_text, unet_eps

    entries = {path: path.stat().st_mtime_ns for path in cache_dir.rglob("*.safetensors")}
    result = remove(steps=10, trajectory_correction="reconstruction", kv_source="inversion")
    calls = {stage: c.calls for stage, c in result.calls.items()}
    # A fresh inversion even though the cache may hold this one (its K/V are not cached): 10 inversion calls; 8 edit,
    # 3 classifier optimisation (t ≥ 500 of 901…1 from the edit start) and no replay or reconstruction call.
    assert calls == {"inversion": 10, "attention_mask": 1, "edit": 8, "classifier_optimization": 3}
    assert not result.extras["inversion_from_cache"]
    # Nor does it write (or rewrite) an entry it would never read.
    assert {path: path.stat().st_mtime_ns for path in cache_dir.rglob("*.safetensors")} == entries
    with_reconstruction = remove(steps=10, trajectory_correction="reconstruction")
    assert torch.allclose(result.reconstruction, with_reconstruction.reconstruction, atol=1e-6)  # both the trajectory
    assert (result.image - with_reconstruction.image).abs().max() > 1e-4  # other K/V, another edit
    # What the inversion recorded at timestep t is what a direct conditional UNet call on its latent at t gives.
    remover = MagicRemover(
        tiny,
        InversionConfig(method="negative_prompt", num_inference_steps=10),
        trajectory_correction="reconstruction",
        kv_source="inversion",
    )
    inversion, recorded = remover._invert(RemovalSample(example_image, PROMPT, "circle"), image_tensor)
    ascending = inversion.timesteps.flip(0).tolist()
    assert sorted(recorded) == ascending[:8]  # the edited steps' only (t_ratio 0.85 of 10: the 8 lowest timesteps)
    direct = SelfAttentionKV()
    direct.mode = "record"
    with controlled_attention(tiny.unet, direct), torch.no_grad():
        unet_eps(tiny, inversion.trajectory[3:4], ascending[3], encode_text(tiny, [PROMPT]))
    assert direct.kv.keys() == recorded[ascending[3]].keys() and len(direct.kv) > 0
    for name, (key, value) in direct.kv.items():
        assert torch.allclose(key, recorded[ascending[3]][name][0], atol=1e-6)
        assert torch.allclose(value, recorded[ascending[3]][name][1], atol=1e-6)
    # Under null-text inversion the edit runs both CFG halves; the one conditional recording serves both.
    null_text = remove(steps=10, inversion="null_text", trajectory_correction="reconstruction", kv_source="inversion")
    assert null_text.calls["edit"].samples == 2 * null_text.calls["edit"].calls and null_text.image.isfinite().all()
    with pytest.raises(ConfigError, match="kv_source=inversion runs no reconstruction branch: set method.trajectory_"):
        remove(steps=10, kv_source="inversion")
    with pytest.raises(ConfigError, match="method.kv_source=both is not one of reconstruction, inversion"):
        remove(steps=10, kv_source="both")


def test_the_fast_preset_costs_what_the_hand_derivation_says(tiny, example_image):
    from magicremover.config import build_remover, compose_config

    cfg = compose_config("remove", ["method=magicremover_fast", "cache_dir=null", "device=cpu"])
    result = build_remover(cfg, tiny)(RemovalSample(example_image, PROMPT, "circle"))
    # Negative-prompt inversion: 50 conditional calls, no optimisation; then the default method's edit stage without
    # classifier optimisation (8 replay + 1 attention + 42 reconstruction + 42 edit): 143 per image. The released
    # pipeline costs 742 on the toy model (null-text: 50 + 582, then 110 with 17 optimisation calls), 5.2× more.
    calls = {stage: c.calls for stage, c in result.calls.items()}
    assert calls == {"inversion": 50, "replay": 8, "attention_mask": 1, "reconstruction": 42, "edit": 42}
    assert result.calls["edit"].backward == 41 and 742 / sum(calls.values()) >= 5
    # K/V from the inversion (method.kv_source=inversion): no replay, no reconstruction branch, the edit's calls
    # unchanged: 266 − 8 − 42 = 216 forward-equivalents, 10.2× fewer than the released pipeline's 2213.
    kv_cfg = compose_config(
        "remove",
        [
            "method=magicremover_fast",
            "cache_dir=null",
            "device=cpu",
            "method.trajectory_correction=reconstruction",
            "method.kv_source=inversion",
        ],
    )
    kv = build_remover(kv_cfg, tiny)(RemovalSample(example_image, PROMPT, "circle"))
    assert {stage: c.calls for stage, c in kv.calls.items()} == {"inversion": 50, "attention_mask": 1, "edit": 42}
    assert sum(c.forward_equivalents for c in kv.calls.values()) == 216
    assert sum(c.forward_equivalents for c in result.calls.values()) == 266


@pytest.mark.parametrize("reweight", [True, False])
def test_blending_keeps_the_reconstruction_outside_the_region_whatever_the_gradient_weight(
    tiny, example_image, cache_dir, reweight
):
    """w/o Rp gives the gradient no weight (W = 1), but the released code still blends outside the region M it finds
    (the released main.py:705): outside M the final edit latent is the reconstruction's, inside it is edited."""
    remover = MagicRemover(
        tiny,
        InversionConfig(method="negative_prompt", num_inference_steps=10),
        cache_dir=cache_dir,
        reweight_perturbation=reweight,
    )
    denoised = []
    real = remover._denoise
    remover._denoise = lambda *args: denoised.append(real(*args)) or denoised[-1]
    result = remover(RemovalSample(example_image, PROMPT, "circle"))
    z_rec, z_edit, region = denoised[0]
    outside, inside = (region == 0).expand_as(z_edit), (region == 1).expand_as(z_edit)
    assert outside.any() and inside.any() and ((region == 0) | (region == 1)).all()
    assert torch.equal(z_edit[outside], z_rec[outside])
    assert (z_edit[inside] - z_rec[inside]).abs().max() > 1e-3
    assert torch.equal(result.mask, F.interpolate(region, size=(64, 64), mode="bilinear").clamp(0, 1))


def test_map_strides_choose_the_layers_the_maps_read(remove):
    every = remove()
    both = remove(map_strides=[1, 2])  # the tiny UNet's grids: 8² (stride 1) and 4² (stride 2, and the mid block)
    assert torch.equal(every.image, both.image) and torch.equal(every.attention, both.attention)
    fine = remove(map_strides=[1])
    assert (fine.attention - every.attention).abs().max() > 1e-3 and not torch.equal(fine.image, every.image)
    message = r"map_strides=\[1, 8\]: this model has cross-attention at strides \[1, 2\] only"
    with pytest.raises(ConfigError, match=message):
        remove(map_strides=[1, 8])
    with pytest.raises(ConfigError, match="must be positive integers"):
        remove(map_strides=[0])
