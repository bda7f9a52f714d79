"""The research loop: an Optuna search returning the optimised metric, W&B per-sample logging with groups and
artifacts (read back from the offline run file), progress lines in logs without a terminal, and comparison grids."""

from pathlib import Path

import pytest
import yaml
from commands import evaluate
from hydra import compose, initialize_config_dir
from wandb_records import history, of_type

from magicremover.errors import ConfigError
from magicremover.eval.report import grid_rows, row_labels
from magicremover.experiments import evaluate as ev

ROOT = Path(__file__).resolve().parents[1]
FAST = ["inversion=negative_prompt", "num_inference_steps=10", "device=cpu"]


@pytest.mark.slow  # 32 s: a real Optuna study
def test_an_optuna_search_returns_the_metric_and_keeps_the_best_trial(tmp_path):
    sweep = tmp_path / "search"
    evaluate(
        tmp_path,
        "-m",
        "hparams_search=toy_optuna",
        "hydra.sweeper.n_trials=3",
        "data.size=2",
        *FAST,
        f"hydra.sweep.dir={sweep}",
    )
    trials = {}
    for run in sorted(p for p in sweep.iterdir() if p.is_dir()):
        config = yaml.safe_load((run / "config.yaml").read_text())
        trials[run.name] = (yaml.safe_load((run / "metrics.json").read_text())["psnr_in"], config["method"]["lambda_"])
    assert len(trials) == 3
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    best, worst = max(trials.values()), min(trials.values())
    assert result["best_value"] == pytest.approx(best[0]) and best[0] > worst[0]
    assert result["best_params"]["method.lambda_"] == pytest.approx(best[1]) != pytest.approx(worst[1])


def test_objective_names_the_metrics_it_can_return():
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("evaluate", overrides=["optimized_metric=psnr_inside"])
    with pytest.raises(
        ConfigError, match="optimized_metric=psnr_inside is not a metric of this run; use one of ok, psnr_in"
    ):
        ev.objective(cfg, {"ok": 2, "psnr_in": 20.0, "fid_settings": {"backend": "x"}})
    assert ev.objective(cfg, None) != ev.objective(cfg, None)  # NaN: a shard's trial fails, the sweep goes on


def test_an_offline_wandb_run_holds_a_step_per_sample_the_group_and_the_artifact(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    out = tmp_path / "fig6" / "2026-11-30_10-00-00" / "default"
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "evaluate",
            overrides=[
                f"out_dir={out}",
                f"cache_dir={tmp_path / 'cache'}",
                "data.size=3",
                "logger=wandb",
                "logger.mode=offline",
                *FAST,
            ],
        )
    metrics = ev.evaluate(cfg, out)
    (file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    steps = [row for row in history(file) if "sample/ok" in row]
    assert [row["_step"] for row in steps] == [0, 1, 2] and all(row["sample/ok"] == 1 for row in steps)
    assert all(row["sample/unet_calls"] > 0 and "sample/psnr_in" in row for row in steps)
    assert sum(row["sample/psnr_in"] for row in steps) / 3 == pytest.approx(metrics["psnr_in"])
    (run,) = of_type(file, "run")
    assert run.run_group == "fig6/2026-11-30_10-00-00"
    (artifact,) = [a for a in of_type(file, "artifact") if a.type == "evaluation"]
    assert {entry.path for entry in artifact.manifest.contents} == {"metrics.json", "config.yaml", "manifest.jsonl"}
    assert any(a.type == "run_table" for a in of_type(file, "artifact"))  # the image table


@pytest.mark.slow  # 24 s: a three-sample evaluation for its log lines
def test_progress_lines_with_an_eta_in_a_log_without_a_terminal(tmp_path):
    done = evaluate(tmp_path, "data.size=3", "progress_every=0", *FAST, f"out_dir={tmp_path / 'run'}")
    log = done.stdout + done.stderr
    lines = [line for line in log.splitlines() if " - samples " in line]
    assert len(lines) == 3 and "samples 1/3 (33%)" in lines[0] and "ETA" in lines[0]
    assert "samples 3/3 (100%)" in lines[2] and "done in" in lines[2]
    assert "samples:" not in log and "denoising:" not in log  # no tqdm bar in a log


@pytest.mark.slow  # 44 s: a two-method sweep
def test_fig6_writes_a_grid_with_the_papers_columns(tmp_path):
    sweep = tmp_path / "fig6"
    evaluate(tmp_path, "-m", "+artefact=fig6", "data=toy", "data.size=2", *FAST, f"hydra.sweep.dir={sweep}")
    assert (sweep / "fig6_grid.png").is_file()
    spec = {
        "rows": {
            "ablation_no_relax": "w/o Re",
            "ablation_no_reweight": "w/o Rp",
            "ablation_no_sag": "w/o Sg",
            "default": "full",
        }
    }
    runs = {name: {} for name in spec["rows"]}
    rows = grid_rows(sweep, row_labels(sweep, runs, spec), samples=2)
    assert len(rows) == 2 and list(rows[0]) == ["sample_id", "input", "attention", "w/o Re", "w/o Rp", "w/o Sg", "full"]
    assert rows[0]["sample_id"] < rows[1]["sample_id"]  # the same samples in every column, in name order
    assert {image.size for image in list(rows[0].values())[1:]} == {(64, 64)}


def test_an_artefact_report_run_holds_the_grid_table_and_the_rendered_files(tmp_path, monkeypatch):
    from PIL import Image

    from magicremover.eval.tracking import WandbTracker

    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    sweep = tmp_path / "fig6" / "2026-11-30_10-00-00"
    sweep.mkdir(parents=True)
    (sweep / "fig6.md").write_text("| table |")
    tile = Image.new("RGB", (8, 8), "red")
    rows = [
        {"sample_id": "a", "input": tile, "attention": tile, "full": tile},
        {"sample_id": "b", "input": tile, "full": tile},
    ]
    WandbTracker(mode="offline").log_report(sweep, "fig6", {"md": sweep / "fig6.md"}, rows)
    (file,) = sweep.glob("report/wandb/offline-run-*/run-*.wandb")
    (run,) = of_type(file, "run")
    assert (run.job_type, run.run_group, list(run.tags)) == ("report", "fig6/2026-11-30_10-00-00", ["fig6"])
    kinds = {a.type: a for a in of_type(file, "artifact")}
    assert [entry.path for entry in kinds["report"].manifest.contents] == ["fig6.md"] and "run_table" in kinds
