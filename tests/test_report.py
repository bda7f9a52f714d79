"""Sweeps and paper artefacts: tables and figures from saved metrics.json files; a sweep inverts each image once."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from magicremover.config import compose_config
from magicremover.errors import ConfigError
from magicremover.eval.report import collect, render, row_labels, table

ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path, *args):
    env = os.environ | {"PYTHONPATH": str(ROOT), "MAGICREMOVER_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "magicremover.experiments.evaluate",
            "-m",
            *args,
            "device=cpu",
            "num_inference_steps=4",
            "inversion=negative_prompt",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _fake_sweep(root, runs):
    for name, (metrics, config) in runs.items():
        (root / name).mkdir(parents=True)
        (root / name / "metrics.json").write_text(json.dumps(metrics))
        (root / name / "config.yaml").write_text(config)
    return root


def test_tables_follow_the_spec_order_labels_and_paper_column(tmp_path):
    sweep = _fake_sweep(
        tmp_path / "sweep",
        {
            "lama": ({"fid_original": 8.123456, "ok": 10, "inversions": 0}, "method: {}\n"),
            "magicremover": (
                {"fid_original": 12.5, "fid_reconstruction": None, "ok": 10, "inversions": 10},
                "method: {}\n",
            ),
            "extra_run": ({"fid_original": 3.0, "ok": 9}, "method: {}\n"),
        },
    )
    spec = compose_config("report", ["artefact=table1", f"sweep_dir={sweep}"]).report
    runs = collect(sweep)
    header, rows = table(runs, row_labels(sweep, runs, spec), spec)
    assert header[:3] == ["Method", "FID (originals)", "FID (reconstructions)"] and header[-2:] == ["paper FID", "N"]
    assert [row[0] for row in rows] == ["LaMa", "MagicRemover w/o mask", "extra_run"]  # spec order, then the rest
    assert rows[0][1:3] == ["8.123", "–"] and rows[0][-2:] == ["8.44", "10"] and rows[2][-2] == "–"
    paths = render(sweep, spec)
    assert "| LaMa | 8.123 |" in paths["md"].read_text() and "10 inversions" in paths["md"].read_text()
    assert r"MagicRemover w/o mask & 12.5 & -- &" in paths["tex"].read_text()
    assert paths["png"].stat().st_size > 0 and json.loads(paths["json"].read_text())["inversions"] == 10


def test_numeric_sweeps_are_labelled_by_their_value_and_sorted(tmp_path):
    sweep = _fake_sweep(
        tmp_path / "sweep",
        {
            f"lambda_{value}": ({"psnr_out": value * 10, "ok": 2}, f"method:\n  lambda_: {value}\n")
            for value in (0.8, 0.2, 0.5)
        },
    )
    spec = compose_config("report", ["artefact=fig9", f"sweep_dir={sweep}"]).report
    runs = collect(sweep)
    assert list(row_labels(sweep, runs, spec).values()) == ["0.2", "0.5", "0.8"]
    assert render(sweep, spec)["png"].is_file()


def test_bad_sweep_folders_are_clear_errors(tmp_path):
    spec = compose_config("report", ["artefact=fig6", f"sweep_dir={tmp_path}"]).report
    with pytest.raises(ConfigError, match="is not a folder"):
        render(tmp_path / "missing", spec)
    with pytest.raises(ConfigError, match="no run in .* has a metrics.json"):
        render(tmp_path, spec)


def test_a_two_config_sweep_inverts_each_image_once_and_draws_its_artefact(tmp_path):
    sweep = tmp_path / "fig9"
    _sweep(tmp_path, "+artefact=fig9", f"hydra.sweep.dir={sweep}", "method.lambda_=0.3,0.7", "data.size=2")
    first, second = (json.loads((sweep / name / "metrics.json").read_text()) for name in ("lambda_0.3", "lambda_0.7"))
    assert (first["inversions"], second["inversions"]) == (2, 0)  # the second configuration reuses both
    summary = json.loads((sweep / "fig9.json").read_text())
    assert summary["inversions"] == 2 and summary["samples"] == 4
    assert "| 0.3 |" in (sweep / "fig9.md").read_text() and (sweep / "fig9.png").is_file()


@pytest.mark.slow  # 40 s; the sota command test covers the report path by default
def test_the_table1_command_produces_its_table_on_the_coco_fixture(
    tmp_path, coco_root, lama_weights, inpaint_dir, inst_inpaint_weights, bert_vocab
):
    sweep = tmp_path / "table1"
    _sweep(
        tmp_path,
        "+artefact=table1",
        f"hydra.sweep.dir={sweep}",
        "data=coco",
        f"data.root={coco_root}",
        "metrics=tiny",
        "resolution=64",
        f"weights.lama={lama_weights}",
        "weights.lama_md5=null",
        f"weights.sd_inpaint={inpaint_dir}",
        f"weights.inst_inpaint={inst_inpaint_weights}",
        f"weights.inst_inpaint_tokenizer={bert_vocab}",
    )
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in (sweep / "table1.md").read_text().splitlines()
        if line.startswith("| ")
    }
    assert set(rows) >= {"SD-Inpaint", "LaMa", "MagicRemover w mask", "Inst-Inpaint", "MagicRemover w/o mask"}
    for name in ("sd_inpaint", "lama", "magicremover_mask", "inst_inpaint", "magicremover"):
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        assert metrics["ok"] == 4 and metrics["fid_original"] is not None, name
        assert metrics["fid_reconstruction"] is not None, (
            name
        )  # baselines are scored against MagicRemover's reconstructions
        # beside the clean scores, the authors' files and crops: grids for MagicRemover, strips for the baselines
        layout = "grid" if name.startswith("magicremover") else "strip"
        assert metrics["authors_settings"]["layout"] == layout and metrics["fid_settings"]["protocol"] == "authors"
        assert None not in (metrics["authors_fid"], metrics["authors_fid_reconstruction"]), name
        width = {"grid": 2 * 64 + 6, "strip": 3 * 64}[layout]
        assert {Image.open(f).size for f in (sweep / name / "authors").glob("*.png")} == {
            (width, 64 + 4 * (layout == "grid"))
        }
    assert "| 8.44 | 4 |" in rows["LaMa"]  # the paper's number beside ours
    assert (sweep / "table1.tex").is_file() and (sweep / "table1.png").is_file()


def test_the_report_command_redraws_a_sweep_and_names_what_is_missing(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep", {"default": ({"clip_similarity": 20.0, "ok": 3}, "method: {}\n")})
    env = os.environ | {"PYTHONPATH": str(ROOT)}

    def run(*args):
        command = [sys.executable, "-m", "magicremover.experiments.report", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    done = run("artefact=fig6", f"sweep_dir={sweep}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| full | – | – | 20 |" in (sweep / "fig6.md").read_text()
    missing = run("artefact=fig6")
    assert (
        missing.returncode == 2
        and missing.stderr.strip() == "error: set sweep_dir=DIR, the folder of a finished sweep (its hydra.sweep.dir)"
    )


@pytest.mark.parametrize(
    "model", ["model=toy", pytest.param("model=tiny_xl", marks=pytest.mark.slow)], ids=["toy", "sdxl"]
)  # the SDXL rows: every UNet method on the tiny SDXL, LaMa and SD-Inpaint with their own weights (40 s)
def test_the_sota_command_compares_every_remover_on_the_same_samples(
    tmp_path, coco_root, lama_weights, inpaint_dir, model
):
    sweep = tmp_path / "sota"
    _sweep(
        tmp_path,
        "+artefact=sota",
        model,
        f"hydra.sweep.dir={sweep}",
        "data=coco",
        f"data.root={coco_root}",
        "data.size=2",
        "metrics=tiny",
        "resolution=64",
        f"weights.lama={lama_weights}",
        "weights.lama_md5=null",
        f"weights.sd_inpaint={inpaint_dir}",
    )
    lines = (sweep / "sota.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Method"))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and line != header}
    expected = {
        "MagicRemover",
        "MagicRemover (fast)",
        "Attentive Eraser (SIP)",
        "Attentive Eraser (DIP)",
        "LEDITS++",
        "LaMa",
        "SD-Inpaint",
    }
    assert expected <= set(rows) and "local FID" in header and "CLIP@1 ↑" in header
    for name in (
        "magicremover",
        "magicremover_fast",
        "attentive_eraser",
        "attentive_eraser_dip",
        "ledits_pp",
        "lama",
        "sd_inpaint",
    ):
        metrics = json.loads((sweep / name / "metrics.json").read_text())
        assert metrics["ok"] == 2 and None not in (metrics["fid_local"], metrics["clip_acc@1"]), name
    assert (sweep / "sota.tex").is_file() and (sweep / "sota_grid.png").is_file()
