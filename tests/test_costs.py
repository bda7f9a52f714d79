import json
import subprocess
import sys

import pytest
import torch

from magicremover.authors_cost import authors_cost


def test_authors_counts_reproduce_the_spec():
    readme, coco = authors_cost(), authors_cost(t_ratio=0.9, coco_script=True)
    assert (readme.null_text_calls, readme.null_text_backward, readme.edit_calls, readme.edit_backward) == (
        650,
        500,
        110,
        58,
    )
    assert (coco.edit_calls, coco.edit_backward, coco.calls) == (166, 64, 816)


def test_authors_counts_for_a_small_schedule_by_hand():
    # N = 10: timesteps 901, 801, …, 1; t_ratio 0.85 → start = 10 − int(8.5) = 2, edited t ≤ 701 (8 steps)
    # edit: 2 replay + 1 M₀ + 8 reconstruction + 8 edit (7 guided, t > 11; t = 1 plain)
    #       + 3 extra (701, 601, 501 > 500) = 22 calls; backward 7 + 3 = 10
    # null-text: 10 inversion + 10 × (1 + k + 1) with k = 3 → 10 + 50 = 60; backward 10 × 3 = 30
    cost = authors_cost(n_steps=10, inner_steps=3)
    assert (cost.edit_calls, cost.edit_backward, cost.null_text_calls, cost.null_text_backward) == (22, 10, 60, 30)


def test_our_counters_match_the_same_hand_count(tiny, example_image):
    from magicremover.inversion import InversionConfig
    from magicremover.method import MagicRemover
    from magicremover.types import RemovalSample

    config = InversionConfig(num_inference_steps=10, inner_steps=3, early_stop=0.0, early_stop_growth=0.0)
    result = MagicRemover(tiny, config)(RemovalSample(example_image, "a photo of a red circle", "circle"))
    ours = {stage: (n.calls, n.backward) for stage, n in result.calls.items()}
    cost = authors_cost(n_steps=10, inner_steps=3)
    assert ours["inversion"][0] + ours["null_text"][0] == cost.null_text_calls
    assert ours["null_text"][1] == cost.null_text_backward
    edit = {k: v for k, v in ours.items() if k not in ("inversion", "null_text")}
    assert (
        sum(c for c, _ in edit.values()) == cost.edit_calls and sum(b for _, b in edit.values()) == cost.edit_backward
    )


@pytest.mark.slow
def test_benchmark_command_runs_offline(tmp_path):
    out = tmp_path / "benchmark.json"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "magicremover.experiments.benchmark",
            "--repeats",
            "1",
            "--images",
            "1",
            "--out",
            str(out),
        ],
        check=True,
        timeout=600,
    )
    report = json.loads(out.read_text())
    assert report["calls_per_preset"]["magicremover"]["edit_calls"] == 110
    assert report["fast_inversion"]["call_ratio"] == 13.0


def test_the_fast_preset_folds_its_cfg_halves_to_the_same_image_at_the_hand_counted_cost(toy, example_image):
    from magicremover.config import build_remover, compose_config
    from magicremover.types import RemovalSample

    sample = RemovalSample(example_image, "a photo of a red circle on horizontal stripes", "circle")
    results = {}
    for fold in (True, False):
        cfg = compose_config("remove", ["method=magicremover_fast", "cache_dir=null", f"method.fold_cfg={fold}"])
        results[fold] = build_remover(cfg, components=toy)(sample)
    assert (results[True].image - results[False].image).abs().max() < 1e-5  # the same output to float noise
    # By hand, 50 steps, negative-prompt inversion (b1), t_ratio 0.85: replay 8 steps, 42 edited, 41 guided (t > 11),
    # no classifier optimisation, gradient checkpointing (each backward recomputes its forward).
    folded = {stage: n.forward_equivalents for stage, n in results[True].calls.items()}
    assert folded == {"inversion": 50, "attention_mask": 1, "replay": 8, "reconstruction": 42, "edit": 42 + 3 * 41}
    batched = {stage: n.forward_equivalents for stage, n in results[False].calls.items()}
    assert batched == {"inversion": 50, "attention_mask": 1, "replay": 16, "reconstruction": 84, "edit": 84 + 6 * 41}
    assert sum(folded.values()) == 266 and sum(batched.values()) == 481  # 45 % less UNet work


@pytest.mark.slow  # 47 s: the command's paired rounds; the counts it prints are pinned by the tests above
def test_the_cost_command_counts_forward_equivalents_and_pairs_wall_time(tiny):
    from magicremover.experiments import cost

    factor = cost.backward_factor(tiny, repeats=3)
    assert factor["forward_backward_s"] > factor["forward_s"] > 0 and factor["assumed"] == 2
    report = cost.paired_costs(tiny, repeats=1)
    released, fast, unfolded, kv = (report[name] for name in cost.PRESETS)
    assert released["fewer_forward_equivalents"] == released["less_wall_time"] == 1.0
    for row in report.values():  # forward-equivalents by their definition, from the row's own counts
        assert row["forward_equivalents"] >= row["samples"] + 2 * row["backward_samples"]
    assert fast["calls"] == unfolded["calls"] and fast["samples"] < unfolded["samples"]  # folding halves, not calls
    # K/V from the inversion: no replay (8) or reconstruction (42) call, each of them one batch-1 forward.
    assert fast["calls"] - kv["calls"] == 50 and kv["forward_equivalents"] == fast["forward_equivalents"] - 50
    batching = cost.batching_gain(tiny, repeats=3)
    assert batching["batched_s"] > 0 and batching["saving"] == 1 - batching["batched_s"] / batching["two_calls_s"]
    table = cost.table({"presets": report, "backward_factor": factor, "batching": batching})
    assert "| magicremover_fast |" in table and "batching the branches saves" in table


def test_the_device_benchmark_runs_each_preset_at_tiny_size_on_the_cpu(tiny, tmp_path):
    from magicremover.config import build_remover, compose_config
    from magicremover.experiments.device_cost import device_cost, device_table
    from magicremover.toy.quality import held_out_cases

    report = device_cost("cpu", "tiny", ["fp32"], repeats=1, presets=("magicremover_fast",))
    row = report["rows"]["magicremover_fast fp32"]
    # The same preset run directly on the same tiny weights costs the same forward-equivalents and calls.
    direct = build_remover(compose_config("remove", ["method=magicremover_fast", "cache_dir=null"]), tiny)
    counts = direct(held_out_cases(1)[0].sample).calls.values()
    assert row["forward_equivalents"] == sum(n.forward_equivalents for n in counts) == 266
    assert row["calls"] == sum(n.calls for n in counts) and row["seconds"]["n"] == 1 and row["peak_memory_gb"] > 0
    assert report["resolution"] == 64 and "| magicremover_fast fp32 | " in device_table(report)


def test_the_device_benchmark_names_the_fix_without_a_gpu():
    from magicremover.experiments.device_cost import device_cost

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    with pytest.raises(SystemExit, match="no CUDA device is visible to torch here; run it on a GPU machine"):
        device_cost("cuda", "sd15", ["fp16"], repeats=1)


@pytest.mark.slow
def test_the_sd15_size_model_has_sd15s_parameter_counts():
    from magicremover.experiments.device_cost import build_sd15_size

    c = build_sd15_size("cpu", torch.float32)
    count = {name: sum(p.numel() for p in getattr(c, name).parameters()) for name in ("unet", "vae", "text_encoder")}
    # runwayml/stable-diffusion-v1-5's published components: 859.52 M, 83.65 M and 123.06 M parameters.
    assert count == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert c.resolution == 512 and len(c.tokenizer) == 49408
