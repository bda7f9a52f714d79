"""Cost benchmark: UNet calls per image and per sweep, controller overhead, fast inversion, guided-step memory.

    python -m magicremover.experiments.benchmark                    # tiny model, ~3 min on 2 idle cores, writes benchmark.json
    python -m magicremover.experiments.benchmark --all              # adds the calls-per-inversion rows (2 more minutes)
    python -m magicremover.experiments.benchmark --model toy        # the trained toy model (fast-inversion PSNR is meaningful)
    python -m magicremover.experiments.benchmark --memory           # adds peak memory of one 512² SD-1.5 guided step (slow)
    python -m magicremover.experiments.benchmark --threads          # seconds per UNet call at 1 … all cores (run it idle and busy)
    python -m magicremover.experiments.benchmark --device cuda      # per preset at SD-1.5 size: seconds, forward-equivalents, memory

Figures are medians over ``--repeats`` with their min–max spread; ratios are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from magicremover.authors_cost import authors_cost
from magicremover.config import build_remover, compose_config
from magicremover.experiments._cli import THREAD_VARIABLES, apply_thread_default, cpu_threads
from magicremover.experiments.benchmark_table import table
from magicremover.experiments.device_cost import (
    DTYPES,
    device_cost,
    device_table,
    guided_step_peak_memory,
    memory_comparison,
)
from magicremover.images import psnr
from magicremover.inversion import InversionConfig, invert, reconstruct
from magicremover.inversion.cache import entry_bytes
from magicremover.models import SDComponents, load_pretrained
from magicremover.tiny import build_tiny
from magicremover.toy.quality import held_out_cases, to_uint8
from magicremover.types import RemovalSample

PRESETS = ("magicremover", "magicremover_coco", "magicremover_paper", "p2p_reweight", "p2p_refine")  # conf/method/*
SWEEP = {  # Table 1's two MagicRemover rows and the four ablations of Fig. 6, on the COCO preset (config overrides)
    "table1_without_mask": [],
    "table1_with_mask": ["method.use_mask=true"],
    "ablation_no_relax": ["experiment=ablation_no_relax"],
    "ablation_no_reweight": ["experiment=ablation_no_reweight"],
    "ablation_no_sag": ["experiment=ablation_no_sag"],
    "ablation_no_classifier_opt": ["experiment=ablation_no_classifier_opt"],
}


def _median(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _remover(c: SDComponents, preset: str, cache: Path, *overrides: str):
    """The preset exactly as ``method=<preset>`` configures it (50 steps, null-text inversion)."""
    return build_remover(
        compose_config("remove", [f"method={preset}", f"cache_dir={cache}", "device=cpu", *overrides]), c
    )


INVERSIONS = {  # the default method per inversion (conf overrides), for the calls-per-image rows
    "null-text (released code)": ["inversion=null_text"],
    "negative-prompt": ["inversion=negative_prompt"],
    "Direct Inversion, reconstruction corrected": ["inversion=ddim", "method.trajectory_correction=reconstruction"],
    "Direct Inversion, both corrected": ["inversion=ddim", "method.trajectory_correction=both"],
}
SD15_LATENT, SD15_TEXT = (4, 64, 64), (77, 768)


def calls_per_inversion(c: SDComponents, n_images: int) -> dict:
    """UNet calls per image (every stage, inversion included; a backward pass is part of its call, as the counters
    count) of the default method with each inversion and of ``method=magicremover_fast``; the fast preset's ratio
    is against the released code's pipeline (null-text, 50 steps)."""
    rows = {name: ("magicremover", overrides) for name, overrides in INVERSIONS.items()}
    rows["magicremover_fast"] = ("magicremover_fast", [])
    out = {}
    for name, (preset, overrides) in rows.items():
        cfg = compose_config("remove", [f"method={preset}", "cache_dir=null", "device=cpu", *overrides])
        remover = build_remover(cfg, c)
        counts = [remover(sample).calls.values() for sample in _samples(n_images)]
        mean = lambda key: float(np.mean([sum(getattr(n, key) for n in c) for c in counts]))  # noqa: E731
        out[name] = {
            "calls_per_image": mean("calls"),
            "forward_equivalents_per_image": mean("forward_equivalents"),
            "steps": cfg.num_inference_steps,
        }
    released = out["null-text (released code)"]["calls_per_image"]
    out["fast_ratio"] = released / out["magicremover_fast"]["calls_per_image"]
    return out


def cache_bytes_sd15() -> dict:
    """Bytes of one cached (image, prompt) inversion at SD-1.5 shapes (512², 50 steps), from the shapes alone:
    before (v2: every latent and every null embedding in float32) and now (lean v3)."""
    latent, text = math.prod(SD15_LATENT) * 4, math.prod(SD15_TEXT) * 4
    v2 = 50 * 8 + 51 * latent + 50 * text + text
    return {
        "v2_every_entry": v2,
        "null_text": entry_bytes(50, SD15_LATENT, SD15_TEXT, distinct_nulls=True, full_trajectory=False),
        "negative_prompt": entry_bytes(50, SD15_LATENT, SD15_TEXT, distinct_nulls=False, full_trajectory=False),
        "direct_inversion": entry_bytes(50, SD15_LATENT, SD15_TEXT, distinct_nulls=False, full_trajectory=True),
    }


def _samples(n: int) -> list[RemovalSample]:
    return [case.sample for case in held_out_cases(n)]


def calls_per_preset(c: SDComponents, cache: Path) -> dict:
    """UNet calls of one image per preset after its inversion (in ``cache``, counted in the fast-inversion row)."""
    sample, out = _samples(1)[0], {}
    for preset in PRESETS:
        result = _remover(c, preset, cache)(sample)
        stages = {stage: {"calls": n.calls, "backward": n.backward} for stage, n in result.calls.items()}
        out[preset] = {
            "stages": stages,
            "edit_calls": sum(v["calls"] for k, v in stages.items() if k not in ("inversion", "null_text")),
        }
    return out


def sweep_calls(c: SDComponents, cache: Path, n_images: int, inversion_calls: list[int]) -> dict:
    """A Table-1 + 4-ablation sweep over the same images: our total vs the authors' code for the same schedule. The
    images' inversions come from ``cache``; ``inversion_calls`` (what each cost when computed) are added."""
    ours = sum(inversion_calls[:n_images])
    for sample in _samples(n_images):
        # Like an evaluation dataset, every sample carries a mask; only the mask-mode row uses it.
        sample = RemovalSample(sample.image, sample.prompt, sample.target, mask=_box_mask(sample.image.size))
        for overrides in SWEEP.values():
            result = _remover(c, "magicremover_coco", cache, *overrides)(sample)
            ours += sum(n.calls for n in result.calls.values())
    per_run = authors_cost(t_ratio=0.9, coco_script=True)
    reused = n_images * (per_run.null_text_calls + len(SWEEP) * per_run.edit_calls)
    rerun = n_images * len(SWEEP) * per_run.calls
    return {
        "images": n_images,
        "configs": len(SWEEP),
        "ours": ours,
        "authors_rerun_inversion": rerun,
        "authors_reusing_inversion": reused,
        "ratio_vs_rerun": rerun / ours,
        "ratio_vs_reusing": reused / ours,
    }


def _box_mask(size):
    from PIL import Image, ImageDraw

    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([size[0] // 4, size[1] // 4, 3 * size[0] // 4, 3 * size[1] // 4], fill=255)
    return mask


def controller_overhead(c: SDComponents, cache: Path, repeats: int) -> dict:
    """Seconds per UNet call: our two-branch loop with guidance off vs diffusers' own DDIM sampling loop."""
    from diffusers import StableDiffusionPipeline

    sample = _samples(1)[0]
    remover = _remover(c, "magicremover", cache, "method.attention_guidance=false")
    remover(sample)  # warm the inversion cache
    pipe = StableDiffusionPipeline(
        c.vae, c.text_encoder, c.tokenizer, c.unet, c.scheduler, None, None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    ours, plain = [], []
    for _ in range(repeats):
        result = remover(sample)
        loop = {k: v for k, v in result.calls.items() if k not in ("inversion", "null_text")}
        ours.append(sum(v.seconds for v in loop.values()) / sum(v.calls for v in loop.values()))
        steps = sum(v.calls for v in loop.values())
        start = time.perf_counter()
        pipe(
            sample.prompt,
            num_inference_steps=steps,
            guidance_scale=7.5,
            output_type="latent",
            generator=torch.Generator().manual_seed(0),
            height=c.resolution,
            width=c.resolution,
        )
        plain.append((time.perf_counter() - start) / steps)
    ratios = [a / b for a, b in zip(ours, plain)]
    return {"ours_s_per_call": _median(ours), "diffusers_s_per_call": _median(plain), "ratio": _median(ratios)}


def fast_inversion(c: SDComponents, n_images: int, cache: Path) -> dict:
    """Negative-prompt vs null-text inversion: UNet calls and reconstruction PSNR against the input. The null-text
    inversions are the default preset's own (same input, prompt and settings), stored in ``cache`` for the rows that
    follow, which then add these counted calls instead of inverting again."""
    rows = {"null_text": [], "negative_prompt": []}
    remover = _remover(c, "magicremover", cache)
    for case in held_out_cases(n_images):
        image = remover.fit(case.sample)[1]
        for method in rows:
            inversion = (
                remover.invert(case.sample, image)
                if method == "null_text"
                else invert(c, image, case.sample.prompt, InversionConfig(method=method))
            )
            recon = to_uint8(
                c.vae.decode(reconstruct(c, inversion, 7.5) / c.vae.config.scaling_factor).sample / 2 + 0.5
            )
            rows[method].append((sum(n.calls for n in inversion.calls.values()), psnr(recon, case.scene.image)))
    out = {
        m: {"calls": float(np.mean([r[0] for r in v])), "psnr": float(np.mean([r[1] for r in v]))}
        for m, v in rows.items()
    }
    out["null_text_calls_per_image"] = [r[0] for r in rows["null_text"]]
    out["call_ratio"] = out["null_text"]["calls"] / out["negative_prompt"]["calls"]
    out["psnr_gap_db"] = out["null_text"]["psnr"] - out["negative_prompt"]["psnr"]
    return out


def say(message: str) -> None:
    """What the benchmark is measuring now, on stderr (stdout carries the table)."""
    print(f"[{time.strftime('%H:%M:%S')}] benchmark: {message}", file=sys.stderr, flush=True)


def thread_timing(model: str, repeats: int) -> dict:
    """Seconds per CFG UNet call with 1, 2, … all cores as torch threads, each count in its own process (thread
    pools cannot be resized reliably in one). Run once on an idle machine and once with the other cores busy."""
    cores = len(os.sched_getaffinity(0))
    timings = {}
    for threads in range(1, cores + 1):
        say(f"seconds per UNet call with {threads} thread(s)")
        env = os.environ | {name: str(threads) for name in THREAD_VARIABLES}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "magicremover.experiments.benchmark",
                "--model",
                model,
                "--repeats",
                str(repeats),
                "--unet-seconds",
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        timings[threads] = json.loads(done.stdout.strip().splitlines()[-1])
    return {"cores": cores, "default_threads": cpu_threads(environ={}, cores=cores), "seconds_per_call": timings}


def unet_seconds(c: SDComponents, repeats: int) -> dict:
    """Median seconds of one batch-2 (CFG) UNet call at the model's resolution, after a warm-up call."""
    z = torch.randn(2, c.unet.config.in_channels, c.unet.config.sample_size, c.unet.config.sample_size)
    text = torch.randn(2, c.tokenizer.model_max_length, c.text_encoder.config.hidden_size)
    times = []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            c.unet(z, 500, encoder_hidden_states=text)
            times.append(time.perf_counter() - start)
    return _median(times[1:]) | {"threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, toy, or a local diffusers folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1, help="images in the sweep and the inversion comparisons")
    parser.add_argument("--all", action="store_true", help="also the UNet calls per image of every inversion (slow)")
    parser.add_argument("--memory", action="store_true", help="also measure one 512² SD-1.5 guided step (≈ 5 min)")
    parser.add_argument("--out", default="benchmark.json")
    parser.add_argument("--threads", action="store_true", help="only time UNet calls per torch thread count")
    parser.add_argument(
        "--device", help="only the per-preset cost at --size on this device (magicremover.experiments.device_cost)"
    )
    parser.add_argument("--size", choices=["sd15", "tiny"], default="sd15", help="model size for --device")
    parser.add_argument("--dtypes", nargs="*", choices=list(DTYPES), default=list(DTYPES), help="dtypes for --device")
    parser.add_argument("--guided-step", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--unet-seconds", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    apply_thread_default()
    if args.guided_step:
        print(json.dumps(guided_step_peak_memory(args.guided_step)))
        return
    if args.threads:
        print(json.dumps(thread_timing(args.model, args.repeats), indent=2))
        return
    if args.device:
        report = device_cost(args.device, args.size, args.dtypes, args.repeats)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(device_table(report))
        return
    from tempfile import TemporaryDirectory

    from magicremover.toy import load_toy

    say(f"loading the {args.model} model")
    c = (
        build_tiny(device="cpu")
        if args.model == "tiny"
        else load_toy("cpu")
        if args.model == "toy"
        else load_pretrained(path=args.model, device="cpu")
    )
    if args.unet_seconds:
        print(json.dumps(unet_seconds(c, args.repeats)))
        return
    report = {
        "ran": {
            "model": args.model,
            "resolution": c.resolution,
            "steps": 50,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "python": platform.python_version(),
            "versions": {p: version(p) for p in ("torch", "diffusers", "transformers")},
        },
        "authors_per_image": {
            "main.py": asdict(authors_cost()),
            "coco_script": asdict(authors_cost(t_ratio=0.9, coco_script=True)),
        },
    }
    with TemporaryDirectory() as tmp:
        cache = Path(tmp)  # the null-text inversions, computed once (and counted) by the first row
        say(f"negative-prompt vs null-text inversion on {args.images} images")
        report["fast_inversion"] = fast_inversion(c, args.images, cache)
        say(f"UNet calls of one image for each of {len(PRESETS)} presets (50 steps, the inversion reused)")
        report["calls_per_preset"] = calls_per_preset(c, cache)
        say(f"UNet calls of a {len(SWEEP)}-configuration sweep over {args.images} images, ours vs the authors' code")
        report["sweep"] = sweep_calls(c, cache, args.images, report["fast_inversion"]["null_text_calls_per_image"])
        say(f"seconds per UNet call, our loop vs diffusers' DDIM ({args.repeats} repeats)")
        report["controller_overhead"] = controller_overhead(c, cache, args.repeats)
    if args.all:
        say(f"UNet calls per image for each inversion and the fast preset ({args.images} images, no cache)")
        report["calls_per_inversion"] = calls_per_inversion(c, args.images)
    report["cache_bytes_per_pair_sd15"] = cache_bytes_sd15()
    if args.memory:
        say("peak memory of one 512² SD-1.5 guided step, ours then the reference (≈ 5 min)")
        report["guided_step_memory_512"] = memory_comparison()
    say(f"done; wrote {args.out}")
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(table(report))


if __name__ == "__main__":
    main()
