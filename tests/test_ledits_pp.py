"""LEDITS++ behind the remover contract: the same image as calling diffusers' pipeline directly with the same
arguments, its UNet calls counted, the shared UNet's processors restored, and its bad inputs as one-line errors
before any UNet call; runnable from remove, evaluate and the API."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from magicremover.config import build_remover, compose_config
from magicremover.errors import ConfigError, PromptError
from magicremover.images import fit_to_model, load_image, to_pil, to_tensor
from magicremover.toy.quality import held_out_cases
from magicremover.types import RemovalSample

TOY = ["method=ledits_pp", "device=cpu"]  # use_intersect_mask=auto: off, the toy and tiny models have no 2² grid


def test_the_image_equals_diffusers_pipeline_called_directly(tiny):
    from diffusers import DPMSolverMultistepScheduler, LEditsPPPipelineStableDiffusion

    sample = held_out_cases(1)[0].sample
    remover = build_remover(compose_config("remove", [*TOY, "method.num_inversion_steps=12"]), tiny)
    ours = remover(sample)
    scheduler = DPMSolverMultistepScheduler.from_config(
        tiny.scheduler.config, algorithm_type="sde-dpmsolver++", solver_order=2
    )
    pipe = LEditsPPPipelineStableDiffusion(
        tiny.vae, tiny.text_encoder, tiny.tokenizer, tiny.unet, scheduler, None, None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    image = to_pil(fit_to_model(load_image(sample.image), 64, "stretch"))
    saved = dict(tiny.unet.attn_processors)  # the pipeline installs its own on the shared UNet
    try:
        pipe.invert(
            image,
            source_prompt="",
            source_guidance_scale=3.5,
            num_inversion_steps=12,
            skip=0.15,
            generator=torch.Generator().manual_seed(0),
            height=64,
            width=64,
        )
        direct = pipe(
            editing_prompt=[sample.target],
            reverse_editing_direction=[True],
            edit_guidance_scale=5.0,
            edit_threshold=0.9,
            edit_warmup_steps=0,
            use_intersect_mask=False,
        ).images[0]
    finally:
        tiny.unet.set_attn_processor(saved)
    assert (ours.image - to_tensor(direct)).abs().max() < 1e-6
    assert (ours.image - to_tensor(image)).abs().max() > 0.02  # it edited something
    assert ours.calls["inversion"].calls == 12 and ours.calls["edit"].calls > 0 and ours.mask is None
    assert "not exposed" in ours.extras["mask"]


def test_the_shared_unets_processors_come_back_and_bad_inputs_fail_before_any_unet_call(tiny, example_image):
    remover = build_remover(compose_config("remove", [*TOY, "method.num_inversion_steps=4"]), tiny)
    before, calls = dict(tiny.unet.attn_processors), tiny.calls.totals()
    remover(held_out_cases(1)[0].sample)
    assert all(tiny.unet.attn_processors[name] is processor for name, processor in before.items())
    calls = tiny.calls.totals()
    with pytest.raises(PromptError, match="not in the prompt"):
        remover(RemovalSample(example_image, "a photo of a red circle", "dog"))
    assert tiny.calls.delta(tiny.calls.totals(), calls) == {}
    with pytest.raises(ConfigError, match=r"^LEDITS\+\+ reads cross-attention at a quarter of the latent side \(2²\)"):
        build_remover(
            compose_config("remove", ["method=ledits_pp", "device=cpu", "method.use_intersect_mask=true"]), tiny
        )
    assert remover.edit["use_intersect_mask"] is False  # auto, on a model without the grid
    with pytest.raises(ConfigError, match=r"^method.skip=1.0 must be a fraction"):
        build_remover(compose_config("remove", [*TOY, "method.skip=1.0"]), tiny)


def test_ledits_pp_runs_from_remove_evaluate_and_the_api(toy, tmp_path):
    from magicremover import Pipeline
    from magicremover.experiments import evaluate as ev
    from magicremover.experiments.remove import remove

    quick = [*TOY, "method.num_inversion_steps=6", "cache_dir=null"]
    cfg = compose_config("remove", [*quick, f"out_dir={tmp_path / 'remove'}"])
    remove(cfg, Path(cfg.out_dir))
    record = json.loads((Path(cfg.out_dir) / "result.json").read_text())
    assert record["unet_calls"]["inversion"]["calls"] == 6 and record["paste_back"]["applied"] is False
    cfg = compose_config("evaluate", [*quick, f"out_dir={tmp_path / 'eval'}", "data=toy", "data.size=2"])
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    assert metrics["ok"] == 2 and np.isfinite(metrics["psnr_in"])
    pipe = Pipeline(compose_config("remove", quick), build_remover(compose_config("remove", quick), toy))
    removal = pipe(held_out_cases(1)[0].sample.image, "circle", "a photo of a red circle on horizontal stripes")
    assert removal.image.size == held_out_cases(1)[0].sample.image.size
