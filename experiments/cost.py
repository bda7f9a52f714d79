"""What a removal costs, by an honest count: forward-equivalents and paired wall time, beside the UNet calls.

    python -m magicremover.experiments.cost                  # the toy model, the example scene, 3 alternating rounds (~5 min)
    python -m magicremover.experiments.cost --repeats 5 --out cost.json
    python -m magicremover.experiments.cost --flops          # FLOPs per removal at real size (magicremover.experiments.flops)

A call can be batch 1 or 2, with or without a backward pass, so calls are a poor proxy for what a GPU pays.
Forward-equivalents = forward samples + 2 × backward samples + the forwards gradient checkpointing recomputes
(:class:`magicremover.unet_calls.StageCount`); the factor 2 is checked here by timing the UNet forward against forward +
backward. Wall time is measured in one process with the presets run in alternation (round robin), so a busy machine
slows every preset alike; ratios are of medians, with each preset's min–max.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from magicremover.config import build_remover, compose_config
from magicremover.experiments._cli import apply_thread_default
from magicremover.experiments.remove import EXAMPLE_PROMPT, example_image
from magicremover.models import SDComponents, load_pretrained
from magicremover.types import RemovalSample
from magicremover.unet_calls import BACKWARD_COST

PRESETS = {  # name: conf/remove.yaml overrides
    "released pipeline (magicremover, null-text)": ["method=magicremover"],
    "magicremover_fast": ["method=magicremover_fast"],
    "magicremover_fast, CFG halves not folded": ["method=magicremover_fast", "method.fold_cfg=false"],
    "magicremover_fast, K/V from the inversion": [
        "method=magicremover_fast",
        "method.trajectory_correction=reconstruction",
        "method.kv_source=inversion",
    ],
}


def backward_factor(c: SDComponents, repeats: int) -> dict:
    """Seconds of one batch-1 UNet forward and of forward + backward (through the latent), medians of ``repeats``;
    ``factor`` = (forward + backward) / forward − 1, the cost of a backward in forwards."""
    z = torch.randn(1, c.unet.config.in_channels, c.resolution // 8, c.resolution // 8)
    embedding = torch.randn(1, c.tokenizer.model_max_length, c.text_encoder.config.hidden_size)
    times = {"forward": [], "forward_backward": []}
    for _ in range(repeats):
        for kind in times:
            latent = z.clone().requires_grad_(kind == "forward_backward")
            start = time.perf_counter()
            with torch.set_grad_enabled(kind == "forward_backward"):
                out = c.unet(latent, 501, encoder_hidden_states=embedding).sample
                if kind == "forward_backward":
                    out.square().mean().backward()
            times[kind].append(time.perf_counter() - start)
    forward, both = (statistics.median(times[k]) for k in times)
    return {"forward_s": forward, "forward_backward_s": both, "factor": both / forward - 1, "assumed": BACKWARD_COST}


def batching_gain(c: SDComponents, repeats: int) -> dict:
    """Whether batching the reconstruction and edit branches into one call would pay: seconds of one batch-2 UNet
    forward against two batch-1 forwards (alternated, medians of ``repeats``); ``saving`` is the fraction of the two
    calls' time one batched call saves. Forwards only: large where per-call overhead dominates (the toy model), and
    silent about a guided call, whose backward would then run through both branches' rows."""
    z = torch.randn(2, c.unet.config.in_channels, c.resolution // 8, c.resolution // 8)
    embedding = torch.randn(2, c.tokenizer.model_max_length, c.text_encoder.config.hidden_size)
    times = {"batched": [], "two_calls": []}
    with torch.no_grad():
        c.unet(z, 501, encoder_hidden_states=embedding)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            c.unet(z, 501, encoder_hidden_states=embedding)
            times["batched"].append(time.perf_counter() - start)
            start = time.perf_counter()
            for i in range(2):
                c.unet(z[i : i + 1], 501, encoder_hidden_states=embedding[i : i + 1])
            times["two_calls"].append(time.perf_counter() - start)
    batched, two = (statistics.median(times[k]) for k in times)
    return {"batched_s": batched, "two_calls_s": two, "saving": 1 - batched / two}


def paired_costs(c: SDComponents, repeats: int) -> dict:
    """Each preset on the example scene, ``repeats`` rounds in alternation (no inversion cache): counts per image and
    wall-time medians and ranges."""
    sample = RemovalSample(example_image(), EXAMPLE_PROMPT, "circle")
    removers = {
        name: build_remover(compose_config("remove", [*overrides, "cache_dir=null", "device=cpu"]), c)
        for name, overrides in PRESETS.items()
    }
    seconds = {name: [] for name in removers}
    counts = {}
    for _ in range(repeats):
        for name, remover in removers.items():
            start = time.perf_counter()
            result = remover(sample)
            seconds[name].append(time.perf_counter() - start)
            counts[name] = {
                "calls": sum(n.calls for n in result.calls.values()),
                "samples": sum(n.samples for n in result.calls.values()),
                "backward_samples": sum(n.backward_samples for n in result.calls.values()),
                "forward_equivalents": sum(n.forward_equivalents for n in result.calls.values()),
            }
    released = next(iter(PRESETS))
    report = {}
    for name in removers:
        median = statistics.median(seconds[name])
        report[name] = counts[name] | {
            "seconds_median": median,
            "seconds_range": [min(seconds[name]), max(seconds[name])],
            "fewer_calls": counts[released]["calls"] / counts[name]["calls"],
            "fewer_forward_equivalents": counts[released]["forward_equivalents"] / counts[name]["forward_equivalents"],
            "less_wall_time": statistics.median(seconds[released]) / median,
        }
    return report


def table(report: dict) -> str:
    """The report as a Markdown table."""
    lines = [
        "| preset | calls | forward-equivalents | × fewer calls | × fewer FE | seconds (median, range) | × less time |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["presets"].items():
        low, high = row["seconds_range"]
        lines.append(
            f"| {name} | {row['calls']} | {row['forward_equivalents']} | {row['fewer_calls']:.1f} | "
            f"{row['fewer_forward_equivalents']:.1f} | {row['seconds_median']:.1f} ({low:.1f}–{high:.1f}) | "
            f"{row['less_wall_time']:.1f} |"
        )
    batching = report["batching"]
    lines.append(
        f"\none batch-2 forward {batching['batched_s'] * 1e3:.1f} ms vs two batch-1 forwards "
        f"{batching['two_calls_s'] * 1e3:.1f} ms: batching the branches saves {batching['saving']:.0%}"
    )
    factor = report["backward_factor"]
    lines.append(
        f"\nbackward ≈ {factor['factor']:.2f} forwards measured (assumed {factor['assumed']}): forward "
        f"{factor['forward_s'] * 1e3:.1f} ms, forward + backward {factor['forward_backward_s'] * 1e3:.1f} ms"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy", help="toy (default) or a diffusers folder")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of every preset")
    parser.add_argument("--out", type=Path, default=Path("cost.json"))
    parser.add_argument("--flops", action="store_true", help="FLOPs per removal of every method on SD 1.5 and SDXL")
    parser.add_argument("--steps", type=int, default=None, help="with --flops: steps instead of each preset's own")
    args = parser.parse_args(argv)
    apply_thread_default()
    if args.flops:
        from magicremover.experiments.flops import main as flops_main

        return flops_main(args.steps, args.out)
    if args.model == "toy":
        from magicremover.toy import load_toy

        c = load_toy(device="cpu")
    else:
        c = load_pretrained(path=args.model, device="cpu")
    report = {
        "backward_factor": backward_factor(c, max(5, args.repeats)),
        "batching": batching_gain(c, 20),
        "presets": paired_costs(c, args.repeats),
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(table(report))
    return report


if __name__ == "__main__":
    main()
