"""Run a remover over a dataset, resumably, and compute metrics.

    python -m magicremover.experiments.evaluate method=magicremover data=toy out_dir=runs/toy_magic
    python -m magicremover.experiments.evaluate method=lama weights.lama=big-lama.pt data=toy out_dir=runs/toy_lama

Writes ``outputs/<sample_id>.png`` (unpadded, atomic), one ``manifest*.jsonl`` line per finished sample (status, UNet
calls, seconds, or the error) and ``metrics.json``. Rerunning the same command skips finished samples. With
``data.num_shards=N data.shard_index=i`` each shard writes its own manifest into the shared ``out_dir``; metrics are
computed over all manifests once every sample is finished (or with ``metrics_only=true``): PSNR/SSIM where the data
has ground truth, and with ``metrics=standard`` FID (vs the originals and vs the reconstructions), U-IDS/P-IDS and CLIP
similarity. ``logger=wandb`` logs the run to Weights & Biases.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import hydra
import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from magicremover.config import CONFIG_DIR, build_remover
from magicremover.errors import ConfigError
from magicremover.eval import runner
from magicremover.eval.authors import Sample
from magicremover.eval.ground_truth import ground_truth_metrics
from magicremover.eval.manifest import check_sample_id, check_unique, read_manifests
from magicremover.eval.redact import loggable_config
from magicremover.eval.run_guard import check_numbers, check_resume, prepare_out_dir
from magicremover.eval.scores import SetScores
from magicremover.experiments._cli import check_argv, log, quiet_sacct, run_entry_point
from magicremover.images import fit_mask, fit_to_model, load_image, to_pil
from magicremover.outputs import atomic_write, save_image
from magicremover.types import RemovalResult


class EvaluationSteps:
    """One dataset sample through the runner's stages (:mod:`magicremover.eval.runner`): ``dataset[index]``, the remover, its
    images under ``out_dir`` (and, for the first ``grid_samples``, its fitted input) and its record."""

    def __init__(self, cfg: DictConfig, out_dir: Path, dataset, remover=None):
        self.cfg, self.out_dir, self.dataset, self.remover = cfg, out_dir, dataset, remover

    def load(self, index: int):
        return self.dataset[index]

    def run(self, item) -> RemovalResult:
        result = self.remover(item.sample)
        result.check_finite()
        return result

    def save(self, index: int, item, result: RemovalResult) -> dict:
        sample_id = self.dataset.ids[index]
        files = {}
        images = result.images()
        if index < self.cfg.grid_samples:
            framing = result.extras.get("resize", self.cfg.resize)
            images["input"] = fit_to_model(load_image(item.sample.image), tuple(result.image.shape[-2:]), framing)
        for kind, image in images.items():
            save_image(image, self.out_dir / f"{kind}s" / f"{sample_id}.png")
            files[kind] = f"{kind}s/{sample_id}.png"
        record = {
            **files,
            "unet_calls": {k: v.calls for k, v in result.calls.items()},
            "unet_backward": {k: v.backward for k, v in result.calls.items()},
            "unet_forward_equivalents": {k: v.forward_equivalents for k, v in result.calls.items()},
            "seconds": result.seconds.get("total", sum(result.seconds.values())),
            "extras": result.extras,
        }
        if self.dataset.has_ground_truth:
            output = np.asarray(to_pil(result.image))
            record["metrics"] = sample_metrics(item, output, record["extras"].get("resize", self.cfg.resize))
        return record


def evaluate_samples(cfg: DictConfig, out_dir: Path, dataset, build, tracker) -> None:
    """Remove the object of every sample not yet finished in a manifest of ``out_dir`` (policy: :mod:`magicremover.eval.runner`);
    ``build()`` makes the remover, only when there is work. Each finished sample is also logged to the tracker (its
    step = its index), so a crashed run still shows how far it got."""
    shards = (cfg.data.num_shards, cfg.data.shard_index)
    manifest = out_dir / (
        "manifest.jsonl" if shards[0] == 1 else f"manifest-shard{shards[1]:03d}-of-{shards[0]:03d}.jsonl"
    )
    steps = EvaluationSteps(cfg, out_dir, dataset)

    def load_remover(_todo) -> None:
        steps.remover = build()

    runner.run_samples(
        dataset.ids,
        steps,
        out_dir,
        manifest,
        retry_errors=cfg.retry_errors,
        progress_every=cfg.progress_every,
        tracker=tracker,
        before_first=load_remover,
    )


def sample_metrics(item, output: np.ndarray, framing: str) -> dict[str, float]:
    """PSNR/SSIM of one output ``(H, W, 3)`` uint8 inside the object's region (vs the ground truth) and outside it
    (vs the input), with input, truth and region fitted to the output's size and framing."""
    source = load_image(item.sample.image)
    fit = lambda image: np.asarray(to_pil(fit_to_model(image, output.shape[:2], framing)))  # noqa: E731
    region = fit_mask(Image.fromarray((item.region * 255).astype(np.uint8)), source.size, output.shape[:2], framing)
    return ground_truth_metrics(output, fit(source), fit(load_image(item.ground_truth)), region[0, 0].numpy())


def compute_metrics(
    out_dir: Path, dataset, resize: str, scores: SetScores, reconstructions_from: str | None = None
) -> dict:
    """Metrics over every finished sample; inputs and ground truth are fitted to the outputs' resolution and framing.

    ``reconstructions_from``: another run on the same samples whose reconstructions serve as the second FID reference,
    for methods that make none (LaMa, SD-Inpaint).
    """
    done = read_manifests(out_dir)
    borrowed = read_manifests(Path(reconstructions_from)) if reconstructions_from else {}
    ok = [i for i, sample_id in enumerate(dataset.ids) if done.get(sample_id, {}).get("status") == "ok"]
    report = {"samples": len(dataset.ids), "finished": len(done), "ok": len(ok), "errors": len(done) - len(ok)}
    rows = []
    scores.write_authors_files(out_dir / "authors")
    for index in tqdm(ok, desc="metrics", disable=None):
        item = dataset[index]
        record = done[item.sample.sample_id]
        output = _read(out_dir / record["output"])
        source = load_image(item.sample.image)
        framing = record.get("extras", {}).get("resize", resize)  # a method with its own framing (Inst-Inpaint's crop)
        fit = lambda image: np.asarray(to_pil(fit_to_model(image, output.shape[:2], framing)))  # noqa: E731
        original = fit(source)
        if "reconstruction" in record:
            reconstruction = _read(out_dir / record["reconstruction"])
        elif "reconstruction" in borrowed.get(item.sample.sample_id, {}):
            reconstruction = _read(Path(reconstructions_from) / borrowed[item.sample.sample_id]["reconstruction"])
        else:
            reconstruction = None
        mask = _read(out_dir / record["mask"]) if "mask" in record else None
        layout = "grid" if "reconstruction" in record else "strip"  # what the authors' scripts wrote for the method
        text = item.category or item.sample.target
        # The dataset's object mask (its ground-truth region, else the mask it gives removers): where the removal
        # metrics look, the same for every method.
        region = Image.fromarray((item.region * 255).astype(np.uint8)) if item.region is not None else item.sample.mask
        if region is not None:
            region = fit_mask(region, source.size, output.shape[:2], framing)[0, 0].numpy()
            region = ((region > 0.5) * 255).astype(np.uint8)
        truth = fit(load_image(item.ground_truth)) if item.ground_truth is not None else None
        scores.add(Sample(item.sample.sample_id, output, original, reconstruction, text, mask, layout, region, truth))
        if dataset.has_ground_truth:
            rows.append(sample_metrics(item, output, framing))
    if rows:
        report |= {key: float(np.nanmean([row[key] for row in rows])) for key in rows[0]}
    report |= scores.compute()
    calls = [sum(record["unet_calls"].values()) for record in done.values() if record["status"] == "ok"]
    if calls:
        report["unet_calls_per_sample"] = float(np.mean(calls))
        equivalents = [
            sum(r.get("unet_forward_equivalents", {}).values()) for r in done.values() if r["status"] == "ok"
        ]
        report["forward_equivalents_per_sample"] = float(np.mean(equivalents))
        report["inversions"] = sum(
            record["unet_calls"].get("inversion", 0) > 0 for record in done.values() if record["status"] == "ok"
        )
    return report


def table_rows(out_dir: Path, dataset, count: int) -> list[dict]:
    """The first ``count`` finished samples as PIL images for a tracker's table: input, mask, attention, output."""
    done = read_manifests(out_dir)
    rows = []
    for index, sample_id in enumerate(dataset.ids):
        record = done.get(sample_id, {})
        if len(rows) == count:
            break
        if record.get("status") != "ok":
            continue
        row = {"sample_id": sample_id, "input": load_image(dataset[index].sample.image)}
        for kind in ("mask", "attention", "output"):
            if kind in record:
                row[kind] = Image.open(out_dir / record[kind])
        rows.append(row)
    return rows


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def evaluate(cfg: DictConfig, out_dir: Path) -> dict | None:
    """Run (unless ``metrics_only``), then write ``metrics.json`` once every sample is finished. Settings, the output
    folder, the dataset's ids and the metric extractors are checked first, so they fail before any UNet call; a
    tracking failure never loses results."""
    check_numbers(cfg)
    prepare_out_dir(out_dir)
    data = functools.partial(instantiate, cfg.data)
    scores = instantiate(cfg.metrics)
    tracker = instantiate(cfg.logger)
    logged = loggable_config(cfg)
    tracker.start(logged, out_dir, *run_labels(cfg))
    if not cfg.metrics_only:
        dataset = data(num_shards=cfg.data.num_shards, shard_index=cfg.data.shard_index)
        where = f"data={cfg.data._target_}"
        for sample_id in dataset.ids:
            check_sample_id(sample_id, where)
        check_unique(dataset.ids, where)
        # Refuse a dataset that lacks what the method needs before loading any weights.
        missing = set(getattr(get_class(cfg.method._target_), "requires", ())) - set(dataset.provides)
        if missing:
            raise ConfigError(
                f"method {cfg.method._target_} needs {', '.join(sorted(missing))}, which data={cfg.data._target_} does not provide"
            )
        if cfg.resume not in ("check", "force"):
            raise ConfigError(f"resume={cfg.resume} is not check or force")
        check_resume(out_dir, cfg, force=cfg.resume == "force")
        atomic_write(out_dir / "config.yaml", OmegaConf.to_yaml(logged).encode())
        evaluate_samples(cfg, out_dir, dataset, functools.partial(build_remover, cfg), tracker)
    everything = data(num_shards=1, shard_index=0)
    if len(read_manifests(out_dir)) < len(everything.ids) and not cfg.metrics_only:
        log.info("shard finished; metrics wait for the other shards (or run with metrics_only=true)")
        tracker.finish(None, [])
        return None
    metrics = compute_metrics(out_dir, everything, cfg.resize, scores, cfg.reconstructions_from)
    atomic_write(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    log.info("metrics: %s", json.dumps(metrics))
    tracker.finish(metrics, table_rows(out_dir, everything, tracker.images), out_dir)
    return metrics


def run_labels(cfg: DictConfig) -> tuple[str | None, list[str]]:
    """The tracker's job type (the experiment, else the method preset) and tags (the artefact being made)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    artefact = OmegaConf.select(cfg, "report.name")
    return choices.get("experiment") or choices.get("method"), [artefact] if artefact else []


def objective(cfg: DictConfig, metrics: dict | None) -> float | None:
    """The value of ``optimized_metric`` for a sweeper (Optuna maximises or minimises it; its direction lives in
    the sweeper's config); ``None`` when no metric is asked for. NaN when the run computed no metrics (a shard), so
    the sweeper records the trial as failed rather than stopping.

    Raises:
        ConfigError: the metric is not among the run's metrics (naming those that are).
    """
    name = cfg.get("optimized_metric")
    if not name:
        return None
    if metrics is None:
        return float("nan")
    if not isinstance(metrics.get(name), (int, float)):
        numeric = sorted(key for key, value in metrics.items() if isinstance(value, (int, float)))
        raise ConfigError(f"optimized_metric={name} is not a metric of this run; use one of {', '.join(numeric)}")
    return float(metrics[name])


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    return objective(cfg, run_entry_point(evaluate, cfg))


def cli() -> None:
    """``magicremover-evaluate``, the same command as ``python -m magicremover.experiments.evaluate``."""
    check_argv()
    quiet_sacct()
    main()


if __name__ == "__main__":
    cli()
