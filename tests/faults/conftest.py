"""Fixtures of the fault tests: a small, fast evaluation config on the toy model, and a folder benchmark."""

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from magicremover.config import compose_config

FAST = ["device=cpu", "num_inference_steps=4", "inversion=negative_prompt"]


@pytest.fixture
def config(tmp_path):
    """``config(*overrides)``: the evaluation config of a 2-scene toy run in ``tmp_path/run``."""

    def make(*overrides):
        return compose_config(
            "evaluate",
            [f"out_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", "data.size=2", *FAST, *overrides],
        )

    return make


@pytest.fixture
def benchmark_folder(tmp_path, example_image):
    """``benchmark_folder(ids)``: a data=folder benchmark whose prompts.jsonl lists ``ids`` (files for safe ones)."""

    def make(ids):
        root = tmp_path / "bench"
        for folder in ("images", "masks", "ground_truth"):
            (root / folder).mkdir(parents=True, exist_ok=True)
        lines = []
        for sample_id in ids:
            if re.fullmatch(r"\w[\w.-]*", str(sample_id), re.ASCII):
                example_image.save(root / "images" / f"{sample_id}.png")
                example_image.save(root / "ground_truth" / f"{sample_id}.png")
                Image.new("L", example_image.size, 255).save(root / "masks" / f"{sample_id}.png")
            lines.append(json.dumps({"id": sample_id, "prompt": "a photo of a red circle", "target": "red circle"}))
        (root / "prompts.jsonl").write_text("\n".join(lines) + "\n")
        return Path(root)

    return make
