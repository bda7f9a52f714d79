"""Experiment tracking: one Weights & Biases run per job (resolved config, a step per finished sample, summary
metrics, an image table, the result files as an artifact), and one per finished artefact sweep (its tables, figures
and comparison grid).

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

    def start(self, config: dict, out_dir: Path, job_type: str | None = None, tags: list[str] = ()) -> None:
        pass

    def log_sample(self, index: int, record: dict) -> None:
        pass

    def finish(self, metrics: dict | None, rows: list[dict], out_dir: Path | None = None) -> None:
        pass

    def log_report(self, sweep_dir: Path, name: str, files: dict[str, Path], grid_rows: list[dict]) -> None:
        pass


class WandbTracker:
    """``logger=wandb``.

    Args:
        project, entity, group, tags: where the run goes (``group`` defaults to the output folder's parent and
            grandparent, ``fig6/2026-11-30_10-00-00``, so the jobs of one sweep land together).
        mode: ``online``, ``offline`` (sync later with ``wandb sync``) or ``disabled``.
        images: rows of the image table (input | mask | attention | output).
    """

    def __init__(
        self,
        project: str = "magicremover",
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        mode: str = "online",
        images: int = 16,
    ):
        self.settings = dict(project=project, entity=entity, group=group, tags=list(tags or []), mode=mode)
        self.images = images
        self.run = None

    def start(self, config: dict, out_dir: Path, job_type: str | None = None, tags: list[str] = ()) -> None:
        """Open the run; ``job_type`` (the method or experiment) and ``tags`` (the artefact) come from the job."""
        self.run = self._init(config, Path(out_dir), Path(out_dir).name, job_type, tags)

    def _init(self, config: dict, out_dir: Path, name: str, job_type: str | None, tags) -> object | None:
        import wandb

        parent = out_dir.resolve().parent
        settings = self.settings | {
            "group": self.settings["group"] or f"{parent.parent.name}/{parent.name}",
            "tags": list(dict.fromkeys([*self.settings["tags"], *tags])),
        }
        try:
            return wandb.init(
                config=config, dir=str(out_dir), name=name, job_type=job_type, reinit="create_new", **settings
            )
        except Exception as err:  # noqa: BLE001 - tracking must never stop a run
            _warn("W&B unavailable (%s); results stay in %s", err, out_dir)
            return None

    def log_sample(self, index: int, record: dict) -> None:
        """One finished sample at step = its index: status, UNet calls, seconds and its metrics (when the data has
        ground truth)."""
        if self.run is None:
            return
        ok = record.get("status") == "ok"
        values = {"sample/ok": int(ok)}
        if ok:
            values |= {"sample/unet_calls": sum(record["unet_calls"].values()), "sample/seconds": record["seconds"]}
            values |= {f"sample/{key}": value for key, value in (record.get("metrics") or {}).items()}
        try:
            self.run.log(values, step=index)
        except Exception as err:  # noqa: BLE001 - tracking must never stop a run
            _warn("W&B logging failed (%s); results stay in the manifest", err)

    def finish(self, metrics: dict | None, rows: list[dict], out_dir: Path | None = None) -> None:
        """Summary metrics (flattened), the image table and the result files (``metrics.json``, manifests,
        ``config.yaml``) as an artifact; ``metrics`` is ``None`` for a shard that computed none."""
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
            if out_dir is not None:
                files = [Path(out_dir) / "metrics.json", Path(out_dir) / "config.yaml"]
                files += sorted(Path(out_dir).glob("manifest*.jsonl"))
                _artifact(self.run, f"results-{self.run.id}", "evaluation", [f for f in files if f.is_file()])
            self.run.finish()
        except Exception as err:  # noqa: BLE001 - tracking must never lose a run's results
            _warn("W&B logging failed (%s); results are in metrics.json", err)
        finally:
            self.run = None

    def log_report(self, sweep_dir: Path, name: str, files: dict[str, Path], grid_rows: list[dict]) -> None:
        """A run of its own (job type ``report``) in the sweep's group: the comparison grid as a table with the
        grid's columns, and the rendered tables and figures as an artifact."""
        import wandb

        run = self._init({"artefact": name}, Path(sweep_dir) / "report", f"{name}-report", "report", [name])
        if run is None:
            return
        try:
            if grid_rows:
                columns = list(grid_rows[0])
                table = wandb.Table(columns=columns)
                for row in grid_rows:
                    table.add_data(*(row[c] if c == "sample_id" else _image(row.get(c)) for c in columns))
                run.log({f"{name}_grid": table})
            _artifact(run, f"{name}-{Path(sweep_dir).name}", "report", list(files.values()))
            run.finish()
        except Exception as err:  # noqa: BLE001 - the files are in the sweep folder whatever happens here
            _warn("W&B logging failed (%s); the report is in the sweep folder", err)


def _artifact(run, name: str, kind: str, files: list[Path]) -> None:
    """Upload ``files`` as one artifact (W&B names allow letters, digits, ``-``, ``_`` and ``.``)."""
    import wandb

    artifact = wandb.Artifact("".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name), type=kind)
    for file in files:
        artifact.add_file(str(file), name=file.name)
    run.log_artifact(artifact)


def _warn(message: str, err: BaseException, *args) -> None:
    log.warning(message, str(err).splitlines()[0] if str(err) else type(err).__name__, *args)


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
