"""Sharded evaluation through Hydra's joblib launcher, for real: two processes, one merged result."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["data.size=4", "num_inference_steps=4", "inversion=negative_prompt", "device=cpu"]


def _run(args, tmp_path, cache):
    env = os.environ | {"PYTHONPATH": str(ROOT), "MAGICREMOVER_CACHE": str(tmp_path / cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "magicremover.experiments.evaluate", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_two_joblib_shards_match_one_unsharded_run(tmp_path):
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    _run(
        [
            "-m",
            "hydra/launcher=local_shards",
            "data.num_shards=2",
            "data.shard_index=0,1",
            f"out_dir={sharded}",
            *COMMON,
        ],
        tmp_path,
        "a",
    )
    _run([f"out_dir={single}", *COMMON], tmp_path, "b")  # its own cache: it must invert too
    manifests = sorted(p.name for p in sharded.glob("manifest*.jsonl"))
    assert manifests == ["manifest-shard000-of-002.jsonl", "manifest-shard001-of-002.jsonl"]

    def merged(folder):
        records = {}
        for path in folder.glob("manifest*.jsonl"):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                records[record["sample_id"]] = (
                    record["status"],
                    record["unet_calls"],
                    (folder / record["output"]).read_bytes(),
                )
        return records

    assert merged(sharded) == merged(single)  # same samples, same calls, byte-identical outputs
    assert json.loads((sharded / "metrics.json").read_text()) == json.loads((single / "metrics.json").read_text())
