"""SDXL as a model family: a standard diffusers SDXL folder (saved by diffusers' own pipeline from tiny random
weights) loads through ``model=local``, its text plumbing equals ``StableDiffusionXLPipeline.encode_prompt``, our
CFG DDIM steps equal the pipeline's, null-text keeps the pipeline's pooled and size conditioning, and the remove and
evaluate commands run on it."""

import json
import os
import subprocess
import sys

import pytest
import torch
from commands import ROOT, evaluate
from diffusers import DDIMScheduler, EulerDiscreteScheduler, StableDiffusionXLPipeline
from PIL import Image
from transformers import CLIPTextModelWithProjection

from magicremover.diffusion import alpha_bar, cfg_eps, ddim_step, encode_text, step_size, unconditional_embedding
from magicremover.errors import ModelLoadError
from magicremover.images import to_tensor
from magicremover.inversion import InversionConfig, invert, reconstruct, set_timesteps
from magicremover.models import load_pretrained, text_config_for
from magicremover.tiny import TEXT_SIZE, build_tiny, build_tiny_xl

PROMPT = "a photo of a red circle on horizontal stripes"


def xl_pipeline(c, scheduler=None) -> StableDiffusionXLPipeline:
    """diffusers' SDXL pipeline over ``c``'s modules (with SDXL base's Euler scheduler unless one is given)."""
    if scheduler is None:
        scheduler = EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        )
    pipe = StableDiffusionXLPipeline(
        vae=c.vae,
        text_encoder=c.text_encoder,
        text_encoder_2=c.text_encoder_2,
        tokenizer=c.tokenizer,
        tokenizer_2=c.tokenizer_2,
        unet=c.unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=c.zero_empty_prompt,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def xl(tiny_xl):
    return tiny_xl  # the session's tiny SDXL, shorter


@pytest.fixture(scope="module")
def xl_folder(xl, tmp_path_factory):
    """A standard SDXL folder as diffusers writes it (model_index.json, unet/, vae/, text_encoder(_2)/,
    tokenizer(_2)/, scheduler/), made outside the repository."""
    folder = tmp_path_factory.mktemp("sdxl") / "tiny-sdxl"
    xl_pipeline(xl).save_pretrained(folder)
    return folder


def test_a_diffusers_sdxl_folder_loads_as_the_sdxl_family_with_the_same_weights(xl, xl_folder):
    index = json.loads((xl_folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    c = load_pretrained(path=str(xl_folder), device="cpu", dtype="float32")
    assert c.is_xl and c.zero_empty_prompt and c.resolution == 128
    z, cond = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0)), encode_text(c, [PROMPT] * 2)
    assert torch.equal(
        cfg_eps(c, z[:1], 500, cond[:1], cond[:1], 7.5), cfg_eps(xl, z[:1], 500, cond[:1], cond[:1], 7.5)
    )
    ours = xl_folder.parent / "ours"
    xl.save_pretrained(ours)  # our writer makes the same layout, read back the same way
    assert {p.name for p in ours.iterdir()} == {p.name for p in xl_folder.iterdir()}
    again = load_pretrained(path=str(ours), device="cpu")
    assert again.is_xl and torch.equal(encode_text(again, [PROMPT]), encode_text(c, [PROMPT]))


@pytest.mark.parametrize("zeros", [True, False])
def test_text_embeddings_equal_the_pipelines_encode_prompt(zeros):
    c = build_tiny_xl(seed=0, device="cpu")  # its own: the shared one must stay as built
    c.zero_empty_prompt = zeros
    pipe = xl_pipeline(c)
    prompt, negative, pooled, negative_pooled = pipe.encode_prompt(PROMPT, device="cpu")
    ours, null = encode_text(c, [PROMPT]), unconditional_embedding(c)
    projection = c.text_encoder_2.config.projection_dim
    assert (
        ours.shape == (1, 78, 64)
        and torch.equal(ours[:, :-1], prompt)
        and torch.equal(ours[:, -1, :projection], pooled)
    )
    assert torch.equal(null[:, :-1], negative) and torch.equal(null[:, -1, :projection], negative_pooled)
    assert not ours[:, -1, projection:].any() and (null.abs().max() == 0) == zeros
    # Both tokenizers put the target at the same positions ("!" padding only differs after the end token).
    ids, ids_2 = (
        c.tokenizer("a photo of a fire hydrant").input_ids,
        c.tokenizer_2("a photo of a fire hydrant").input_ids,
    )
    assert ids == ids_2


def test_our_cfg_ddim_steps_equal_the_sdxl_pipelines(xl):
    pipe = xl_pipeline(xl, DDIMScheduler.from_config(xl.scheduler.config))
    start = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    direct = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, latents=start, output_type="latent").images
    z, cond, null = start, encode_text(xl, [PROMPT]), unconditional_embedding(xl)
    set_timesteps(xl, 3)
    for t in xl.scheduler.timesteps.tolist():
        eps = cfg_eps(xl, z, t, null, cond, 7.5)
        z = ddim_step(z, eps, alpha_bar(xl, t), alpha_bar(xl, t - step_size(xl)))
    assert (z - direct).abs().max() < 1e-5, (z - direct).abs().max()


def test_null_text_fits_the_token_rows_and_keeps_the_pooled_row_and_reconstructs(xl, example_image):
    image = to_tensor(example_image.resize((128, 128)))
    inversion = invert(xl, image, PROMPT, InversionConfig(num_inference_steps=10))
    null = inversion.null_embeddings
    assert null.shape == (10, 78, 64) and not null[:, -1].any()  # SDXL base's zero pooled row, untouched
    assert null[:, :-1].abs().amax() > 0  # the tokens moved off zeros
    plain = invert(xl, image, PROMPT, InversionConfig(method="ddim", num_inference_steps=10))
    assert torch.equal(plain.trajectory, inversion.trajectory)
    fitted, drifted = ((reconstruct(xl, i, 7.5) - i.trajectory[:1]).pow(2).mean() for i in (inversion, plain))
    # Measured on the tiny SDXL (10 steps, CFG 7.5): plain DDIM 7.2, null-text 3.6 (latent MSE).
    assert fitted < 0.6 * drifted, (fitted, drifted)


def test_components_from_different_families_are_one_line_errors(xl):
    sd = build_tiny(seed=0, device="cpu")
    with pytest.raises(ModelLoadError, match="text_encoder_2/ and tokenizer_2/"):
        type(sd)(xl.unet, xl.vae, sd.text_encoder, sd.tokenizer, sd.scheduler, identity="mixed")
    narrow = CLIPTextModelWithProjection(text_config_for(xl.tokenizer_2, projection_dim=16, **TEXT_SIZE))
    with pytest.raises(ModelLoadError, match="size-and-pooled conditioning"):
        type(sd)(xl.unet, xl.vae, xl.text_encoder, xl.tokenizer, sd.scheduler, "mixed", narrow, xl.tokenizer_2)


def test_the_vae_is_upcast_in_half_precision_and_bfloat16_runs_on_the_cpu(xl_folder):
    half = load_pretrained(path=str(xl_folder), device="cpu", dtype="float16")
    assert half.unet.dtype == torch.float16 and half.vae.dtype == torch.float32  # force_upcast, as the pipeline
    bf16 = load_pretrained(path=str(xl_folder), device="cpu", dtype="bfloat16")
    eps = cfg_eps(bf16, torch.randn(1, 4, 16, 16), 500, unconditional_embedding(bf16), encode_text(bf16, [PROMPT]), 7.5)
    assert eps.dtype == torch.float32 and torch.isfinite(eps).all() and bf16.vae.dtype == torch.bfloat16


SLOW_METHODS = ("magicremover_fast", "attentive_eraser", "ledits_pp")  # 20 s each; the default runs by default


@pytest.mark.parametrize("method", ["magicremover", *(pytest.param(m, marks=pytest.mark.slow) for m in SLOW_METHODS)])
def test_remove_runs_on_a_local_sdxl_folder_at_the_inputs_size(xl_folder, example_image, tmp_path, method):
    photo, mask = tmp_path / "photo.png", tmp_path / "mask.png"
    example_image.resize((150, 100)).save(photo)
    box = Image.new("L", (150, 100))
    box.paste(255, (60, 30, 100, 70))
    box.save(mask)  # Attentive Eraser needs one
    env = os.environ | {"PYTHONPATH": str(ROOT), "MAGICREMOVER_CACHE": str(tmp_path / "cache")}
    args = [f"model.path={xl_folder}", f"method={method}", f"image={photo}", f"out_dir={tmp_path / 'out'}"]
    args += [f"mask={mask}"] if method == "attentive_eraser" else []
    command = [sys.executable, "-m", "magicremover.experiments.remove", "model=local", "device=cpu", *args]
    done = subprocess.run(command + ["num_inference_steps=6"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert Image.open(tmp_path / "out" / "output.png").size == (150, 100)
    record = json.loads((tmp_path / "out" / "result.json").read_text())
    assert record["unet_calls"]["edit"]["calls"] > 0


@pytest.mark.parametrize("preset", ["magicremover_paper", "p2p_reweight", "p2p_refine"])
def test_the_other_presets_and_p2p_run_on_sdxl(xl, preset):
    from magicremover.config import build_remover, compose_config
    from magicremover.toy.quality import held_out_cases

    overrides = [
        f"method={preset}",
        "device=cpu",
        "num_inference_steps=4",
        "inversion=negative_prompt",
        "cache_dir=null",
    ]
    result = build_remover(compose_config("remove", overrides), xl)(held_out_cases(1)[0].sample)
    assert result.image.shape == (1, 3, 128, 128) and torch.isfinite(result.image).all()
    assert result.calls["edit"].calls == 4


def test_runs_are_deterministic_and_each_ablation_changes_the_output_on_sdxl(xl):
    from magicremover.inversion import InversionConfig as Config
    from magicremover.method import MagicRemover
    from magicremover.toy.quality import held_out_cases

    sample = held_out_cases(1)[0].sample

    def run(**settings):
        return MagicRemover(xl, Config(method="negative_prompt", num_inference_steps=6), **settings)(sample).image

    default = run()
    assert torch.equal(default, run())
    for ablation in (
        "relax_constraints",
        "reweight_perturbation",
        "self_attention_guidance",
        "classifier_optimization",
    ):
        assert not torch.equal(default, run(**{ablation: False})), ablation


def test_evaluate_finishes_its_samples_on_a_local_sdxl_folder(xl_folder, tmp_path):
    args = ["data=toy", "data.size=2", "model=local", f"model.path={xl_folder}", "device=cpu"]
    evaluate(tmp_path, *args, "inversion=negative_prompt", "num_inference_steps=4", f"out_dir={tmp_path / 'run'}")
    lines = (tmp_path / "run" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line)["status"] == "ok" for line in lines)


def test_sd_inpaint_runs_an_sdxl_inpainting_folder_through_the_sdxl_pipeline(xl, tmp_path):
    from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from PIL import ImageDraw

    from magicremover.baselines.sd_inpaint import SDInpaint
    from magicremover.types import RemovalSample

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(xl.unet.config, in_channels=9)  # noise, mask and masked-image latents
    parts = {name: getattr(xl, name) for name in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}
    StableDiffusionXLInpaintPipeline(unet=unet, scheduler=xl.scheduler, **parts).save_pretrained(tmp_path / "inpaint")
    image, mask = Image.new("RGB", (128, 128), (40, 120, 200)), Image.new("L", (128, 128), 0)
    ImageDraw.Draw(image).ellipse([40, 40, 80, 80], fill=(220, 30, 30))
    ImageDraw.Draw(mask).ellipse([40, 40, 80, 80], fill=255)
    remover = SDInpaint(path=str(tmp_path / "inpaint"), num_inference_steps=2, paste_back=True, device="cpu")
    assert type(remover.pipe).__name__ == "StableDiffusionXLInpaintPipeline" and remover.resolution == 128  # native
    result = remover(RemovalSample(image, "a photo of a red circle", "circle", mask=mask))
    assert result.image.shape == (1, 3, 128, 128) and result.mask.sum() > 40 * 40 * 0.785
    keep = (result.mask == 0).expand(1, 3, 128, 128)
    assert torch.equal(result.image[keep], to_tensor(image)[keep])  # pasted back outside the hole
    assert (result.image - to_tensor(image)).abs().amax() > 0.05  # and changed inside it


def test_ledits_pp_on_sdxl_equals_diffusers_xl_pipeline_called_directly(xl):
    from diffusers import DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusionXL

    from magicremover.config import build_remover, compose_config
    from magicremover.images import fit_to_model, load_image, to_pil
    from magicremover.toy.quality import held_out_cases

    sample = held_out_cases(1)[0].sample
    config = compose_config("remove", ["method=ledits_pp", "device=cpu", "method.num_inversion_steps=8"])
    ours = build_remover(config, xl)(sample)
    scheduler = DPMSolverMultistepScheduler.from_config(
        xl.scheduler.config, algorithm_type="sde-dpmsolver++", solver_order=2
    )
    parts = [xl.vae, xl.text_encoder, xl.text_encoder_2, xl.tokenizer, xl.tokenizer_2, xl.unet, scheduler]
    pipe = LEditsPPPipelineStableDiffusionXL(*parts, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    image = to_pil(fit_to_model(load_image(sample.image), 128, "stretch"))
    generator = torch.Generator().manual_seed(0)
    saved = dict(xl.unet.attn_processors)  # the pipeline installs its own on the shared UNet
    try:
        pipe.invert(image, num_inversion_steps=8, skip=0.15, generator=generator, height=128, width=128)
        direct = pipe(
            editing_prompt=[sample.target],
            reverse_editing_direction=[True],
            edit_guidance_scale=5.0,
            edit_threshold=0.9,
        ).images[0]
    finally:
        xl.unet.set_attn_processor(saved)
    assert (ours.image - to_tensor(direct)).abs().max() < 1e-6
    assert (ours.image - to_tensor(image)).abs().max() > 0.02  # it edited something
    assert ours.calls["inversion"].calls == 8 and ours.calls["edit"].calls > 0


def test_flops_per_removal_are_meta_device_flops_times_the_counted_calls():
    from magicremover.experiments.flops import calls_per_removal, markdown, per_call_flops

    # SIP at 5 steps and strength 0.8: 4 calls of two halves, one VAE encode and one decode.
    calls = calls_per_removal("sdxl", "attentive_eraser", steps=5)
    assert calls == {"forward_equivalents": 8, "vae_encode": 1, "vae_decode": 1}
    sd15, sdxl = per_call_flops("sd15"), per_call_flops("sdxl")
    assert 0.79e12 < sd15["unet"] < 0.81e12 and 6.7e12 < sdxl["unet"] < 6.8e12  # 2 × MACs of the public configs
    assert 3.9 < sdxl["vae_encode"] / sd15["vae_encode"] < 4.5  # convolutions scale with pixels, attention faster
    row = {"family": "sdxl", "method": "attentive_eraser", **calls, "unet_tflops_per_call": sdxl["unet"] / 1e12}
    row |= {"unet_tflops": 8 * sdxl["unet"] / 1e12, "vae_tflops": 1.0, "h100_seconds": 0.2}
    table = markdown({"rows": [row], "utilisation": 0.4, "h100_bf16_dense_flops": 989e12})
    assert "| SDXL (1024²) | attentive_eraser | 8 | 6.76 | 54 | 1.0 | 0.2 |" in table and "396 TFLOP/s" in table


def test_the_api_loads_the_sdxl_presets_by_name(example_image):
    from magicremover import Pipeline

    pipe = Pipeline.from_pretrained("tiny_xl", "magicremover_fast", ["num_inference_steps=4", "cache_dir=null"], "cpu")
    assert pipe.remover.components.is_xl and pipe.remover.resolution == 128
    removal = pipe(example_image.resize((200, 150)), "circle", PROMPT)
    assert removal.image.size == (200, 150) and removal.record["unet_calls"]["edit"]["calls"] == 3  # t_ratio 0.85 of 4
