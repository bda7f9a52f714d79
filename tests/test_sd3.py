"""The SD3 family: a standard diffusers SD3 folder loads through ``model=``, and the controlled joint-attention
processor equals diffusers' ``JointAttnProcessor2_0`` on every block, with the target word's map readable from it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from commands import ROOT, evaluate
from PIL import Image
from sd3_world import save_sd3_folder

from magicremover import sd3
from magicremover.attention.install import controlled_attention
from magicremover.attention.joint import JointController
from magicremover.errors import ConfigError
from magicremover.models import load_pretrained


@pytest.fixture(scope="module")
def sd3_folder(tmp_path_factory):
    """A standard StableDiffusion3Pipeline folder with random tiny weights, outside the repository."""
    return save_sd3_folder(tmp_path_factory.mktemp("models") / "tiny-sd3", seed=4)


@pytest.fixture(scope="module")
def c(sd3_folder):
    return load_pretrained(path=str(sd3_folder), device="cpu", dtype="float32", resolution=64)


class Recorder(JointController):
    def __init__(self, explicit: bool):
        self.explicit, self.seen, self.probs = explicit, {}, {}

    def wants_probs(self, ctx):
        return self.explicit

    def on_kv(self, ctx, key, value):
        self.seen[ctx.name] = ctx
        return key, value

    def on_probs(self, ctx, probs):
        self.probs[ctx.name] = probs
        return probs


def _inputs(c):
    torch.manual_seed(0)
    return torch.randn(1, 16, 32, 32), sd3.encode_prompt(c, "a photo of a red circle")


def test_an_sd3_folder_loads_as_the_sd3_family(c, tmp_path):
    assert isinstance(c, sd3.SD3Components) and c.family == "sd3" and c.resolution == 64
    text = sd3.encode_prompt(c, "a photo of a dog")
    assert text.tokens.shape == (1, 77 + 256, 64) and text.pooled.shape == (1, 64)
    image = torch.rand(1, 3, 64, 64)
    latents = sd3.encode_image(c, image)
    assert latents.shape == (1, 16, 32, 32) and sd3.decode(c, latents).shape == (1, 3, 64, 64)
    levels = sd3.sigmas(c, 10)
    assert len(levels) == 11 and levels[0] == pytest.approx(1.0) and levels[-1] == 0
    no_t5 = load_pretrained(path=str(save_sd3_folder(tmp_path / "no-t5", t5=False)), device="cpu", resolution=64)
    assert no_t5.pipe.text_encoder_3 is None
    assert not sd3.encode_prompt(no_t5, "a photo of a dog").tokens[:, 77:].any()  # T5's part is zeros


def test_controlled_joint_processor_equals_diffusers_on_every_block(c):
    latents, text = _inputs(c)
    plain = sd3.velocity(c, latents, 0.6, text)
    original = dict(c.transformer.attn_processors)
    fused, explicit = Recorder(explicit=False), Recorder(explicit=True)
    with controlled_attention(c.transformer, fused):
        sdpa = sd3.velocity(c, latents, 0.6, text)
    with controlled_attention(c.transformer, explicit):
        with_probs = sd3.velocity(c, latents, 0.6, text)
    assert torch.allclose(sdpa, plain, atol=1e-6) and torch.allclose(with_probs, plain, atol=1e-5)
    assert set(explicit.seen) == {key.removesuffix(".processor") for key in original} and len(original) == 2
    for ctx in explicit.seen.values():
        assert ctx.image_first and (ctx.image_len, ctx.text_len, ctx.height, ctx.width) == (256, 333, 16, 16)
        assert ctx.image == slice(0, 256) and ctx.text == slice(256, 589)
        probs = explicit.probs[ctx.name]
        assert torch.allclose(probs.sum(-1), torch.ones(1), atol=1e-5)
        # the target word's map: image queries to its text keys, renormalised over the text keys
        word = probs[:, :, ctx.image, ctx.text]
        as_cross = word / word.sum(-1, keepdim=True)
        assert as_cross.shape == (1, 4, 256, 333) and torch.allclose(as_cross.sum(-1), torch.ones(1), atol=1e-5)
    assert all(type(p) is type(original[k]) for k, p in c.transformer.attn_processors.items())


def test_image_kv_from_a_reconstruction_branch_reproduce_it(c):
    """The edit branch reads the image tokens' K/V of the reconstruction branch (MagicRemover's self-attention
    guidance): with its own K/V injected, a branch comes back exactly; with another's, it changes."""
    latents, text = _inputs(c)

    class Inject(JointController):
        def __init__(self):
            self.kv, self.inject = {}, False

        def on_kv(self, ctx, key, value):
            if not self.inject:
                self.kv[ctx.name] = (key[:, :, ctx.image], value[:, :, ctx.image])
                return key, value
            key, value = key.clone(), value.clone()
            key[:, :, ctx.image], value[:, :, ctx.image] = self.kv[ctx.name]
            return key, value

    inject = Inject()
    with controlled_attention(c.transformer, inject):
        reconstruction = sd3.velocity(c, latents, 0.4, text)
        inject.inject = True
        again = sd3.velocity(c, latents, 0.4, text)
        edited = sd3.velocity(c, latents + 0.3, 0.4, text)
    assert torch.equal(again, reconstruction)
    assert (edited - sd3.velocity(c, latents + 0.3, 0.4, text)).abs().max() > 1e-3


def test_sd3_runs_no_other_unet_method(c, tmp_path):
    from magicremover.config import check_family

    message = (
        "PromptToPrompt runs on sd or sdxl models, not on sd3: use an SD or SDXL model; on SD3, method=magicremover"
    )
    with pytest.raises(ConfigError, match=message):
        check_family("magicremover.baselines.p2p.PromptToPrompt", c)


# ---- the flow inversion and MagicRemover's experimental SD3 port


@pytest.fixture(scope="module")
def z0(c, example_image):
    from magicremover.images import fit_to_model

    return sd3.encode_image(c, fit_to_model(example_image, 64))


def test_flow_step_is_euler_and_its_guided_form_shifts_the_noise_direction():
    from magicremover.inversion.flow import flow_step

    torch.manual_seed(0)
    z, v, shift = torch.randn(3, 1, 16, 4, 4).unbind(0)
    assert torch.allclose(flow_step(z, v, 0.8, 0.6), z + (0.6 - 0.8) * v, atol=1e-6)
    assert torch.allclose(flow_step(z, v, 0.8, 0.6, shift), z - 0.2 * v - 0.6 * shift, atol=1e-6)
    assert torch.allclose(flow_step(z, v, 0.8, 0.8, shift), z - 0.8 * shift, atol=1e-6)  # Eq. 11–12: same level


def test_null_text_flow_inversion_reconstructs_at_cfg(c, z0):
    from magicremover.inversion import InversionConfig
    from magicremover.inversion.flow import invert, reconstruct

    def error(method: str, scale: float = 7.5) -> float:
        inversion = invert(c, z0, "a photo of a red circle", InversionConfig(method=method, num_inference_steps=10))
        assert inversion.trajectory.shape == (11, 16, 32, 32) and inversion.null_tokens.shape == (10, 333, 64)
        return torch.nn.functional.mse_loss(reconstruct(c, inversion, scale), z0).item()

    plain, null_text = error("ddim"), error("null_text")
    assert null_text < plain / 10  # measured: 0.0026 against 0.062 (latents of variance 0.25)
    assert error("ddim", scale=1.0) < 0.005  # Euler inversion alone, replayed at w = 1


def _remover(c, *extra, **settings):
    from magicremover.config import build_remover, compose_config

    overrides = ["method=magicremover", "num_inference_steps=10", "cache_dir=null", "device=cpu", *extra]
    cfg = compose_config("remove", overrides + [f"method.{k}={v}" for k, v in settings.items()])
    return build_remover(cfg, c)


def test_magicremover_on_sd3_is_its_experimental_port(c, example_image):
    from magicremover.method.sd3 import MagicRemoverSD3
    from magicremover.types import RemovalSample

    remover = _remover(c)
    assert isinstance(remover, MagicRemoverSD3) and remover.settings.t_ratio == 0.85
    sample = RemovalSample(example_image, "a photo of a red circle on blue stripes", "circle")
    result = remover(sample)
    assert result.image.shape == result.reconstruction.shape == (1, 3, 64, 64)
    assert result.mask.shape == result.attention.shape == (1, 1, 64, 64)
    assert set(result.calls) >= {"inversion", "null_text", "reconstruction", "edit", "classifier_optimization"}
    assert result.calls["edit"].backward == result.extras["guided_steps"] > 0  # one gradient per guided step
    assert (result.image - result.reconstruction).abs().max() > 1e-3


def test_without_attention_guidance_the_edit_branch_is_the_reconstruction(c, example_image):
    """Its image K/V are the reconstruction's and nothing pushes it: the two branches stay equal, exactly."""
    from magicremover.types import RemovalSample

    remover = _remover(c, attention_guidance="false")
    result = remover(RemovalSample(example_image, "a photo of a red circle", "circle"))
    assert torch.equal(result.image, result.reconstruction)


def test_negative_prompt_inversion_folds_the_cfg_halves_into_one_call(c, example_image):
    from magicremover.types import RemovalSample

    sample = RemovalSample(example_image, "a photo of a red circle", "circle")
    folded = _remover(c, "inversion=negative_prompt")(sample)
    assert all(folded.calls[stage].samples == folded.calls[stage].calls for stage in ("reconstruction", "edit"))
    both = _remover(c, "inversion=negative_prompt", fold_cfg="false")(sample)
    assert both.calls["edit"].samples == 2 * both.calls["edit"].calls
    assert (folded.image - both.image).abs().max() < 1e-4  # v_u + w (v_c − v_u) = v_c when v_u = v_c


def test_settings_that_name_unet_machinery_are_refused_on_sd3(c):
    with pytest.raises(ConfigError, match="method.map_strides=.*names UNet or DDIM machinery"):
        _remover(c, map_strides="[1]")
    with pytest.raises(ConfigError, match="method.trajectory_correction=reconstruction"):
        _remover(c, trajectory_correction="reconstruction")


def test_remove_and_evaluate_run_magicremover_on_a_local_sd3_folder(sd3_folder, tmp_path):
    photo = tmp_path / "photo.png"
    Image.open(ROOT / "magicremover" / "assets" / "example.png").convert("RGB").resize((96, 80)).save(photo)
    local = ["model=local", f"model.path={sd3_folder}", "model.resolution=64", "num_inference_steps=6", "device=cpu"]
    command = [sys.executable, "-m", "magicremover.experiments.remove", *local, f"image={photo}", "target=circle"]
    done = subprocess.run(command + [f"out_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert np.asarray(Image.open(tmp_path / "out" / "output.png")).shape == (80, 96, 3)
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert record["method"] == "MagicRemoverSD3" and record["unet_calls"]["edit"]["backward"] > 0
    evaluate(tmp_path, "data=toy", "data.size=2", *local, f"out_dir={tmp_path / 'run'}")
    lines = (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_the_sota_sd3_command_compares_the_port_and_lama(coco_root, lama_weights, tmp_path):
    sweep = tmp_path / "sota_sd3"
    args = [
        "-m",
        "+artefact=sota_sd3",
        "model=tiny_sd3",
        f"hydra.sweep.dir={sweep}",
        "data=coco",
        f"data.root={coco_root}",
    ]
    args += ["data.size=2", "metrics=tiny", f"weights.lama={lama_weights}", "weights.lama_md5=null", "resolution=64"]
    evaluate(tmp_path, *args, "num_inference_steps=4", "device=cpu")
    lines = (sweep / "sota_sd3.md").read_text().splitlines()
    rows = {line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ") and "Method" not in line}
    assert {"MagicRemover", "MagicRemover (fast)", "LaMa"} <= rows
    for name in ("magicremover", "magicremover_fast", "lama"):
        assert json.loads((sweep / name / "metrics.json").read_text())["ok"] == 2, name


def test_a_t_ratio_that_edits_no_step_is_refused_on_sd3(c):
    with pytest.raises(ConfigError, match="method.t_ratio=0.01 edits none of the 10 steps"):
        _remover(c, t_ratio=0.01)
