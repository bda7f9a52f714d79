"""The benchmark's figures (``python -m magicremover.experiments.benchmark``) as the markdown table the docs copy."""

from __future__ import annotations


def table(report: dict) -> str:
    """The figures as a markdown table."""
    rows = ["| figure | ours | authors' code / reference | ratio | target |", "|---|---|---|---|---|"]
    for preset, row in report["calls_per_preset"].items():
        source = {"magicremover": "main.py", "magicremover_coco": "coco_script"}.get(preset)
        authors = report["authors_per_image"][source]["edit_calls"] if source else "–"
        rows.append(f"| edit-stage UNet calls, {preset} | {row['edit_calls']} | {authors} | | |")
    s = report["sweep"]
    rows.append(
        f"| sweep of {s['configs']} configs × {s['images']} images, UNet calls | {s['ours']} | {s['authors_rerun_inversion']} "
        f"(re-inverting per run) / {s['authors_reusing_inversion']} (reusing) | {s['ratio_vs_rerun']:.2f}× / {s['ratio_vs_reusing']:.2f}× | ≥ 3× |"
    )
    o = report["controller_overhead"]
    rows.append(
        f"| seconds per UNet call, guidance off vs diffusers DDIM | {o['ours_s_per_call']['median']:.4f} | "
        f"{o['diffusers_s_per_call']['median']:.4f} | {o['ratio']['median']:.2f}× ({o['ratio']['min']:.2f}–{o['ratio']['max']:.2f}) | ≤ 1.15× |"
    )
    f = report["fast_inversion"]
    rows.append(
        f"| inversion calls, negative-prompt vs null-text | {f['negative_prompt']['calls']:.0f} | {f['null_text']['calls']:.0f} | "
        f"{f['call_ratio']:.1f}× fewer | ≥ 10× |"
    )
    rows.append(
        f"| reconstruction PSNR, negative-prompt vs null-text | {f['negative_prompt']['psnr']:.2f} dB | {f['null_text']['psnr']:.2f} dB | "
        f"{f['psnr_gap_db']:.2f} dB gap | ≤ 1 dB |"
    )
    per_inversion = report.get("calls_per_inversion")  # only with --all
    for name, row in (per_inversion or {}).items():
        if name != "fast_ratio":
            rows.append(
                f"| UNet calls (forward-equivalents) per image, {name} ({row['steps']} steps) | "
                f"{row['calls_per_image']:.0f} ({row['forward_equivalents_per_image']:.0f}) | | | |"
            )
    if per_inversion:
        rows.append(
            f"| UNet calls per image, magicremover_fast vs the released code | "
            f"{per_inversion['magicremover_fast']['calls_per_image']:.0f} | "
            f"{per_inversion['null-text (released code)']['calls_per_image']:.0f} | "
            f"{per_inversion['fast_ratio']:.1f}× fewer | ≥ 4× (10× sought) |"
        )
    b = report["cache_bytes_per_pair_sd15"]
    rows.append(
        f"| cache bytes per (image, prompt), SD-1.5 shapes: null-text / negative-prompt / Direct Inversion | "
        f"{b['null_text'] / 1e6:.2f} / {b['negative_prompt'] / 1e6:.2f} / {b['direct_inversion'] / 1e6:.2f} MB | "
        f"{b['v2_every_entry'] / 1e6:.2f} MB (every entry before) | {b['v2_every_entry'] / b['null_text']:.1f}× smaller | |"
    )
    if "guided_step_memory_512" in report:
        m = report["guided_step_memory_512"]
        rows.append(
            f"| peak memory of one 512² guided step (GB, above the loaded model) | {m['ours']['peak_rss_gb'] - m['ours']['rss_before_step_gb']:.2f} | "
            f"{m['reference']['peak_rss_gb'] - m['reference']['rss_before_step_gb']:.2f} | {m['step_memory_ratio']:.2f} | ≤ 1/3 |"
        )
    return "\n".join(rows)
