"""The FLUX family: standard diffusers folders load through ``model=``, the controlled joint-attention processor equals
diffusers' own, and ``method=kv_edit`` / ``method=flux_fill`` run from the command line and in the evaluation."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from commands import ROOT, evaluate
from flux_world import save_flux_folder
from PIL import Image, ImageDraw

from magicremover import flux
from magicremover.attention.install import controlled_attention
from magicremover.attention.joint import JointContext, JointController
from magicremover.baselines.flux_fill import FluxFill
from magicremover.baselines.kv_edit import KVEdit
from magicremover.errors import ConfigError, ImageError, ModelLoadError
from magicremover.models import load_pretrained


@pytest.fixture(scope="module")
def flux_folder(tmp_path_factory):
    """A standard FluxPipeline folder with random tiny weights, outside the repository."""
    return save_flux_folder(tmp_path_factory.mktemp("models") / "tiny-flux", seed=1)


@pytest.fixture(scope="module")
def fill_folder(tmp_path_factory):
    return save_flux_folder(tmp_path_factory.mktemp("models") / "tiny-flux-fill", seed=2, fill=True)


@pytest.fixture(scope="module")
def c(flux_folder):
    return load_pretrained(path=str(flux_folder), device="cpu", dtype="float32", resolution=64)


class Recorder(JointController):
    """Asks for explicit probabilities everywhere and keeps what each hook saw."""

    def __init__(self):
        self.seen: dict[str, JointContext] = {}
        self.probs: dict[str, torch.Tensor] = {}

    def wants_probs(self, ctx):
        return True

    def on_kv(self, ctx, key, value):
        self.seen[ctx.name] = ctx
        assert key.shape[2] == ctx.text_len + ctx.image_len
        return key, value

    def on_probs(self, ctx, probs):
        self.probs[ctx.name] = probs
        return probs


def _inputs(c, side=64):
    torch.manual_seed(0)
    latent_hw = (side // c.vae_scale_factor,) * 2
    packed = flux.pack(torch.randn(1, 16, *latent_hw))
    return packed, flux.encode_prompt(c, "a photo of a red circle"), flux.image_ids(c, latent_hw)


def test_a_flux_folder_loads_as_the_flux_family(c, flux_folder):
    assert isinstance(c, flux.FluxComponents) and c.family == "flux" and not c.is_fill
    assert c.resolution == 64 and c.vae_scale_factor == 2
    assert json.loads((flux_folder / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    native = load_pretrained(path=str(flux_folder), device="cpu", dtype="float32")
    assert native.resolution == 128 * 2  # FluxPipeline's default_sample_size times the VAE's factor
    text = flux.encode_prompt(c, "a photo of a dog")
    assert text.tokens.shape == (1, 512, 32) and text.pooled.shape == (1, 32) and not text.ids.any()


def test_pack_and_unpack_are_inverse_and_match_diffusers(c):
    latent = torch.randn(1, 16, 8, 12)
    packed = flux.pack(latent)
    assert packed.shape == (1, 4 * 6, 64)
    assert torch.equal(flux.unpack(packed, (8, 12)), latent)
    assert torch.equal(flux.unpack(packed, (8, 12)), c.pipe._unpack_latents(packed, 8 * 2, 12 * 2, 2))


def test_the_flux_schedule_is_the_pipelines(c):
    levels = flux.sigmas(c, 28, 256)
    assert len(levels) == 29 and levels[0] == pytest.approx(1.0) and levels[-1] == 0
    mu = 0.5  # 256 tokens: the base shift
    plain = np.linspace(1, 1 / 28, 28)
    expected = np.exp(mu) / (np.exp(mu) + (1 / plain - 1))  # FLUX's exponential time shift
    assert np.allclose(levels[:-1], expected, atol=1e-6)


def test_controlled_joint_processor_equals_diffusers_on_every_block(c):
    packed, text, ids = _inputs(c)
    plain = flux.velocity(c, packed, 0.7, text, ids, 3.5)
    original = dict(c.transformer.attn_processors)
    with controlled_attention(c.transformer, JointController()):
        sdpa = flux.velocity(c, packed, 0.7, text, ids, 3.5)
    recorder = Recorder()
    with controlled_attention(c.transformer, recorder):
        explicit = flux.velocity(c, packed, 0.7, text, ids, 3.5)
    assert torch.allclose(sdpa, plain, atol=1e-6) and torch.allclose(explicit, plain, atol=1e-5)
    assert set(recorder.seen) == {key.removesuffix(".processor") for key in original}  # 2 double + 2 single blocks
    streams = {name: ctx.stream for name, ctx in recorder.seen.items()}
    assert sorted(streams.values()) == ["double", "double", "single", "single"]
    for ctx in recorder.seen.values():
        assert (ctx.text_len, ctx.image_len, ctx.height, ctx.width) == (512, 256, 16, 16)
        rows = recorder.probs[ctx.name].sum(dim=-1)
        assert torch.allclose(rows, torch.ones_like(rows), atol=1e-5)
    assert all(type(p) is type(original[k]) for k, p in c.transformer.attn_processors.items())  # restored


def test_injecting_a_branchs_own_kv_reproduces_it(c):
    """A call's own K/V, recorded in every block and fed back, reproduce it exactly; fed to another input, they
    change that input's output (what KV-Edit's cache relies on)."""
    packed, text, ids = _inputs(c)

    class Replay(JointController):
        def __init__(self):
            self.kv, self.replay = {}, False

        def on_kv(self, ctx, key, value):
            if self.replay:
                return self.kv[ctx.name]
            self.kv[ctx.name] = (key, value)
            return key, value

    replay = Replay()
    with controlled_attention(c.transformer, replay):
        recorded = flux.velocity(c, packed, 0.5, text, ids, 3.5)
        replay.replay = True
        again = flux.velocity(c, packed, 0.5, text, ids, 3.5)
        other = flux.velocity(c, packed + 0.5, 0.5, text, ids, 3.5)
    assert torch.equal(again, recorded)
    changed = flux.velocity(c, packed + 0.5, 0.5, text, ids, 3.5)
    assert (other - changed).abs().max() > 1e-3  # the injected K/V did act


def _photo(tmp_path):
    image = Image.open(ROOT / "magicremover" / "assets" / "example.png").convert("RGB").resize((96, 80))
    mask = Image.new("L", (96, 80))
    ImageDraw.Draw(mask).ellipse((30, 20, 60, 50), fill=255)
    image.save(tmp_path / "photo.png")
    mask.save(tmp_path / "mask.png")
    return tmp_path / "photo.png", tmp_path / "mask.png"


def _remove(tmp_path, *args):
    command = [
        sys.executable,
        "-m",
        "magicremover.experiments.remove",
        *args,
        "device=cpu",
        f"out_dir={tmp_path / 'out'}",
    ]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("method", ["kv_edit", "flux_fill"])
def test_remove_runs_flux_methods_from_a_local_folder(method, flux_folder, fill_folder, tmp_path):
    photo, mask = _photo(tmp_path)
    folder = fill_folder if method == "flux_fill" else flux_folder
    args = ["model=local", f"model.path={folder}", "model.resolution=64", f"method={method}", f"image={photo}"]
    done = _remove(tmp_path, *args, f"mask={mask}", "target=circle")
    assert done.returncode == 0, done.stderr[-2000:]
    output = np.asarray(Image.open(tmp_path / "out" / "output.png"))
    assert output.shape == (80, 96, 3)
    far = np.asarray(Image.open(photo))[:, :12]  # far from the mask: the input's own bytes
    assert np.array_equal(output[:, :12], far)
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    stages = {"kv_edit": {"inversion": 24, "edit": 24}, "flux_fill": {"edit": 50}}[method]
    assert {stage: n["calls"] for stage, n in record["unet_calls"].items()} == stages
    planned = {"kv_edit": KVEdit.planned_calls(28, 4), "flux_fill": FluxFill.planned_calls(50)}[method]
    assert planned["full"] + planned["foreground"] == sum(stages.values())  # what the FLOPs table multiplies


def test_flux_errors_name_the_fix(flux_folder, fill_folder, tmp_path):
    photo, mask = _photo(tmp_path)
    local = ["model=local", f"model.path={flux_folder}", "model.resolution=64", f"image={photo}", "target=circle"]
    cases = {
        "method=magicremover": "MagicRemover runs on sd or sdxl models, not on flux: use an SD or SDXL model",
        "method=flux_fill": "method=flux_fill needs a FLUX.1 Fill model",
        "method=kv_edit": "KV-Edit needs a mask",
    }
    for override, message in cases.items():
        done = _remove(tmp_path, *local, override)
        assert done.returncode != 0 and message in done.stderr.strip().splitlines()[-1], done.stderr[-800:]
    done = _remove(tmp_path, "model=tiny", "method=kv_edit", f"image={photo}", f"mask={mask}", "target=circle")
    assert "KVEdit runs on flux models, not on sd: use a FLUX-family model" in done.stderr
    fill = ["model=local", f"model.path={fill_folder}", "model.resolution=64", "method=kv_edit", f"mask={mask}"]
    assert "not a Fill model" in _remove(tmp_path, *fill, f"image={photo}", "target=circle").stderr
    with pytest.raises(ModelLoadError, match="multiple of 4"):
        load_pretrained(path=str(flux_folder), device="cpu", dtype="float32", resolution=66)
    with pytest.raises(ConfigError, match="model.resolution applies to transformer families"):
        from magicremover.tiny import build_tiny

        folder = tmp_path / "sd"
        build_tiny(device="cpu").save_pretrained(folder)
        load_pretrained(path=str(folder), device="cpu", resolution=64)


@pytest.mark.parametrize("method", ["kv_edit", "flux_fill"])
def test_evaluation_runs_the_flux_methods_on_toy_samples(method, flux_folder, fill_folder, tmp_path):
    folder = fill_folder if method == "flux_fill" else flux_folder
    args = ["data=toy", "data.size=2", "model=local", f"model.path={folder}", "model.resolution=64"]
    evaluate(tmp_path, *args, f"method={method}", "device=cpu", f"out_dir={tmp_path / 'run'}")
    lines = (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_flux_flops_are_meta_device_flops_of_the_public_config():
    from magicremover.experiments.flops_transformers import per_call_flops

    flops = per_call_flops()
    assert 74.3e12 < flops["full"] < 74.5e12  # FLUX.1-dev at 1024²: 4096 image + 512 text tokens
    # KV-Edit's decoupled call: 512 + 256 query tokens, every one of the 4608 keys; more than the tokens' share alone
    assert flops["full"] * 768 / 4608 < flops["foreground"] < flops["full"] / 4
    assert KVEdit.planned_calls(num_inference_steps=28, skip_step=4) == {
        "full": 24,
        "foreground": 24,
        "vae_encode": 1,
        "vae_decode": 1,
    }  # the transformer calls are counted in the CLI test, the VAE passes in the next one


@pytest.mark.parametrize("method", ["kv_edit", "flux_fill"])
def test_the_planned_vae_passes_are_the_counted_ones(method, flux_folder, fill_folder, example_image):
    from magicremover.experiments.flops import _vae_calls
    from magicremover.types import RemovalSample

    folder = fill_folder if method == "flux_fill" else flux_folder
    c = load_pretrained(path=str(folder), device="cpu", dtype="float32", resolution=64)
    mask = Image.new("L", example_image.size)
    ImageDraw.Draw(mask).rectangle((10, 10, 30, 30), fill=255)
    remover = FluxFill(c, num_inference_steps=3) if method == "flux_fill" else KVEdit(c, 4, 1)
    with _vae_calls(c.vae) as counted:
        remover(RemovalSample(example_image, "a photo of a red circle", "circle", mask=mask))
    planned = remover.planned_calls(num_inference_steps=remover.steps, skip_step=getattr(remover, "skip_step", 0))
    assert counted == {key: planned[key] for key in ("vae_encode", "vae_decode")}


def test_the_sota_flux_command_compares_kv_edit_flux_fill_and_lama(
    flux_folder, fill_folder, coco_root, lama_weights, tmp_path
):
    sweep = tmp_path / "sota_flux"
    args = ["-m", "+artefact=sota_flux", "model=local", f"model.path={flux_folder}", "model.resolution=64"]
    args += [f"weights.flux_fill={fill_folder}", f"weights.lama={lama_weights}", "weights.lama_md5=null"]
    args += [f"hydra.sweep.dir={sweep}", "data=coco", f"data.root={coco_root}", "data.size=2", "metrics=tiny"]
    evaluate(tmp_path, *args, "resolution=64", "device=cpu", timeout=900)
    lines = (sweep / "sota_flux.md").read_text().splitlines()
    rows = {line.split(" | ")[0].lstrip("| ") for line in lines if line.startswith("| ") and "Method" not in line}
    assert {"KV-Edit", "FLUX.1 Fill", "LaMa"} <= rows
    for name in ("kv_edit", "flux_fill", "lama"):
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        assert metrics["ok"] == 2 and metrics["fid_local"] is not None, name


def test_kv_edit_runs_in_bfloat16_as_flux_is_run(flux_folder, example_image):
    """FLUX.1-dev runs in bf16: the attn_scale bias must take the queries' dtype (KV-Edit builds it in bf16)."""
    from magicremover.types import RemovalSample

    c = load_pretrained(path=str(flux_folder), device="cpu", dtype="bfloat16", resolution=64)
    mask = Image.new("L", example_image.size)
    ImageDraw.Draw(mask).rectangle((10, 10, 30, 30), fill=255)
    sample = RemovalSample(example_image, "a photo of a red circle", "circle", mask=mask)
    result = KVEdit(c, num_inference_steps=6, skip_step=1)(sample)
    assert c.dtype == torch.bfloat16 and torch.isfinite(result.image).all()
    assert result.extras["kv_cache_bytes"] == 5 * 4 * 2 * (1 * 2 * 256 * 32) * 2  # steps × layers × K,V × bf16


def test_kv_edit_settings_and_masks_it_cannot_use_name_the_fix(c, example_image):
    from magicremover.types import RemovalSample

    with pytest.raises(ConfigError, match=r"method.skip_step=28 must be in \[0, num_inference_steps=28\)"):
        KVEdit(c, num_inference_steps=28, skip_step=28)
    whole = Image.new("L", example_image.size, 255)
    sample = RemovalSample(example_image, "a photo of a red circle", "circle", mask=whole)
    with pytest.raises(ImageError, match="attn_mask needs background; set method.attn_mask=false"):
        KVEdit(c, num_inference_steps=4, skip_step=1, attn_mask=True)(sample)
