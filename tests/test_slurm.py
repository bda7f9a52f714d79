"""The cluster path on a real scheduler: the sharded toy evaluation through ``hydra/launcher=slurm_shards`` on a
one-node SLURM cluster (``tests/slurm_cluster.py``), one shard requeued mid-run, the merged metrics against a
single-process run. Skipped, with its reason, where the cluster cannot run (not root, no slurm-wlm/munge)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_cluster import PARTITION, one_node_cluster, unavailable

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["data.size=6", "num_inference_steps=8", "inversion=negative_prompt", "device=cpu"]
# A CPU node: no GPU, one core and a little memory per shard (docs/evaluation.md, "Scale-out").
CPU_NODE = [
    f"hydra.launcher.partition={PARTITION}",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=20",
]

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))


def _evaluate(args, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """``evaluate`` in the background, its output into ``log`` (a pipe nobody reads could fill and stall it)."""
    env = env | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "magicremover.experiments.evaluate", *args]
    with open(log, "w") as out:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, log: Path) -> str:
    process.wait(timeout=600)
    text = log.read_text()
    assert process.returncode == 0, text[-3000:]
    return text


def _records(folder: Path) -> list[dict]:
    return [
        json.loads(line) for path in sorted(folder.glob("manifest*.jsonl")) for line in path.read_text().splitlines()
    ]


def _scontrol(env, *args) -> str:
    return subprocess.run(["scontrol", *args], env=env, capture_output=True, text=True, check=True).stdout


def test_two_slurm_shards_one_requeued_mid_run_match_one_process(tmp_path):
    sharded, single, sweep = tmp_path / "sharded", tmp_path / "single", tmp_path / "sweep"
    with one_node_cluster() as env:
        env = env | {"MAGICREMOVER_CACHE": str(tmp_path / "cache-a")}
        launch = _evaluate(
            [
                "-m",
                "hydra/launcher=slurm_shards",
                *CPU_NODE,
                "data.num_shards=2",
                "data.shard_index=0,1",
                f"out_dir={sharded}",
                f"hydra.sweep.dir={sweep}",
                *COMMON,
            ],
            tmp_path,
            env,
            tmp_path / "launch.log",
        )
        try:
            first = sharded / "manifest-shard000-of-002.jsonl"
            deadline = time.monotonic() + 300
            while not (first.is_file() and first.read_text().strip()) and launch.poll() is None:
                assert time.monotonic() < deadline, "shard 0 finished no sample in 300 s"
                time.sleep(0.1)
            assert launch.poll() is None, (tmp_path / "launch.log").read_text()[-3000:]
            done_before = len(first.read_text().splitlines())
            assert done_before < 3, "shard 0 finished before it could be requeued: give it more samples"
            (job,) = [
                line.split()[0]
                for line in subprocess.run(
                    ["squeue", "-h", "-o", "%i %K"], env=env, capture_output=True, text=True
                ).stdout.splitlines()
                if line.split()[1] == "0"
            ]
            _scontrol(env, "requeue", job)
            log = _finish(launch, tmp_path / "launch.log")
            restarts = _scontrol(env, "show", "job", job)
        finally:  # a failed check leaves no launcher polling a stopped cluster
            if launch.poll() is None:
                launch.kill()
    assert "Restarts=1" in restarts, restarts
    assert "Later sacct errors are not shown" in log and "Call #2 - Bypassing sacct error" not in log, log[-3000:]

    own_cache = os.environ | {"MAGICREMOVER_CACHE": str(tmp_path / "cache-b")}  # it must invert too
    _finish(
        _evaluate([f"out_dir={single}", *COMMON], tmp_path, own_cache, tmp_path / "single.log"), tmp_path / "single.log"
    )

    records = _records(sharded)
    ids = [r["sample_id"] for r in records]
    assert len(ids) == len(set(ids)) == 6, ids  # no sample done twice, though shard 0 ran twice
    assert all(r["status"] == "ok" for r in records)
    outputs = {r["sample_id"]: (sharded / r["output"]).read_bytes() for r in records}
    assert outputs == {r["sample_id"]: (single / r["output"]).read_bytes() for r in _records(single)}
    assert json.loads((sharded / "metrics.json").read_text()) == json.loads((single / "metrics.json").read_text())
