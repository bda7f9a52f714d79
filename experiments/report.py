"""Redraw an artefact (``conf/artefact/<name>.yaml``) from a finished sweep's ``metrics.json`` files.

    python -m magicremover.experiments.report artefact=fig9 sweep_dir=runs/fig9

A multirun with ``+artefact=<name>`` renders the same files when it ends; this command is for sweeps finished in
pieces (shards on a cluster, then ``metrics_only=true``) or tables restyled later.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from magicremover.config import CONFIG_DIR
from magicremover.errors import ConfigError
from magicremover.eval.report import render
from magicremover.experiments._cli import check_argv, run_entry_point


def report(cfg: DictConfig, _: Path) -> dict[str, Path]:
    """Render ``cfg.report`` (the artefact's spec) from ``cfg.sweep_dir``."""
    if not cfg.sweep_dir:
        raise ConfigError("set sweep_dir=DIR, the folder of a finished sweep (its hydra.sweep.dir)")
    return render(Path(cfg.sweep_dir), cfg.report)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="report")
def main(cfg: DictConfig) -> None:
    run_entry_point(report, cfg)


def cli() -> None:
    """``magicremover-report``, the same command as ``python -m magicremover.experiments.report``."""
    check_argv()
    main()


if __name__ == "__main__":
    cli()
