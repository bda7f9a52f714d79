"""A wheel (``pip install .``) carries every committed config and runs its entry points from any folder.

The wheel is built from a copy of the sources (setuptools builds in-tree) and unpacked; a fresh interpreter with only
the unpacked wheel ahead of site-packages composes configs and prints an entry point's config. ``.ci/run`` goes further:
it installs the wheel into its own environment and removes an object with it, outside the checkout.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "pyproject.toml", "README.md", "conf", "magicremover", "baselines", "eval", "experiments")


@pytest.fixture(scope="module")
def unpacked_wheel(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("tree")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(source, tree / name)
    out = tmp_path_factory.mktemp("dist")
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    done = subprocess.run([sys.executable, "-c", build, str(out)], cwd=tree, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    site = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(out / done.stdout.strip().splitlines()[-1]) as wheel:
        wheel.extractall(site)
    return site


def test_the_wheel_holds_every_config_of_the_repository(unpacked_wheel):
    configs = sorted(p.relative_to(ROOT / "conf") for p in (ROOT / "conf").rglob("*.yaml"))
    assert configs and Path("wandb/sweep_toy.yaml") in configs
    packaged = unpacked_wheel / "magicremover" / "conf"
    missing = [str(path) for path in configs if not (packaged / path).is_file()]
    assert not missing, f"the wheel lacks conf/{missing[:5]}"
    assert (packaged / "remove.yaml").read_bytes() == (ROOT / "conf" / "remove.yaml").read_bytes()


def _run_outside(site: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_the_wheel_finds_its_configs_from_another_folder(unpacked_wheel, tmp_path):
    probe = (
        "import magicremover.config as c; from magicremover.config import compose_config; "
        "print(c.CONFIG_DIR); print(compose_config('remove', ['method=magicremover_fast']).method._target_)"
    )
    done = _run_outside(unpacked_wheel, tmp_path, "-c", probe)
    assert done.returncode == 0, done.stderr[-2000:]
    config_dir, target = done.stdout.split()
    assert Path(config_dir) == unpacked_wheel / "magicremover" / "conf"
    assert target == "magicremover.method.MagicRemover"
    # Each entry point's @hydra.main reads the packaged configs: its composed config printed, not MissingConfigException.
    for module, key in (
        ("magicremover.experiments.remove", "target: circle"),
        ("magicremover.experiments.evaluate", "retry_errors: false"),
    ):
        shown = _run_outside(unpacked_wheel, tmp_path, "-m", module, "--cfg", "job")
        assert shown.returncode == 0, (module, shown.stderr[-2000:])
        assert key in shown.stdout, (module, shown.stdout[:500])


def test_the_wheel_adds_one_import_name_and_its_commands(unpacked_wheel):
    """A research project's own ``experiments`` or ``eval`` package is never shadowed by installing this one."""
    top_level = {p.name.removesuffix(".py") for p in unpacked_wheel.iterdir() if not p.name.endswith(".dist-info")}
    assert top_level == {"magicremover"}, top_level
    for harness in ("baselines", "eval", "experiments"):
        assert (unpacked_wheel / "magicremover" / harness / "__init__.py").is_file(), harness
    (info,) = unpacked_wheel.glob("*.dist-info")
    scripts = (info / "entry_points.txt").read_text()
    assert "magicremover-remove = magicremover.experiments.remove:cli" in scripts, scripts
