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
from experiments._cli import run_entry_point


@hydra.main(version_base="1.3", config_path="../conf", config_name="report")
def main(cfg: DictConfig) -> None:
    run_entry_point(lambda cfg, _: render(Path(cfg.sweep_dir), cfg.report), cfg)


if __name__ == "__main__":
    main()
