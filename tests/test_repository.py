"""What a clone holds: every repository path the README and the docs name is committed, and the W&B sweep file names only keys the
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


DOCUMENTS = ("README.md", "docs/*.md", "magicremover/assets/toy/README.md")
FOLDERS = ("conf", "magicremover", "eval", "experiments", "baselines", "tests", "notebooks", "docs")


def documents() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text() for pattern in DOCUMENTS for p in sorted(ROOT.glob(pattern))}


def test_every_repository_path_the_docs_name_is_committed():
    files, docs = committed_files(), documents()
    assert {"README.md", "docs/index.md", "docs/evaluation.md"} <= set(docs)
    path = re.compile(rf"(?<![\w./-])(?:{'|'.join(FOLDERS)})/[A-Za-z0-9_./-]*[A-Za-z0-9_]")
    named = {(doc, match) for doc, text in docs.items() for match in path.findall(text)}
    assert ("docs/evaluation.md", "conf/wandb/sweep_toy.yaml") in named  # the W&B sweep must reach a clone
    missing = sorted(
        (doc, name)
        for doc, name in named
        if name not in files and not any(f.startswith(name + "/") for f in files) and name != "magicremover/conf"
    )
    assert not missing, f"documents name paths git does not track: {missing}"


def test_the_readme_is_a_front_door_and_names_nothing_outside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert max(len(line) for line in readme.splitlines()) <= 120
    for doc, text in documents().items():
        assert "../shared" not in text and "/work/" not in text, doc


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
