"""Sharded evaluation through Hydra's joblib launcher, for real: two processes, one merged result."""

import json

import pytest
from commands import evaluate

COMMON = ["data.size=4", "num_inference_steps=4", "inversion=negative_prompt", "device=cpu"]


@pytest.mark.slow  # 65 s; test_slurm.py proves the same merge through SLURM by default
def test_two_joblib_shards_match_one_unsharded_run(tmp_path):
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    launcher = ["-m", "hydra/launcher=local_shards", "data.num_shards=2", "data.shard_index=0,1"]
    evaluate(tmp_path, *launcher, f"out_dir={sharded}", *COMMON, cache="a", timeout=600, OMP_NUM_THREADS="1")
    # its own cache: it must invert too
    evaluate(tmp_path, f"out_dir={single}", *COMMON, cache="b", timeout=600, OMP_NUM_THREADS="1")
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
