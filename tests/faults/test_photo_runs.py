"""The photo path's runs never leave stale or hidden results: folder mode with several targets and list files, a rerun
that would mix settings refused, every bad input one line, outputs readable by the project, each demo run its own."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magicremover.config import compose_config
from magicremover.errors import ConfigError
from magicremover.experiments._cli import run_dir, split_path_hint
from magicremover.experiments.folder_mode import read_targets
from magicremover.experiments.remove import remove
from magicremover.inversion.cache import cap_bytes
from magicremover.outputs import atomic_write
from magicremover.toy.scenes import render_scene

ROOT = Path(__file__).resolve().parents[2]
CHEAP = ["device=cpu", "num_inference_steps=2", "inversion=negative_prompt", "method=reconstruction"]


def _config(tmp_path, *overrides):
    return compose_config(
        "remove", [f"out_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *CHEAP, *overrides]
    )


@pytest.fixture
def two_object_photos(tmp_path):
    """A folder of two copies of a two-object toy scene, and the scene."""
    scene = next(s for s in map(render_scene, range(10000000, 10000100)) if len(s.objects) == 2)
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        Image.fromarray(scene.image).save(photos / f"{name}.png")
    return photos, scene


def test_folder_mode_removes_several_targets_per_photo_from_the_command_line_and_from_a_jsonl(
    tmp_path, two_object_photos
):
    photos, scene = two_object_photos
    words = [o.phrase for o in scene.objects]
    listed = ",".join(f"'{w}'" for w in words)
    cfg = _config(tmp_path, f"image={photos}", f"target=[{listed}]", f'prompt="{scene.caption}"')
    assert remove(cfg, Path(cfg.out_dir)) == {"photos": 2, "done": 2, "failed": 0}
    records = [json.loads(line) for line in (Path(cfg.out_dir) / "results.jsonl").read_text().splitlines()]
    assert [r["targets"] for r in records] == [words, words] and all(len(r["passes"]) == 2 for r in records)

    table = tmp_path / "targets.jsonl"
    table.write_text(json.dumps({"image": "a.png", "target": words, "prompt": scene.caption}) + "\n")
    cfg = _config(
        tmp_path,
        f"image={photos}",
        f"targets={table}",
        f"out_dir={tmp_path / 'jsonl'}",
        f"target='{words[0]}'",
        f'prompt="{scene.caption}"',
    )
    assert remove(cfg, Path(cfg.out_dir)) == {"photos": 2, "done": 2, "failed": 0}
    by_photo = {r["sample_id"]: r for r in map(json.loads, (tmp_path / "jsonl" / "results.jsonl").open())}
    assert by_photo["a"]["targets"] == words and by_photo["b"]["target"] == words[0]


def test_a_folder_rerun_with_another_target_or_method_is_refused_and_leaves_the_folder_as_it_was(
    tmp_path, example_image
):
    photos = tmp_path / "photos"
    photos.mkdir()
    example_image.save(photos / "x.png")
    cfg = _config(tmp_path, f"image={photos}")
    run = Path(cfg.out_dir)
    assert remove(cfg, run)["done"] == 1
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix != ".log"}
    for change, named in (
        ("target=stripes", "target or prompt of x"),
        ("method=magicremover_fast", "method"),
        ("paste.strategy=crop", "paste"),
    ):
        with pytest.raises(ConfigError, match=f"holds 1 finished photo\\(s\\) made with other settings \\({named}"):
            remove(_config(tmp_path, f"image={photos}", change), run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.suffix != ".log"} == before
    assert remove(cfg, run) == {"photos": 1, "done": 1, "failed": 0}  # the same settings resume
    (run / "x.png").unlink()  # deleting an output redoes it with the new settings
    assert remove(_config(tmp_path, f"image={photos}", "target=stripes"), run)["done"] == 1
    assert json.loads((run / "config.json").read_text())["target"] == "stripes"


def test_an_image_list_file_runs_folder_mode(tmp_path, example_image):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("one", "two"):
        example_image.save(photos / f"{name}.png")
    listing = tmp_path / "list.txt"
    listing.write_text("photos/one.png  # the first\nphotos/two.png\n")
    cfg = _config(tmp_path, f"image={listing}")
    assert remove(cfg, Path(cfg.out_dir)) == {"photos": 2, "done": 2, "failed": 0}


def test_target_files_with_a_byte_order_mark_lists_or_a_bad_line_read_right_or_name_the_line(tmp_path):
    csv = tmp_path / "targets.csv"
    csv.write_bytes("image,target,prompt\nx.png,dog|cat,a dog and a cat\n".encode("utf-8-sig"))
    assert read_targets(str(csv))["x.png"]["target"] == ("dog", "cat")
    jsonl = tmp_path / "targets.jsonl"
    jsonl.write_text('{"image": "a.png", "target": "dog"}\n\n{"image": "b.png", target: "cat"}\n')
    with pytest.raises(ConfigError, match=f"^{jsonl} line 3 is not JSON .*; fix or remove the line$"):
        read_targets(str(jsonl))
    jsonl.write_text('{"image": "a.png", "target": ["dog", 3]}\n')
    with pytest.raises(ConfigError, match="line 1: each row needs 'image' and 'target'"):
        read_targets(str(jsonl))


def test_bad_values_are_one_line_not_tracebacks():
    assert cap_bytes(float("inf")) is None and cap_bytes(2) == 2_000_000_000
    for value in (float("nan"), -1.0, 0):
        with pytest.raises(ConfigError, match=f"^cache_max_gb={value} must be a positive number"):
            cap_bytes(value)
    assert split_path_hint(["image=/tmp/my", "photos/a.png", "target=dog"]) == (
        "'photos/a.png' is not a key=value override: a path with spaces must be quoted, e.g. "
        'image="/tmp/my photos/a.png"'
    )
    assert split_path_hint(["image=a.png", "--cfg", "job"]) is None
    assert split_path_hint(["-m", "method=lama,sd_inpaint", "+x=1"]) is None


def test_outputs_follow_the_umask_so_a_shared_project_folder_can_read_them(tmp_path):
    old = os.umask(0o002)
    try:
        atomic_write(tmp_path / "a.png", b"x")
        assert (tmp_path / "a.png").stat().st_mode & 0o777 == 0o664
        os.umask(0o077)
        atomic_write(tmp_path / "b.png", b"x")
        assert (tmp_path / "b.png").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_the_cli_with_out_dir_writes_there_only_and_a_split_path_is_one_line(tmp_path, example_image):
    example_image.save(tmp_path / "my photo.png")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "magicremover.experiments.remove", "image=my photo.png", "out_dir=run", *CHEAP[1:]]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "outputs").exists() and (tmp_path / "run" / ".hydra").is_dir()
    assert (tmp_path / "run" / "output.png").is_file() and (tmp_path / "run" / "remove.log").is_file()
    split = [sys.executable, "-m", "magicremover.experiments.remove", "image=my", "photo.png"]
    done = subprocess.run(split, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: 'photo.png' is not a key=value override: a path with spaces must be quoted, e.g. image=\"my photo.png\""
    ]
    report = [sys.executable, "-m", "magicremover.experiments.report", f"sweep_dir={tmp_path / 'no-sweep'}"]
    subprocess.run(report, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert not (tmp_path / "report.log").exists()


def test_hydra_runs_in_out_dir_unless_it_cannot_be_made(tmp_path):
    assert run_dir(None, "outputs/x") == "outputs/x" and run_dir(str(tmp_path / "new" / "run"), "d").endswith("run")
    (tmp_path / "file").write_text("")
    assert run_dir(str(tmp_path / "file"), "outputs/x") == "outputs/x"  # the job then refuses it in one line


def test_queued_demo_runs_each_keep_their_own_output(tmp_path, example_image):
    pytest.importorskip("gradio")
    from magicremover.experiments.app import Demo

    cfg = compose_config("app", ["device=cpu", "cache_dir=null", "num_inference_steps=2"])
    demo = Demo(cfg, tmp_path / "app")
    files = [
        demo.run(example_image, "a photo of a red circle", ["circle"], "magicremover_fast", 2, 0.9, 0.5, "auto", None)[
            4
        ]
        for _ in range(3)
    ]
    assert len(set(files)) == 3 and all(Path(f).is_file() for f in files)
    assert len(list((tmp_path / "app").iterdir())) == 3


def test_the_api_takes_tensors_and_refuses_none_in_one_line(example_image):
    from magicremover import remove as api_remove

    tensor = torch.from_numpy(np.asarray(example_image)).permute(2, 0, 1)  # (3, H, W) uint8
    removal = api_remove(
        tensor,
        "circle",
        "a photo of a red circle",
        method="magicremover_fast",
        overrides=["num_inference_steps=2", "cache_dir=null"],
        device="cpu",
    )
    assert removal.image.size == example_image.size
    with pytest.raises(ConfigError, match="^target=None: give a word"):
        api_remove(tensor, None, method="magicremover_fast", overrides=["cache_dir=null"], device="cpu")
