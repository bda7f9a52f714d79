"""W&B tracking: one offline run per job with summary metrics and the image table; a failing W&B loses nothing."""

import json
from pathlib import Path

import pytest
import wandb
from hydra import compose, initialize_config_dir
from wandb_records import records

from magicremover.errors import ModelLoadError
from magicremover.experiments import evaluate as ev
from magicremover.experiments._cli import find_user_error

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(
            "evaluate",
            overrides=[
                f"out_dir={tmp_path / 'run'}",
                f"cache_dir={tmp_path / 'cache'}",
                "device=cpu",
                "data.size=2",
                "num_inference_steps=4",
                "inversion=negative_prompt",
                *overrides,
            ],
        )


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")


def test_an_offline_run_logs_config_summary_and_image_table(tmp_path, wandb_home):
    cfg = _config(tmp_path, "logger=wandb", "logger.mode=offline", "logger.images=1")
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    (run,) = (Path(cfg.out_dir) / "wandb").glob("offline-run-*")
    (table,) = run.glob("files/media/table/samples_*.table.json")
    content = json.loads(table.read_text())
    assert content["columns"] == ["sample_id", "input", "mask", "attention", "output"] and len(content["data"]) == 1
    log = next(run.glob("*.wandb"))
    records(log)  # waits for wandb-core to finish writing the file
    assert b"psnr_in" in log.read_bytes() and "psnr_in" in metrics


def test_a_failing_wandb_never_loses_results(tmp_path, wandb_home, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise ConnectionError("api.wandb.ai unreachable")

    monkeypatch.setattr(wandb, "init", broken)
    cfg = _config(tmp_path, "logger=wandb")
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    assert json.loads((Path(cfg.out_dir) / "metrics.json").read_text()) == metrics and metrics["ok"] == 2
    assert "W&B unavailable (api.wandb.ai unreachable)" in caplog.text


def test_missing_metric_weights_fail_before_any_sample_runs(tmp_path):
    cfg = _config(tmp_path, "metrics=standard", f"weights.inception={tmp_path / 'inception.pth'}")
    with pytest.raises(Exception) as info:
        ev.evaluate(cfg, Path(cfg.out_dir))
    assert isinstance(find_user_error(info.value), ModelLoadError) and "weights.inception" in str(
        find_user_error(info.value)
    )
    assert not (Path(cfg.out_dir) / "manifest.jsonl").exists()
