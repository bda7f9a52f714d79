"""Redraw an artefact (``conf/artefact/<name>.yaml``) from a finished sweep's ``metrics.json`` files.

    python -m experiments.report artefact=fig9 sweep_dir=runs/fig9

A multirun with ``+artefact=<name>`` renders the same files when it ends; this command is for sweeps finished in
pieces (shards on a cluster, then ``metrics_only=true``) or tables restyled later.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from eval.report import render
from experiments._cli import check_argv, run_entry_point
from magicremover.config import CONFIG_DIR
from magicremover.errors import ConfigError


def report(cfg: DictConfig, _: Path) -> dict[str, Path]:
    """Render ``cfg.report`` (the artefact's spec) from ``cfg.sweep_dir``."""
    if not cfg.sweep_dir:
        raise ConfigError("set sweep_dir=DIR, the folder of a finished sweep (its hydra.sweep.dir)")
    return render(Path(cfg.sweep_dir), cfg.report)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="report")
def main(cfg: DictConfig) -> None:
    run_entry_point(report, cfg)


if __name__ == "__main__":
    check_argv()
    main()
