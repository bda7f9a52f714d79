import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from magicremover.errors import ConfigError, PromptError
from magicremover.eval.data import ToyDataset, shard
from magicremover.eval.ground_truth import ground_truth_metrics, masked_ssim
from magicremover.experiments import evaluate as ev
from magicremover.images import psnr

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(
            "evaluate",
            overrides=[
                f"out_dir={tmp_path / 'run'}",
                f"cache_dir={tmp_path / 'cache'}",
                "device=cpu",
                "data.size=4",
                "num_inference_steps=4",
                "inversion=negative_prompt",
                *overrides,
            ],
        )


def test_end_to_end_on_the_toy_dataset(tmp_path):
    cfg = _config(tmp_path)
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    run = Path(cfg.out_dir)
    records = [json.loads(line) for line in (run / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)
    assert all((run / r["output"]).is_file() for r in records)
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert {"psnr_in", "ssim_in", "psnr_out", "ssim_out"} <= set(metrics) and metrics["ok"] == 4


def test_interrupted_run_resumes_without_redoing_or_losing_samples(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    calls = []
    real = ev.build_remover

    def flaky(cfg):
        remover = real(cfg)

        def counted(sample):
            calls.append(sample.sample_id)
            if len(calls) == 3:
                raise KeyboardInterrupt  # Ctrl-C during the third sample
            return remover(sample)

        counted.requires = remover.requires
        return counted

    monkeypatch.setattr(ev, "build_remover", flaky)
    with pytest.raises(KeyboardInterrupt):
        ev.evaluate(cfg, Path(cfg.out_dir))
    assert len(ev.read_manifests(Path(cfg.out_dir))) == 2
    ev.evaluate(cfg, Path(cfg.out_dir))
    finished = ev.read_manifests(Path(cfg.out_dir))
    assert len(finished) == 4 and len(calls) == 5  # 2 done + the interrupted one redone + 1 more, nothing twice
    assert len(set(calls)) == 4


def test_failures_are_recorded_and_the_run_goes_on(tmp_path, monkeypatch):
    cfg = _config(tmp_path)
    real = ev.build_remover
    second = ev.instantiate(cfg.data).ids[1]

    def failing_one(cfg):
        remover = real(cfg)

        def maybe(sample):
            if sample.sample_id == second:
                raise PromptError("target missing")
            return remover(sample)

        maybe.requires = remover.requires
        return maybe

    monkeypatch.setattr(ev, "build_remover", failing_one)
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    assert (metrics["ok"], metrics["errors"]) == (3, 1)
    errors = [r for r in ev.read_manifests(Path(cfg.out_dir)).values() if r["status"] == "error"]
    assert errors[0]["error"] == "target missing"


def test_a_torn_manifest_line_is_ignored(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"sample_id": "a", "status": "ok"}\n{"sample_id": "b", "sta')
    assert list(ev.read_manifests(tmp_path)) == ["a"]


def test_methods_needing_masks_are_refused_before_running(tmp_path):
    cfg = _config(tmp_path, "method=sd_inpaint", "data.with_mask=false", "method.path=/nonexistent")
    with pytest.raises(
        ConfigError, match="SDInpaint needs mask, which data=magicremover.eval.data.ToyDataset does not provide"
    ):
        ev.evaluate(cfg, Path(cfg.out_dir))


def test_shards_are_disjoint_and_cover_everything():
    items = list(range(10))
    parts = [shard(items, 3, i) for i in range(3)]
    assert sorted(sum(parts, [])) == items and not set(parts[0]) & set(parts[1])
    with pytest.raises(ConfigError, match="data.shard_index=3 must be in"):
        shard(items, 3, 3)
    assert ToyDataset(size=5, num_shards=2, shard_index=1).ids == ToyDataset(size=5).ids[1::2]


def test_metrics_match_independent_computations():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    region = np.zeros((32, 32), dtype=bool)
    region[8:20, 4:30] = True
    mse = ((a.astype(float) - b.astype(float))[region] ** 2).mean()
    assert np.isclose(psnr(a, b, region), 10 * np.log10(255**2 / mse))
    assert np.isclose(masked_ssim(a, a, region), 1.0) and masked_ssim(a, b, region) < 0.2
    scores = ground_truth_metrics(output=a, source=b, truth=a, region=region.astype(float))
    assert scores["psnr_in"] > 100 and np.isclose(scores["ssim_in"], 1.0)  # identical inside (PSNR capped at 148 dB)
    assert np.isclose(scores["psnr_out"], psnr(a, b, ~region))
