"""What a clone holds: every config the README names is committed, and the W&B sweep file names only keys the
evaluation accepts."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from magicremover.config import compose_config

ROOT = Path(__file__).resolve().parents[1]


def committed_files() -> set[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listing = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return set(listing.splitlines())


def test_every_conf_path_the_readme_names_is_committed():
    files = committed_files()
    named = set(re.findall(r"\bconf/[A-Za-z0-9_./-]*[A-Za-z0-9_]", (ROOT / "README.md").read_text()))
    assert "conf/wandb/sweep_toy.yaml" in named  # the README documents the W&B sweep; it must reach a clone
    missing = [path for path in sorted(named) if path not in files and not any(f.startswith(path + "/") for f in files)]
    assert not missing, f"README names {missing}, which git does not track"


def test_the_wandb_sweep_names_only_keys_evaluate_accepts():
    sweep = yaml.safe_load((ROOT / "conf" / "wandb" / "sweep_toy.yaml").read_text())
    command = sweep["command"]
    assert command[:4] == ["${env}", "python", "-m", sweep["program"]] and command[-1] == "${args_no_hyphens}"
    fixed = command[4:-1]
    sampled = [f"{key}={spec['min']}" for key, spec in sweep["parameters"].items()]
    cfg = compose_config("evaluate", fixed + sampled)  # a key evaluate does not have fails to compose
    for key, spec in sweep["parameters"].items():
        assert OmegaConf.select(cfg, key) == spec["min"], key
    metric = sweep["metric"]["name"]
    optuna = yaml.safe_load((ROOT / "conf" / "hparams_search" / "toy_optuna.yaml").read_text())
    assert metric == optuna["optimized_metric"]  # the same search as the Optuna one
    assert set(sweep["parameters"]) == set(optuna["hydra"]["sweeper"]["params"])
