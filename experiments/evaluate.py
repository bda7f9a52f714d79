"""Run a remover over a dataset, resumably, and compute metrics.

    python -m experiments.evaluate method=magicremover data=toy out_dir=runs/toy_magic
    python -m experiments.evaluate method=lama weights.lama=big-lama.pt data=toy out_dir=runs/toy_lama

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
import logging
import os
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from tqdm.auto import tqdm

from eval.metrics import ground_truth_metrics
from eval.scores import SetScores
from experiments._cli import build_remover, log, run_entry_point
from magicremover.errors import ConfigError, UserError
from magicremover.images import fit_mask, fit_to_model, load_image, to_pil
from magicremover.outputs import atomic_write, save_image

logger = logging.getLogger(__name__)


def read_manifests(out_dir: Path) -> dict[str, dict]:
    """Finished samples by id, from every shard's manifest; a torn last line (a crash mid-write) is ignored."""
    done = {}
    for manifest in sorted(out_dir.glob("manifest*.jsonl")):
        for line in manifest.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[record["sample_id"]] = record
    return done


def _append(manifest: Path, record: dict) -> None:
    with open(manifest, "a") as stream:
        stream.write(json.dumps(record) + "\n")
        stream.flush()
        os.fsync(stream.fileno())


def run_samples(cfg: DictConfig, out_dir: Path, dataset, remover) -> None:
    """Remove the object of every sample not yet in a manifest; failures are recorded and the run goes on."""
    shards = (cfg.data.num_shards, cfg.data.shard_index)
    manifest = out_dir / (
        "manifest.jsonl" if shards[0] == 1 else f"manifest-shard{shards[1]:03d}-of-{shards[0]:03d}.jsonl"
    )
    done = read_manifests(out_dir)
    retry = lambda sample_id: cfg.retry_errors and done[sample_id]["status"] != "ok"  # noqa: E731
    todo = [i for i, sample_id in enumerate(dataset.ids) if sample_id not in done or retry(sample_id)]
    for index in tqdm(todo, desc="samples", disable=None):
        sample_id = dataset.ids[index]
        try:
            result = remover(dataset[index].sample)
        except UserError as err:
            _append(manifest, {"sample_id": sample_id, "status": "error", "error": str(err)})
            logger.warning("%s failed: %s", sample_id, err)
            continue
        files = {}
        for kind, image in (("output", result.image), ("reconstruction", result.reconstruction),
                            ("attention", result.attention), ("mask", result.mask)):  # fmt: skip
            if image is not None:
                (out_dir / f"{kind}s").mkdir(exist_ok=True)
                save_image(image, out_dir / f"{kind}s" / f"{sample_id}.png")
                files[kind] = f"{kind}s/{sample_id}.png"
        _append(manifest, {
            "sample_id": sample_id, "status": "ok", **files,
            "unet_calls": {k: v.calls for k, v in result.calls.items()},
            "unet_backward": {k: v.backward for k, v in result.calls.items()},
            "seconds": result.seconds.get("total", sum(result.seconds.values())),
            "extras": result.extras,
        })  # fmt: skip


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
        scores.add(output, original, reconstruction, item.category or item.sample.target)
        if dataset.has_ground_truth:
            region = fit_mask(
                Image.fromarray((item.region * 255).astype(np.uint8)), source.size, output.shape[:2], framing
            )
            rows.append(
                ground_truth_metrics(output, original, fit(load_image(item.ground_truth)), region[0, 0].numpy())
            )
    if rows:
        report |= {key: float(np.nanmean([row[key] for row in rows])) for key in rows[0]}
    report |= scores.compute()
    calls = [sum(record["unet_calls"].values()) for record in done.values() if record["status"] == "ok"]
    if calls:
        report["unet_calls_per_sample"] = float(np.mean(calls))
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
    """Run (unless ``metrics_only``), then write ``metrics.json`` once every sample is finished. Metric extractors are
    loaded first, so missing weights fail before any sample runs; a tracking failure never loses results."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = functools.partial(instantiate, cfg.data)
    scores = instantiate(cfg.metrics)
    tracker = instantiate(cfg.logger)
    tracker.start(OmegaConf.to_container(cfg, resolve=True), out_dir)
    if not cfg.metrics_only:
        dataset = data(num_shards=cfg.data.num_shards, shard_index=cfg.data.shard_index)
        # Refuse a dataset that lacks what the method needs before loading any weights.
        missing = set(getattr(get_class(cfg.method._target_), "requires", ())) - set(dataset.provides)
        if missing:
            raise ConfigError(
                f"method {cfg.method._target_} needs {', '.join(sorted(missing))}, which data={cfg.data._target_} does not provide"
            )
        remover = build_remover(cfg)
        atomic_write(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
        run_samples(cfg, out_dir, dataset, remover)
    everything = data(num_shards=1, shard_index=0)
    if len(read_manifests(out_dir)) < len(everything.ids) and not cfg.metrics_only:
        log.info("shard finished; metrics wait for the other shards (or run with metrics_only=true)")
        tracker.finish(None, [])
        return None
    metrics = compute_metrics(out_dir, everything, cfg.resize, scores, cfg.reconstructions_from)
    atomic_write(out_dir / "metrics.json", json.dumps(metrics, indent=2).encode())
    log.info("metrics: %s", json.dumps(metrics))
    tracker.finish(metrics, table_rows(out_dir, everything, tracker.images))
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_entry_point(evaluate, cfg)


if __name__ == "__main__":
    main()
