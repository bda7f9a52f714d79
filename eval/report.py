"""Tables and figures of a finished sweep, from the ``metrics.json`` each of its runs wrote (never from W&B).

A sweep folder holds one run folder per configuration (``<sweep>/<run>/metrics.json``). An artefact spec (the
``report:`` node of ``conf/artefact/*.yaml``) names the rows, the metric columns, the paper's numbers and the figure;
:func:`render` writes ``<name>.md``, ``<name>.tex``, ``<name>.png``, ``<name>.json`` and the comparison grid
``<name>_grid.png`` (samples × input | attention | each run's output) into the sweep folder.
:class:`ReportCallback` does so when a Hydra multirun ends; ``python -m magicremover.experiments.report`` redraws any time.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from magicremover.errors import ConfigError
from magicremover.eval.manifest import read_manifests

log = logging.getLogger(__name__)


def collect(sweep_dir: str | Path) -> dict[str, dict]:
    """``{run name: metrics}`` of every run folder with a ``metrics.json``, in name order."""
    sweep = Path(sweep_dir)
    if not sweep.is_dir():
        raise ConfigError(f"sweep_dir={sweep} is not a folder; point it at a finished sweep (hydra.sweep.dir)")
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(sweep.glob("*/metrics.json"))}


def row_labels(sweep_dir: str | Path, runs: Mapping[str, dict], spec: Mapping[str, Any]) -> dict[str, str]:
    """``{run name: label}`` in display order: the spec's rows first, then any other run, labelled by the config
    value ``label_from`` names (e.g. ``method.lambda_``) when the spec gives one, else by its folder name. With a
    numeric figure axis (``figure.x``) rows are sorted by their labels' values."""
    names = [name for name in spec["rows"] if name in runs] + [name for name in runs if name not in spec["rows"]]
    labels = {}
    for name in names:
        label = spec["rows"].get(name)
        config = Path(sweep_dir) / name / "config.yaml"
        if label is None and spec.get("label_from") and config.is_file():
            label = OmegaConf.select(OmegaConf.load(config), spec["label_from"])
        labels[name] = str(label if label is not None else name)
    if (spec.get("figure") or {}).get("x"):  # a numeric axis: rows in its order
        labels = dict(sorted(labels.items(), key=lambda item: float(item[1])))
    return labels


def table(
    runs: Mapping[str, dict], labels: Mapping[str, str], spec: Mapping[str, Any]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows (formatted strings), one per run in ``labels``' order."""
    columns = dict(spec["columns"])
    paper = dict(spec.get("paper") or {})
    header = (
        [spec.get("row_header", "Method"), *columns.values()]
        + ([f"{spec.get('paper_label', 'paper')}"] if paper else [])
        + ["N"]
    )
    rows = []
    for name, label in labels.items():
        metrics = runs[name]
        row = [label, *(_format(metrics.get(key)) for key in columns)]
        if paper:
            row.append(_format(paper.get(name)))
        rows.append(row + [str(metrics.get("ok", ""))])
    return header, rows


def _format(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown(header: list[str], rows: list[list[str]], title: str, notes: list[str]) -> str:
    lines = [f"**{title}**", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines + [""] + [f"- {note}" for note in notes]) + "\n"


def latex(header: list[str], rows: list[list[str]], title: str) -> str:
    symbols = {"_": r"\_", "%": r"\%", "&": r"\&", "λ": r"$\lambda$", "↓": r"$\downarrow$", "–": "--"}
    escape = lambda text: "".join(symbols.get(char, char) for char in text)  # noqa: E731
    body = [" & ".join(escape(cell) for cell in row) + r" \\" for row in rows]
    return (
        "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                rf"\caption{{{escape(title)}}}",
                rf"\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}",
                r"\toprule",
                " & ".join(escape(cell) for cell in header) + r" \\",
                r"\midrule",
                *body,
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
            ]
        )
        + "\n"
    )


def figure(runs: Mapping[str, dict], labels: Mapping[str, str], spec: Mapping[str, Any]):
    """A matplotlib figure: per metric of ``figure.metrics`` that some run has, a bar chart (one bar per row) or, with
    ``figure.x``, a line over the rows' numeric labels. ``None`` when no run has any of those metrics."""
    import matplotlib.pyplot as plt

    settings = spec["figure"]
    names = list(labels)
    metrics = [key for key in settings["metrics"] if any(runs[name].get(key) is not None for name in names)]
    if not metrics:
        return None
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, key in zip(axes[0], metrics):
        values = [runs[name].get(key) if runs[name].get(key) is not None else math.nan for name in names]
        if settings.get("x"):
            xs = [float(labels[name]) for name in names]
            order = sorted(range(len(xs)), key=xs.__getitem__)
            ax.plot([xs[i] for i in order], [values[i] for i in order], marker="o")
            ax.set_xlabel(settings["x"])
        else:
            ax.bar(range(len(values)), values)
            ax.set_xticks(range(len(values)), list(labels.values()), rotation=30, ha="right", fontsize=8)
        ax.set_title(spec["columns"].get(key, key), fontsize=9)
    fig.suptitle(spec["title"], fontsize=10)
    fig.tight_layout()
    return fig


def grid_rows(sweep_dir: str | Path, labels: Mapping[str, str], samples: int = 4) -> list[dict]:
    """The comparison grid's rows: the first ``samples`` sample ids (in name order) that every run finished and
    whose fitted input some run kept (``inputs/<id>.png``); per row the input, the target's attention as a heat map
    over it (from the first run that made one) and every run's output, keyed by the runs' labels."""
    from magicremover.images import to_pil, to_tensor
    from magicremover.outputs import heatmap

    sweep = Path(sweep_dir)
    finished = [{k for k, r in read_manifests(sweep / name).items() if r.get("status") == "ok"} for name in labels]
    common = sorted(set.intersection(*finished)) if finished else []
    rows = []
    for sample_id in common:
        inputs = [sweep / name / "inputs" / f"{sample_id}.png" for name in labels]
        inputs = [path for path in inputs if path.is_file()]
        if not inputs:
            continue
        image = Image.open(inputs[0]).convert("RGB")
        row = {"sample_id": sample_id, "input": image}
        maps = [sweep / name / "attentions" / f"{sample_id}.png" for name in labels]
        maps = [path for path in maps if path.is_file()]
        if maps:
            attention = to_tensor(Image.open(maps[0]).convert("RGB").resize(image.size))[:, :1]
            row["attention"] = to_pil(heatmap(attention, to_tensor(image)))
        for name, label in labels.items():
            row[label] = Image.open(sweep / name / "outputs" / f"{sample_id}.png").convert("RGB")
        rows.append(row)
        if len(rows) == samples:
            break
    return rows


def grid_figure(rows: list[dict], title: str):
    """Rows = samples, columns = input | attention | each run's output, as in the paper's Fig. 6 and Fig. 8."""
    import matplotlib.pyplot as plt

    columns = [key for key in rows[0] if key != "sample_id"]
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.7 * len(columns), 1.7 * len(rows) + 0.5), squeeze=False
    )
    for r, row in enumerate(rows):
        for c, key in enumerate(columns):
            ax = axes[r][c]
            ax.imshow(row.get(key) or Image.new("RGB", row["input"].size, "white"))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(key, fontsize=8)
        axes[r][0].set_ylabel(row["sample_id"], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def render(sweep_dir: str | Path, spec: Mapping[str, Any], tracker=None) -> dict[str, Path]:
    """Write the artefact's markdown and LaTeX tables, figure, comparison grid and JSON summary into ``sweep_dir``,
    and hand them to ``tracker`` (a W&B run of the report) when one is given; returns the paths."""
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    sweep = Path(sweep_dir)
    runs = collect(sweep)
    if not runs:
        raise ConfigError(
            f"no run in {sweep} has a metrics.json yet; finish the sweep (or run evaluate metrics_only=true)"
        )
    labels = row_labels(sweep, runs, spec)
    header, rows = table(runs, labels, spec)
    samples = sum(m.get("ok", 0) for m in runs.values())
    inversions = sum(m.get("inversions", 0) for m in runs.values())
    notes = [
        f"{len(runs)} runs, {samples} finished samples in all, {inversions} inversions (the cache shares the rest)",
        *(spec.get("notes") or []),
    ]
    settings = next((m["fid_settings"] for m in runs.values() if "fid_settings" in m), None)
    if settings:
        notes.append("FID: " + ", ".join(f"{k} {v}" for k, v in settings.items()))
    name = spec["name"]
    paths = {kind: sweep / f"{name}.{kind}" for kind in ("md", "tex", "png", "json")}
    paths["md"].write_text(markdown(header, rows, spec["title"], notes))
    paths["tex"].write_text(latex(header, rows, spec["title"]))
    import matplotlib

    matplotlib.use("Agg")  # files only: this also runs inside cluster jobs without a display
    fig = figure(runs, labels, spec)
    if fig is None:
        paths.pop("png")
    else:
        fig.savefig(paths["png"], dpi=120)
        matplotlib.pyplot.close(fig)
    rows = grid_rows(sweep, labels, int((spec.get("grid") or {}).get("samples", 4)))
    if rows:
        fig = grid_figure(rows, spec["title"])
        paths["grid"] = sweep / f"{name}_grid.png"
        fig.savefig(paths["grid"], dpi=150)
        matplotlib.pyplot.close(fig)
    summary = {"artefact": name, "runs": runs, "inversions": inversions, "samples": samples}
    paths["json"].write_text(json.dumps(summary, indent=2))
    log.info(
        "%s: %d runs, %d inversions; wrote %s", name, len(runs), inversions, ", ".join(str(p) for p in paths.values())
    )
    if tracker is not None:
        tracker.log_report(sweep, name, paths, rows)
    return paths


class ReportCallback(Callback):
    """Renders the artefact into the sweep folder when a Hydra multirun ends (``hydra.callbacks.report``)."""

    def __init__(self, spec: Mapping[str, Any]):
        self.spec = spec

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        tracker = instantiate(config.logger) if OmegaConf.select(config, "logger._target_") else None
        render(config.hydra.sweep.dir, self.spec, tracker)
