"""Folder benchmarks with ground truth (OBER / RORD layout) run through the harness with every metric."""

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from magicremover.errors import ConfigError
from magicremover.eval.folder import FolderDataset
from magicremover.experiments import evaluate as ev
from magicremover.toy.quality import held_out_cases

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path):
    """Three held-out toy scenes written as a folder benchmark (JPEG inputs, PNG masks and ground truth)."""
    root = tmp_path / "bench"
    for name in ("images", "masks", "ground_truth"):
        (root / name).mkdir(parents=True)
    lines = []
    for i, case in enumerate(held_out_cases(3)):
        Image.fromarray(case.scene.image).save(root / "images" / f"s{i}.jpg", quality=95)
        Image.fromarray((case.obj.shadow_mask * 255).astype(np.uint8)).save(root / "masks" / f"s{i}.png")
        Image.fromarray(case.obj.removed).save(root / "ground_truth" / f"s{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "prompt": case.scene.caption, "target": case.obj.phrase}))
    (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_a_folder_benchmark_runs_with_ground_truth_and_distribution_metrics(folder, tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "evaluate",
            overrides=[
                "data=folder",
                f"data.root={folder}",
                "metrics=tiny",
                f"out_dir={tmp_path / 'run'}",
                f"cache_dir={tmp_path / 'cache'}",
                "device=cpu",
                "num_inference_steps=4",
                "inversion=negative_prompt",
            ],
        )
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    assert metrics["ok"] == 3
    for key in ("psnr_in", "ssim_in", "psnr_out", "ssim_out", "fid_original", "u_ids", "clip_similarity"):
        assert np.isfinite(metrics[key]), key
    assert metrics["psnr_out"] > metrics["psnr_in"]  # the background is kept far better than the object is replaced


def test_folder_mistakes_are_clear(folder, tmp_path):
    assert FolderDataset(str(folder), size=2).ids == ["s0", "s1"]
    with pytest.raises(ConfigError, match="must be a folder with prompts.jsonl"):
        FolderDataset(str(tmp_path / "nowhere"))
    (folder / "ground_truth" / "s1.png").unlink()
    with pytest.raises(ConfigError, match="sample s1 has no file in .*ground_truth"):
        FolderDataset(str(folder))
    (folder / "prompts.jsonl").write_text('{"id": "s0", "prompt": "a photo"}\n')
    with pytest.raises(ConfigError, match="line 1 is not"):
        FolderDataset(str(folder))
