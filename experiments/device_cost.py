"""Cost of each preset at SD-1.5 size on a device: seconds, forward-equivalents and peak memory per 512² image.

    python -m magicremover.experiments.benchmark --device cuda                  # SD-1.5-size model, random weights, fp16 and fp32
    python -m magicremover.experiments.benchmark --device cpu --size tiny       # the same measurement at tiny size (the test suite)

The model is built from SD-1.5's architecture configs with random weights (nothing is downloaded), so the figures
are cost, not quality: every preset runs its full pipeline (inversion included, no cache) on one image, once to warm
up and then ``--repeats`` times. Peak memory is ``torch.cuda.max_memory_allocated`` on a GPU and the process's peak
resident set on a CPU (which only grows, so there it bounds the whole run, not one preset). Also the guided-step
memory comparison behind ``--memory``: one 512² guided step of a real-size UNet, ours vs explicit attention.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from magicremover.clip_tokenizer import build_clip_tokenizer
from magicremover.config import build_remover, compose_config
from magicremover.errors import NonFiniteError
from magicremover.models import SDComponents, build_ddim_scheduler, text_config_for
from magicremover.tiny import build_tiny
from magicremover.toy.quality import held_out_cases

COST_PRESETS = ("magicremover", "magicremover_fast", "magicremover_paper", "p2p_reweight")  # conf/method/*
DTYPES = {"fp16": "float16", "fp32": "float32"}


def sd15_unet() -> UNet2DConditionModel:
    """SD 1.5's UNet (``stable-diffusion-v1-5``'s ``unet/config.json``: diffusers' defaults but these)."""
    return UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)


def sdxl_unet() -> UNet2DConditionModel:
    """SDXL base 1.0's UNet (``stabilityai/stable-diffusion-xl-base-1.0``'s ``unet/config.json``)."""
    return UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def sd_vae() -> AutoencoderKL:
    """The f8 KL autoencoder both families share the architecture of."""
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,  # SD 1.5's (SDXL's is 0.13025; FLOPs do not depend on it)
    )


def build_sd15_size(device: str, dtype: torch.dtype, seed: int = 0) -> SDComponents:
    """SD-1.5's UNet (860 M parameters), VAE and CLIP ViT-L/14 text encoder, from their configs with random weights."""
    torch.manual_seed(seed)
    unet, vae = sd15_unet(), sd_vae()
    tokenizer = build_clip_tokenizer()
    text_encoder = CLIPTextModel(
        text_config_for(
            tokenizer,
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
    )
    unet, vae, text_encoder = (m.to(device, dtype).eval() for m in (unet, vae, text_encoder))
    return SDComponents(unet, vae, text_encoder, tokenizer, build_ddim_scheduler(), f"sd15-size:seed={seed}:{dtype}")


def _peak_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def preset_cost(c: SDComponents, preset: str, repeats: int) -> dict:
    """One image through ``method=<preset>`` (no cache): median seconds with min–max, forward-equivalents, calls and
    peak memory; a random-weight model whose fp16 activations overflow is reported as such, not as a figure."""
    cfg = compose_config("remove", [f"method={preset}", "cache_dir=null", f"device={c.device}"])
    remover = build_remover(cfg, c)
    sample = held_out_cases(1)[0].sample
    if c.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(c.device)
    seconds, result = [], None
    try:
        for _ in range(repeats + 1):  # the first run warms kernels and allocator up
            if c.device.type == "cuda":
                torch.cuda.synchronize(c.device)
            start = time.perf_counter()
            result = remover(sample)
            if c.device.type == "cuda":
                torch.cuda.synchronize(c.device)
            seconds.append(time.perf_counter() - start)
    except NonFiniteError as err:
        return {"error": f"non-finite with random weights ({err})"}
    counts = result.calls.values()
    times = seconds[1:]
    return {
        "seconds": {"median": statistics.median(times), "min": min(times), "max": max(times), "n": len(times)},
        "calls": sum(n.calls for n in counts),
        "forward_equivalents": sum(n.forward_equivalents for n in counts),
        "peak_memory_gb": _peak_gb(c.device),
        "steps": cfg.num_inference_steps,
    }


def device_cost(device: str, size: str, dtypes: list[str], repeats: int, presets=COST_PRESETS) -> dict:
    """:func:`preset_cost` of every preset at ``size`` (``sd15`` or ``tiny``) in each dtype on ``device``."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch here; run it on a GPU machine")
    report = {"device": str(dev), "size": size, "repeats": repeats, "rows": {}}
    if dev.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(dev)
    for name in dtypes:
        c = (
            build_sd15_size(device, getattr(torch, DTYPES[name]))
            if size == "sd15"
            else build_tiny(0, device, DTYPES[name])
        )
        report["resolution"] = c.resolution
        for preset in presets:
            report["rows"][f"{preset} {name}"] = preset_cost(c, preset, repeats)
        del c
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return report


def device_table(report: dict) -> str:
    """The report as a markdown table."""
    side = report["resolution"]
    rows = [
        f"| preset, dtype ({report['size']} size, {report.get('gpu', report['device'])}) | seconds per {side}² image "
        "(median, min–max) | forward-equivalents | UNet calls | peak memory (GB) |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["rows"].items():
        if "error" in row:
            rows.append(f"| {name} | {row['error']} | | | |")
            continue
        s = row["seconds"]
        rows.append(
            f"| {name} | {s['median']:.2f} ({s['min']:.2f}–{s['max']:.2f}) | {row['forward_equivalents']} | "
            f"{row['calls']} | {row['peak_memory_gb']:.2f} |"
        )
    return "\n".join(rows)


def guided_step_peak_memory(kind: str) -> dict:
    """Run one 512² guided step of a real-size SD-1.5 UNet (random weights, fp32, CPU) in this process.

    ``ours``: our processors (SDPA self-attention, explicit cross-attention kept for the loss) with gradient
    checkpointing, as the method runs. ``reference``: diffusers' explicit ``AttnProcessor`` on every layer, which
    materialises self-attention probabilities as the authors' code does, all kept for backward.
    """
    from diffusers.models.attention_processor import AttnProcessor

    from magicremover.attention import CrossAttentionStore, controlled_attention, token_maps

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8, sample_size=64
    ).requires_grad_(False)
    z = torch.randn(2, 4, 64, 64, requires_grad=True)
    emb = torch.randn(2, 77, 768)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if kind == "reference":
        unet.set_attn_processor(AttnProcessor())
        out = unet(z, 501, encoder_hidden_states=emb).sample
        loss = out[1:].pow(2).mean()  # stands in for the attention loss: the graph spans the whole UNet either way
        torch.autograd.grad(loss, z)
    else:
        unet.enable_gradient_checkpointing()  # as MagicRemover runs its guided steps (gradient_checkpointing: true)
        store = CrossAttentionStore(keep_graph=True, batch_index=slice(1, 2))
        with controlled_attention(unet, store):
            unet(z, 501, encoder_hidden_states=emb)
            loss = token_maps(dict(store.maps), dict(store.shapes), [5], (64, 64)).pow(2).mean()
            torch.autograd.grad(loss, z)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss_gb": peak / 2**20, "rss_before_step_gb": base / 2**20, "seconds": time.perf_counter() - start}


def memory_comparison() -> dict:
    """Each variant of :func:`guided_step_peak_memory` in its own process, so peaks do not mix."""
    out = {}
    for kind in ("ours", "reference"):
        done = subprocess.run(
            [sys.executable, "-m", "magicremover.experiments.benchmark", "--guided-step", kind],
            capture_output=True,
            text=True,
            check=True,
        )
        out[kind] = json.loads(done.stdout.strip().splitlines()[-1])
    step = {k: v["peak_rss_gb"] - v["rss_before_step_gb"] for k, v in out.items()}
    out["step_memory_ratio"] = step["ours"] / step["reference"]
    return out
