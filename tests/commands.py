"""The evaluation command as a user runs it, in a subprocess: one helper for the tests that need a real process."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def evaluate(tmp_path: Path, *args: str, cache: str = "cache", timeout: int = 900, **env: str):
    """``python -m magicremover.experiments.evaluate ARGS`` in ``tmp_path``, its inversion cache in ``tmp_path/cache``
    and ``env`` added to the environment; fails the test with the command's stderr when it exits non-zero."""
    environ = os.environ | {"PYTHONPATH": str(ROOT), "MAGICREMOVER_CACHE": str(tmp_path / cache)} | env
    command = [sys.executable, "-m", "magicremover.experiments.evaluate", *args]
    done = subprocess.run(command, cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
