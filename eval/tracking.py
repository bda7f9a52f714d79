"""Experiment tracking: one Weights & Biases run per job (resolved config, summary metrics, an image table).

Tracking is a side channel. Results live in ``out_dir`` (outputs, manifests, ``metrics.json``) and are written
before anything is logged; a W&B failure (no network, no login, a server error) is logged as a warning and the
job carries on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from PIL import Image

log = logging.getLogger(__name__)


class NoTracker:
    """``logger=none``: logs nothing."""

    images = 0

    def start(self, config: dict, out_dir: Path) -> None:
        pass

    def finish(self, metrics: dict | None, rows: list[dict]) -> None:
        pass


class WandbTracker:
    """``logger=wandb``.

    Args:
        project, entity, group, tags: where the run goes (``group`` defaults to the output folder's parent, so the
            jobs of one sweep land together).
        mode: ``online``, ``offline`` (sync later with ``wandb sync``) or ``disabled``.
        images: rows of the image table (input | mask | attention | output).
    """

    def __init__(self, project: str = "magicremover", entity: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, mode: str = "online", images: int = 16):  # fmt: skip
        self.settings = dict(project=project, entity=entity, group=group, tags=list(tags or []), mode=mode)
        self.images = images
        self.run = None

    def start(self, config: dict, out_dir: Path) -> None:
        import wandb

        settings = self.settings | {"group": self.settings["group"] or Path(out_dir).resolve().parent.name}
        try:
            self.run = wandb.init(
                config=config, dir=str(out_dir), name=Path(out_dir).name, reinit="create_new", **settings
            )
        except Exception as err:  # noqa: BLE001 - tracking must never stop a run
            log.warning(
                "W&B unavailable (%s); results stay in %s",
                str(err).splitlines()[0] if str(err) else type(err).__name__,
                out_dir,
            )

    def finish(self, metrics: dict | None, rows: list[dict]) -> None:
        """Summary metrics (flattened) and the image table; ``metrics`` is ``None`` for a shard that computed none."""
        if self.run is None:
            return
        import wandb

        try:
            if metrics:
                self.run.summary.update(_flatten(metrics))
            if rows:
                columns = ["sample_id", "input", "mask", "attention", "output"]
                table = wandb.Table(columns=columns)
                for row in rows:
                    table.add_data(row["sample_id"], *(_image(row.get(key)) for key in columns[1:]))
                self.run.log({"samples": table})
            self.run.finish()
        except Exception as err:  # noqa: BLE001 - tracking must never lose a run's results
            log.warning(
                "W&B logging failed (%s); results are in metrics.json",
                str(err).splitlines()[0] if str(err) else type(err).__name__,
            )
        finally:
            self.run = None


def _image(image: Image.Image | None):
    import wandb

    return wandb.Image(image) if image is not None else None


def _flatten(metrics: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}/")
        else:
            flat[f"{prefix}{key}"] = value
    return flat
