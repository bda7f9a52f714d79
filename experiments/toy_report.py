"""Measure the toy model's quality gates and removal figures; print them and write ``toy_report.json``.

    python -m magicremover.experiments.toy_report                       # the embedded toy model, 50 held-out scenes
    python -m magicremover.experiments.toy_report --model DIR --scenes 20 --out report/
    python -m magicremover.experiments.toy_report --scenes 25 --start 25 --skip vae samples attention inversion subsets   # a second half
    python -m magicremover.experiments.toy_report --skip vae samples attention inversion --variants magicremover p2p_reweight

The figures go into the model card (``magicremover/assets/toy/README.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from magicremover.config import build_remover, compose_config
from magicremover.experiments._cli import apply_thread_default
from magicremover.models import load_pretrained
from magicremover.toy import toy_model_dir
from magicremover.toy.quality import (
    HELD_OUT_SEED,
    attention_iou,
    held_out_cases,
    inversion_gap,
    removal_metrics,
    sample_scores,
    to_uint8,
    vae_psnr,
    vae_reconstruction,
)
from magicremover.toy.scenes import render_scene

VARIANTS = {  # report row → (conf/method preset, overrides)
    "magicremover": ("magicremover", []),
    "w/o relax_constraints": ("magicremover", ["experiment=ablation_no_relax"]),
    "w/o reweight_perturbation": ("magicremover", ["experiment=ablation_no_reweight"]),
    "w/o self_attention_guidance": ("magicremover", ["experiment=ablation_no_sag"]),
    "w/o classifier_optimization": ("magicremover", ["experiment=ablation_no_classifier_opt"]),
    "no guidance (reconstruction)": ("magicremover", ["method.attention_guidance=false"]),
    "magicremover_paper": ("magicremover_paper", []),
    "p2p_reweight": ("p2p_reweight", []),
}
# The cost frontier: the default method per inversion × DDIM steps × classifier optimisation on/off.
INVERSIONS = {  # row label → overrides; Direct Inversion: plain DDIM inversion + the trajectory's per-step corrections
    "null_text": ["inversion=null_text"],
    "negative_prompt": ["inversion=negative_prompt"],
    "direct (reconstruction)": ["inversion=ddim", "method.trajectory_correction=reconstruction"],
    "direct (both)": ["inversion=ddim", "method.trajectory_correction=both"],
}
FRONTIER = {
    f"{label} {steps} steps{'' if co else ' w/o Co'}": (
        "magicremover",
        [*overrides, f"num_inference_steps={steps}", *([] if co else ["experiment=ablation_no_classifier_opt"])],
    )
    for label, overrides in INVERSIONS.items()
    for steps in (50, 35, 25, 20, 15)
    for co in (True, False)
}
KV_FROM_INVERSION = {  # Eq. 10's K/V from the inversion pass (no reconstruction branch), beside the same
    # preset whose reconstruction branch is put back on the trajectory (the one change between them is the K/V source)
    "negative_prompt 50 steps w/o Co, reconstruction on the trajectory": (
        "magicremover_fast",
        ["method.trajectory_correction=reconstruction"],
    ),
    "negative_prompt 50 steps w/o Co, K/V from inversion": (
        "magicremover_fast",
        ["method.trajectory_correction=reconstruction", "method.kv_source=inversion"],
    ),
}
REMOVERS = {  # the removers after MagicRemover; mask-based ones get the object's mask with its shadow
    "attentive_eraser": ("attentive_eraser", []),
    "attentive_eraser_dip": ("attentive_eraser_dip", []),
    "ledits_pp": ("ledits_pp", []),
}
ALL_VARIANTS = VARIANTS | FRONTIER | KV_FROM_INVERSION | REMOVERS


def removal_table(components, cases, cache_dir, variants=VARIANTS) -> tuple[dict, dict]:
    """Removal metrics per method variant over ``cases`` (inversions shared through the cache), after the reference
    row: the VAE's own reconstruction of the input, the best any latent method can keep outside the mask.

    Returns the mean per variant and metric, and every scene's row per variant (a mean of dB hides whether a figure
    comes from a few failures or from all scenes). A method's row also holds its UNet calls, forward-equivalents and
    wall seconds per image, an inversion served by the cache charged what it cost when it was computed.
    """
    reference = [removal_metrics(case, vae_reconstruction(components, case.scene.image)) for case in cases]
    per_scene = {"vae_reconstruction": reference}
    inversion_cost = {}  # (inversion, steps, scene) → (calls, forward-equivalents, seconds) of a fresh inversion; a
    # cached one is charged the same
    removers = {}
    for name, (preset, overrides) in variants.items():
        cfg = compose_config("remove", [f"method={preset}", f"cache_dir={cache_dir}", "device=cpu", *overrides])
        removers[name] = (cfg, build_remover(cfg, components))
        per_scene[name] = []
    # Scene by scene, every variant in turn: the rows of one scene run back to back under one machine load, so their
    # wall times pair (the frontier's time ratio) even when the load drifts over the report.
    for case in cases:
        for name, (cfg, remover) in removers.items():
            sample = case.sample
            if "mask" in getattr(remover, "requires", ()):
                sample = dataclasses.replace(
                    sample, mask=Image.fromarray(np.uint8(np.round(case.obj.shadow_mask * 255)))
                )
            result = remover(sample)
            key = (cfg.inversion.method, cfg.num_inference_steps, case.scene.seed)
            calls = {stage: (count.calls, count.forward_equivalents) for stage, count in result.calls.items()}
            fresh = [
                (*calls.pop(stage, (0, 0)), result.seconds.get(stage, 0.0)) for stage in ("inversion", "null_text")
            ]
            if not result.extras.get("inversion_from_cache"):
                inversion_cost[key] = tuple(map(sum, zip(*fresh)))
            row = removal_metrics(case, to_uint8(result.image))
            inverted = inversion_cost.get(key, (float("nan"),) * 3)
            row["unet_calls"] = sum(c for c, _ in calls.values()) + inverted[0]
            row["forward_equivalents"] = sum(f for _, f in calls.values()) + inverted[1]
            row["seconds"] = result.seconds["total"] - (fresh[0][2] + fresh[1][2]) + inverted[2]
            per_scene[name].append(row)
    means = {name: {key: float(np.mean([r[key] for r in rows])) for key in rows[0]} for name, rows in per_scene.items()}
    seeds = [case.scene.seed for case in cases]
    return means, {name: [{"seed": seed, **row} for seed, row in zip(seeds, rows)] for name, rows in per_scene.items()}


def frontier(reports: list[Path], out: Path, reference_row: str | None = None) -> str:
    """Collect removal rows from several ``toy_report.json`` files (same held-out scenes) into the cost frontier:
    a markdown table (UNet calls and forward-equivalents per image, wall time, inside gain and outside gap to the
    VAE, means and medians) and a figure ``frontier.png`` of both against the calls. Each row's paired differences
    are taken scene by scene against ``reference_row`` (default: the released code's default, null-text at 50
    steps); the "× fewer" and "× less time" columns are always against that default (742 calls on the toy model
    where a report has no counts). The time ratio is the median over scenes of the default's seconds over the row's,
    both measured in the same process (reports before the timing column show "–"). Returns the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {}
    for path in reports:
        report = json.loads(Path(path).read_text())
        if "removal_per_scene" not in report:  # a glass/shadow-only report
            continue
        vae = report["removal_per_scene"]["vae_reconstruction"]
        for name, scenes in report["removal_per_scene"].items():
            if name == "magicremover":  # the default preset's row (VARIANTS): null-text at 50 steps
                name = "null_text 50 steps (default)"
            elif name == "vae_reconstruction" or "unet_calls" not in scenes[0]:  # the model card's report has no
                continue  # costs: only its default row is read
            row = rows.setdefault(name, {"gain": {}, "gap": {}, "calls": {}, "fe": {}, "seconds": {}})
            for r, v in zip(scenes, vae):  # keyed by seed: halves of one set merge, a repeated scene counts once
                row["gain"][r["seed"]] = r["psnr_in_vs_gt"] - r["psnr_in_input_vs_gt"]
                row["gap"][r["seed"]] = v["psnr_out_vs_input"] - r["psnr_out_vs_input"]
                row["calls"][r["seed"]] = r.get("unet_calls", REFERENCE_CALLS)  # measured: 742 by the counters
                row["fe"][r["seed"]] = r.get("forward_equivalents", float("nan"))  # reports before the cost model
                if "seconds" in r:
                    row["seconds"][r["seed"]] = r["seconds"]
    for row in rows.values():
        row["n"] = len(row["gain"])
        row["calls"], row["fe"] = (float(np.mean(list(row[key].values()))) for key in ("calls", "fe"))
    default = rows.get("null_text 50 steps") or rows.get("null_text 50 steps (default)")
    if reference_row is not None and reference_row not in rows:
        raise SystemExit(f"--reference {reference_row!r} is not a row of these reports: {', '.join(sorted(rows))}")
    reference, versus = (rows[reference_row], reference_row) if reference_row else (default, "default")
    lines = [
        "| configuration | UNet calls / image | × fewer | forward-equivalents / image | × fewer | inside gain (dB), "
        f"mean / median | outside gap to VAE (dB), mean / median | Δ inside vs {versus} [95 % CI] | Δ outside gap "
        f"vs {versus} [95 % CI] | × less time, paired median (range) | scenes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    reference_calls = default["calls"] if default else REFERENCE_CALLS
    reference_fe = default["fe"] if default else float("nan")
    for name, row in sorted(rows.items(), key=lambda item: -item[1]["calls"]):
        gain, gap = list(row["gain"].values()), list(row["gap"].values())
        paired = []
        for key in ("gain", "gap"):
            shared = sorted(set(row[key]) & set(reference[key])) if reference else []
            if not shared or row is reference:
                paired.append("–")
                continue
            mean, low, high = paired_interval([row[key][s] - reference[key][s] for s in shared])
            paired.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]")
        fe, fewer_fe = _figure(row["fe"], ".0f"), _figure(reference_fe / row["fe"], ".1f")
        timed = sorted(set(row["seconds"]) & set(default["seconds"])) if default else []
        ratios = [default["seconds"][s] / row["seconds"][s] for s in timed]
        faster = f"{np.median(ratios):.1f} ({min(ratios):.1f}–{max(ratios):.1f})" if ratios else "–"
        lines.append(
            f"| {name} | {row['calls']:.0f} | {reference_calls / row['calls']:.1f} | {fe} | {fewer_fe} | "
            f"{np.mean(gain):.2f} / "
            f"{np.median(gain):.2f} | {np.mean(gap):.2f} / {np.median(gap):.2f} | {paired[0]} | {paired[1]} | "
            f"{faster} | {row['n']} |"
        )
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, key, label in ((axes[0], "gain", "inside gain (dB) ↑"), (axes[1], "gap", "outside gap to VAE (dB) ↓")):
        for name, row in rows.items():
            family = name.split(" ")[0]
            marker = "o" if "w/o Co" not in name else "x"
            colour = {"null_text": "C0", "negative_prompt": "C1", "direct": "C2"}.get(family, "C3")
            value = np.mean(list(row[key].values()))
            ax.scatter(row["calls"], value, marker=marker, color=colour)
            short = name.replace("negative_prompt", "NP").replace("null_text", "NT").replace(" steps", "")
            ax.annotate(
                short.replace("direct ", "DI ").replace(" (default)", ""),
                (row["calls"], value),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_xlabel("UNet calls per image (log)")
        ax.set_title(label, fontsize=9)
    handles = [plt.Line2D([], [], color=c, marker="o", ls="") for c in ("C0", "C1", "C2")]
    axes[0].legend(handles, ["null-text", "negative-prompt", "Direct Inversion"], fontsize=7)
    scenes = max(row["n"] for row in rows.values())
    fig.suptitle(f"Cost frontier on {scenes} held-out toy scenes (× = without classifier optimisation)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "frontier.png", dpi=120)
    table = "\n".join(lines)
    (out / "frontier.md").write_text(table + "\n")
    return table


def _figure(value: float, spec: str) -> str:
    """``value`` formatted, or "–" where a report before the cost model has no forward-equivalents."""
    return format(value, spec) if np.isfinite(value) else "–"


REFERENCE_CALLS = 742  # the released code's pipeline on the toy model (null-text, 50 steps), counted by the counters
FRESH_SEED = 20_000_000  # a held-out range drawn after every preset was chosen: claims of "within" are made on it


def paired_interval(differences: list[float], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The mean of paired per-scene ``differences`` and its 95 % percentile-bootstrap interval (scenes resampled with
    replacement, ``resamples`` times, seeded)."""
    values = np.asarray(differences, dtype=np.float64)
    draws = np.random.default_rng(seed).integers(0, len(values), (resamples, len(values)))
    means = values[draws].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(toy_model_dir()), help="toy model folder")
    parser.add_argument("--scenes", type=int, default=50, help="held-out scenes per figure")
    parser.add_argument(
        "--start", type=int, default=0, help="skip this many held-out scenes (split a long report across processes)"
    )
    parser.add_argument(
        "--first-seed",
        type=int,
        default=HELD_OUT_SEED,
        help=f"first scene seed (default {HELD_OUT_SEED}, the model card's; {FRESH_SEED}: the set no preset was chosen on)",
    )
    parser.add_argument("--out", default="toy_report", help="output folder")
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["vae", "samples", "attention", "inversion", "removal", "subsets"]
    )
    parser.add_argument(
        "--variants", nargs="*", default=list(VARIANTS), choices=list(ALL_VARIANTS), help="removal rows to measure"
    )
    parser.add_argument("--collect", nargs="*", help="toy_report.json files: write the frontier table and figure only")
    parser.add_argument(
        "--reference",
        help="with --collect: the row the paired differences are taken against "
        "(default: null-text at 50 steps, the released code's default)",
    )
    parser.add_argument(
        "--subset-variants", nargs="*", default=["magicremover"], choices=list(ALL_VARIANTS), help="glass/shadow rows"
    )
    args = parser.parse_args()
    if args.reference and not args.collect:
        parser.error("--reference names a row of the reports --collect reads: add --collect FILE ...")
    apply_thread_default()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.collect:
        print(frontier([Path(p) for p in args.collect], out, args.reference))
        return
    torch.manual_seed(0)
    c = load_pretrained(path=args.model, device="cpu")
    scenes = [render_scene(args.first_seed + args.start + i) for i in range(args.scenes)]
    cases = held_out_cases(args.scenes, args.first_seed + args.start)
    report: dict = {"scenes": args.scenes, "start": args.start, "first_seed": args.first_seed, "model": args.model}
    timer = time.perf_counter()
    if "vae" not in args.skip:
        report["vae_psnr"] = vae_psnr(c, scenes)
    if "samples" not in args.skip:
        scores = sample_scores(c, scenes)
        images = scores.pop("images")
        Image.fromarray(
            np.concatenate([np.concatenate(images[i : i + 10], 1) for i in range(0, min(len(images), 50), 10)], 0)
        ).save(out / "samples.png")
        report["samples"] = scores
    if "attention" not in args.skip:
        report["attention"] = attention_iou(c, cases)
    if "inversion" not in args.skip:
        report["inversion"] = inversion_gap(c, scenes[: max(10, args.scenes // 5)])
    if "removal" not in args.skip:
        variants = {name: ALL_VARIANTS[name] for name in args.variants}
        report["removal"], report["removal_per_scene"] = removal_table(c, cases, out / "cache", variants)
    if "subsets" not in args.skip:
        subset_variants = {name: ALL_VARIANTS[name] for name in args.subset_variants}
        for kind in ("glass", "shadow"):
            subset = held_out_cases(max(5, args.scenes // 5), kind=kind)
            means, per_scene = removal_table(c, subset, out / "cache", subset_variants)
            report[f"removal_{kind}"], report[f"removal_{kind}_per_scene"] = means, per_scene
    report["seconds"] = time.perf_counter() - timer
    (out / "toy_report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
