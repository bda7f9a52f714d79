"""The toy-model training command: a few steps on a few scenes, resumed, exported and loaded like any SD folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magicremover.config import compose_config
from magicremover.errors import ConfigError
from magicremover.experiments.train_toy import run
from magicremover.models import load_pretrained


def _config(tmp_path, *overrides):
    return compose_config(
        "train_toy",
        [
            f"work_dir={tmp_path / 'work'}",
            f"out_dir={tmp_path / 'model'}",
            "threads=1",
            "pool_size=8",
            "vae.steps=3",
            "vae.batch_size=4",
            "unet.steps=2",
            "unet.batch_size=4",
            "unet.sample_every=2",
            *overrides,
        ],
    )


def test_training_resumes_and_exports_a_loadable_model(tmp_path):
    run(_config(tmp_path, "scene_radius=[8,16]", "scene_distinct_colours=false"))
    work = tmp_path / "work"
    assert (work / "pool_8_r8-16_colours-any.pt").is_file()  # the pool is keyed by the domain it was rendered with
    assert (work / "samples" / "step_000002.png").is_file()
    first = torch.load(work / "unet.pt")
    vae_bytes = (work / "vae.pt").read_bytes()
    components = load_pretrained(path=str(tmp_path / "model"), device="cpu")
    caption = "a photo of a red circle on dots"
    assert len(components.tokenizer(caption).input_ids) == len(caption.split()) + 2  # start, a token per word, end

    first["unet"]["conv_out.bias"] += 100.0  # a mark no fresh start could produce
    torch.save(first, work / "unet.pt")
    run(_config(tmp_path, "scene_radius=[8,16]", "scene_distinct_colours=false", "unet.steps=3"))
    resumed = torch.load(work / "unet.pt")
    assert first["step"] == 2 and resumed["step"] == 3
    step = resumed["unet"]["conv_out.bias"] - first["unet"]["conv_out.bias"]
    assert 0 < step.abs().max() < 0.01  # one optimiser step away from the checkpoint it resumed from
    assert (work / "vae.pt").read_bytes() == vae_bytes  # the finished VAE stage is not retrained
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["config"]["unet"]["steps"] == 3 and record["config"]["scene_radius"] == [8, 16]

    run(_config(tmp_path))  # the domain's radii and colours: a second pool; the finished schedule only re-exports
    assert (work / "pool_8_r12-16_colours-distinct.pt").is_file()
    again = torch.load(work / "unet.pt")
    assert again["step"] == 3 and all(torch.equal(again["unet"][k], resumed["unet"][k]) for k in resumed["unet"])


def test_a_colour_rule_that_is_not_a_boolean_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"^scene_distinct_colours='yes': give true \(the domain\) or false"):
        run(_config(tmp_path, "scene_distinct_colours=yes"))
    assert not (tmp_path / "work").exists() and not (tmp_path / "model").exists()


def test_a_radius_range_it_cannot_draw_is_a_one_line_error_before_anything_is_written(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "magicremover.experiments.train_toy",
        "scene_radius=[16,12]",
        f"work_dir={tmp_path / 'work'}",
        f"out_dir={tmp_path / 'model'}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: object radii [16, 12] cannot be drawn")
    assert not (tmp_path / "work").exists() and not (tmp_path / "model").exists()
