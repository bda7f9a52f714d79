"""The cost frontier's table: rows merged across the halves of one scene set, paired bootstrap intervals."""

import json

import numpy as np
import pytest

from magicremover.experiments.toy_report import frontier, paired_interval


def test_the_paired_interval_brackets_the_mean_as_the_normal_approximation_does():
    assert paired_interval([0.3] * 20) == pytest.approx((0.3, 0.3, 0.3))
    values = np.random.default_rng(4).normal(0.2, 1.0, 400)
    mean, low, high = paired_interval(list(values))
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))  # independent: the normal approximation
    assert mean == pytest.approx(values.mean()) and low < mean < high
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)


def _report(path, seeds, rows):
    vae = [{"seed": s, "psnr_out_vs_input": 30.0, "psnr_in_vs_gt": 0.0, "psnr_in_input_vs_gt": 0.0} for s in seeds]
    per_scene = {"vae_reconstruction": vae}
    for name, (gain, gap, calls, fe, seconds) in rows.items():
        per_scene[name] = [
            {
                "seed": s,
                "psnr_in_vs_gt": 10 + gain(s),
                "psnr_in_input_vs_gt": 10.0,
                "psnr_out_vs_input": 30.0 - gap(s),
                "unet_calls": calls,
                "forward_equivalents": fe,
                "seconds": seconds(s),
            }
            for s in seeds
        ]
    path.write_text(json.dumps({"removal_per_scene": per_scene}))
    return path


def test_the_frontier_merges_halves_and_pairs_each_row_with_the_default_scene_by_scene(tmp_path):
    rows = {
        "null_text 50 steps": (lambda s: s % 3, lambda s: 1.0, 742, 2213, lambda s: 36.0 if s == 0 else 30.0),
        "negative_prompt 50 steps w/o Co": (lambda s: s % 3 - 0.5, lambda s: 0.75, 143, 266, lambda s: 5.0),
    }
    halves = [_report(tmp_path / f"{i}.json", seeds, rows) for i, seeds in enumerate((range(0, 10), range(10, 20)))]
    table = frontier(halves, tmp_path).splitlines()
    fast = next(line for line in table if line.startswith("| negative_prompt"))
    assert "| 143 | 5.2 | 266 | 8.3 |" in fast and fast.endswith("| 20 |")  # both halves, one row
    assert "| -0.50 [-0.50, -0.50] | -0.25 [-0.25, -0.25] |" in fast  # every scene 0.5 dB less inside, 0.25 less gap
    assert "| 6.0 (6.0–7.2) | 20 |" in fast  # the default's seconds over the row's, scene by scene
    assert (tmp_path / "frontier.png").is_file()
    # Against another row: the fast preset is then the reference, the default 0.5 dB ahead inside and 0.25 dB behind
    # outside, the "× fewer" columns still against the default.
    table = frontier(halves, tmp_path, reference_row="negative_prompt 50 steps w/o Co").splitlines()
    assert "Δ inside vs negative_prompt 50 steps w/o Co [95 % CI]" in table[0]
    default = next(line for line in table if line.startswith("| null_text"))
    assert "| 742 | 1.0 | 2213 | 1.0 |" in default and "| +0.50 [+0.50, +0.50] | +0.25 [+0.25, +0.25] |" in default
    with pytest.raises(SystemExit, match="--reference 'fast' is not a row of these reports: negative_prompt 50"):
        frontier(halves, tmp_path, reference_row="fast")


def test_a_reports_default_preset_row_is_the_frontiers_default(tmp_path):
    rows = {
        "magicremover": (lambda s: 1.0, lambda s: 1.0, 730, 2177, lambda s: 30.0),
        "attentive_eraser": (lambda s: 0.0, lambda s: 1.5, 40, 80, lambda s: 1.5),
    }
    table = frontier([_report(tmp_path / "report.json", range(4), rows)], tmp_path).splitlines()
    default = next(line for line in table if line.startswith("| null_text 50 steps (default) |"))
    eraser = next(line for line in table if line.startswith("| attentive_eraser |"))
    assert "| 730 | 1.0 | 2177 | 1.0 |" in default and "| 40 | 18.2 | 80 | 27.2 |" in eraser
    assert "| -1.00 [-1.00, -1.00] | +0.50 [+0.50, +0.50] | 20.0 (20.0–20.0) | 4 |" in eraser


def test_mask_based_removers_get_the_objects_mask_in_the_removal_table(tiny, tmp_path):
    from magicremover.experiments.toy_report import removal_table
    from magicremover.toy.quality import held_out_cases

    variants = {
        "attentive_eraser": ("attentive_eraser", ["num_inference_steps=4"]),
        "ledits_pp": ("ledits_pp", ["method.num_inversion_steps=4"]),
    }
    means, per_scene = removal_table(tiny, held_out_cases(1), tmp_path / "cache", variants)
    assert per_scene["attentive_eraser"][0]["unet_calls"] == 3  # int(4 × 0.8) SIP steps, one two-half call each
    assert per_scene["ledits_pp"][0]["unet_calls"] > 4 and set(means) == {"vae_reconstruction", *variants}
    assert all(rows[0]["seconds"] > 0 for name, rows in per_scene.items() if name != "vae_reconstruction")
