import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from PIL import Image

from magicremover.errors import ConfigError, ImageError, UserError
from magicremover.experiments._cli import run_entry_point
from magicremover.experiments.remove import remove

ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path, *overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose(
            "remove",
            overrides=[f"out_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", "device=cpu", *overrides],
        )


def test_remove_writes_images_and_a_record_with_hand_counted_calls(tmp_path):
    cfg = _config(tmp_path, "num_inference_steps=3", "inversion=negative_prompt", "method=reconstruction")
    payload = remove(cfg, Path(cfg.out_dir))
    run = Path(cfg.out_dir)
    assert Image.open(run / "output.png").size == (64, 64) and (run / "reconstruction.png").is_file()
    record = json.loads((run / "result.json").read_text())
    assert record == json.loads(json.dumps(payload))
    # negative-prompt inversion: 3 DDIM-inversion calls (b1); reconstruction: 3 CFG calls (b2)
    calls = {stage: (c["calls"], c["samples"]) for stage, c in record["unet_calls"].items()}
    assert calls == {"inversion": (3, 3), "reconstruction": (3, 6)}
    assert record["config"]["num_inference_steps"] == 3 and record["config"]["inversion"]["method"] == "negative_prompt"
    again = remove(cfg, Path(cfg.out_dir))  # cached inversion: only the reconstruction runs
    assert set(again["unet_calls"]) == {"reconstruction"} and again["extras"]["inversion_from_cache"]


def test_a_target_list_on_the_command_line_removes_each_object_with_one_shared_inversion(tmp_path):
    from magicremover.toy.scenes import render_scene

    scene = render_scene(10000000)  # a two-object scene
    Image.fromarray(scene.image).save(tmp_path / "scene.png")
    words = ",".join(f"'{o.phrase}'" for o in scene.objects)
    cfg = _config(
        tmp_path,
        f"image={tmp_path / 'scene.png'}",
        f'prompt="{scene.caption}"',
        f"target=[{words}]",
        "num_inference_steps=5",
        "inversion=negative_prompt",
    )
    payload = remove(cfg, Path(cfg.out_dir))
    assert payload["targets"] == [o.phrase for o in scene.objects] and {"mask_0", "mask_1"} <= payload["files"].keys()
    assert payload["unet_calls"]["inversion"]["calls"] == 5  # the second pass read the first one's inversion
    assert payload["passes"][1]["extras"]["inversion_from_cache"]


def test_default_method_writes_every_artefact_and_ablations_are_one_key(tmp_path):
    cfg = _config(tmp_path, "num_inference_steps=10", "inversion=negative_prompt", "experiment=ablation_no_sag")
    assert cfg.method.self_attention_guidance is False and cfg.method.relax_constraints is True
    payload = remove(cfg, Path(cfg.out_dir))
    assert set(payload["files"]) == {"output", "reconstruction", "attention", "mask"}
    for name in payload["files"].values():
        assert Image.open(Path(cfg.out_dir) / name).size == (64, 64)
    assert payload["extras"]["target_tokens"] == [[6]]
    paper = _config(tmp_path, "method=magicremover_paper", "experiment=ablation_no_classifier_opt")
    assert (paper.method.loss, paper.method.classifier_optimization, paper.method.blend) == ("relaxed_l1", False, False)


def test_user_errors_exit_2_with_one_line(tmp_path, capsys):
    cfg = _config(tmp_path, "target=dog", "num_inference_steps=2")
    with pytest.raises(SystemExit) as info:
        run_entry_point(remove, cfg)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: target 'dog' is not in the prompt") and "\n" not in err
    assert not (Path(cfg.out_dir) / "result.json").exists()


def test_model_errors_raised_inside_instantiate_are_unwrapped(tmp_path, capsys):
    cfg = _config(tmp_path, "model=local", f"model.path={tmp_path}")
    with pytest.raises(SystemExit):
        run_entry_point(remove, cfg)
    assert capsys.readouterr().err.strip().startswith(f"error: model.path={tmp_path} lacks unet/")


def test_unknown_config_key_is_refused(tmp_path):
    with pytest.raises(ConfigCompositionException, match="num_inference_step"):
        _config(tmp_path, "num_inference_step=3")


def test_readme_main_command_runs_offline(tmp_path):
    env = os.environ | {"MAGICREMOVER_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "magicremover.experiments.remove", "num_inference_steps=10"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (run,) = (tmp_path / "outputs" / "remove").iterdir()
    assert {"output.png", "reconstruction.png", "attention.png", "mask.png", "result.json"} <= {
        p.name for p in run.iterdir()
    }
    assert (run / ".hydra" / "config.yaml").is_file()


def test_a_folder_of_mixed_sizes_runs_resumes_and_writes_grids(tmp_path, example_image, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    sizes = {"a": (64, 64), "b": (96, 64), "c": (64, 128), "d": (150, 100)}
    for name, size in sizes.items():
        example_image.resize(size).save(photos / f"{name}.png")
    example_image.resize((120, 80)).save(photos / "e.jpg", quality=95)
    (photos / "notes.txt").write_text("not a photo")
    targets = tmp_path / "targets.jsonl"
    targets.write_text(json.dumps({"image": "d.png", "target": "circle", "prompt": "a photo of a red circle"}) + "\n")
    cfg = _config(
        tmp_path,
        f"image={photos}",
        f"targets={targets}",
        "grid=true",
        "num_inference_steps=5",
        "inversion=negative_prompt",
    )
    with caplog.at_level("INFO", logger="magicremover"):
        summary = remove(cfg, Path(cfg.out_dir))
    run = Path(cfg.out_dir)
    assert summary == {"photos": 5, "done": 5, "failed": 0}
    for name, size in sizes.items() | {("e", (120, 80))}:
        assert Image.open(run / f"{name}.png").size == size
        grid = Image.open(run / f"{name}_grid.png")
        assert grid.height == size[1] and grid.width == 3 * size[0]
    records = {r["sample_id"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}
    assert records["d"]["prompt"] == "a photo of a red circle" and records["a"]["prompt"] == "a photo of a circle"
    assert all(r["status"] == "ok" and r["mode"] == "full_size" for r in records.values())
    assert "photos 5/5 (100%)" in caplog.text and "ETA" in caplog.text
    # A rerun does nothing; a new photo is the only one to run.
    stamp = (run / "a.png").stat().st_mtime_ns
    assert remove(cfg, run) == {"photos": 5, "done": 5, "failed": 0}
    example_image.save(photos / "f.png")
    assert remove(cfg, run) == {"photos": 6, "done": 6, "failed": 0}
    assert (run / "a.png").stat().st_mtime_ns == stamp
    assert len((run / "results.jsonl").read_text().splitlines()) == 6


def test_folder_mode_refuses_clashing_names_and_unknown_targets_before_running(tmp_path, example_image):
    photos = tmp_path / "photos"
    photos.mkdir()
    example_image.save(photos / "x.png")
    example_image.save(photos / "x.jpg")
    cfg = _config(tmp_path, f"image={photos}")
    with pytest.raises(ConfigError, match="would both write x.png; rename one"):
        remove(cfg, Path(cfg.out_dir))
    (photos / "x.jpg").unlink()
    table = tmp_path / "targets.csv"
    table.write_text("image,target,prompt\nx.png,square,a photo of a red circle\n")
    cfg = _config(tmp_path, f"image={photos}", f"targets={table}")
    with pytest.raises(UserError, match="x.png: target 'square' is not in the prompt 'a photo of a red circle'"):
        remove(cfg, Path(cfg.out_dir))
    assert not (Path(cfg.out_dir) / "x.png").exists()
    table.write_text("image,prompt\nx.png,a photo of a red circle\n")
    with pytest.raises(ConfigError, match="targets.csv line 2: each row needs 'image' and 'target'"):
        remove(cfg, Path(cfg.out_dir))
    with pytest.raises(ConfigError, match="is for one photo; leave it out in folder mode"):
        remove(_config(tmp_path, f"image={photos}", f"mask={photos / 'x.png'}"), tmp_path / "run")
    with pytest.raises(ImageError, match="no image files"):
        remove(_config(tmp_path, f"image={tmp_path / 'empty*'}"), tmp_path / "run")


@pytest.mark.parametrize("folder_mode", [False, True])
def test_an_unusable_out_dir_fails_before_any_weights_load(tmp_path, example_image, folder_mode):
    """Weights that cannot load would fail second: the out_dir check must come first (it once came after the compute)."""
    taken = tmp_path / "taken"
    taken.write_text("a file where the run folder should go")
    photos = tmp_path / "photos"
    photos.mkdir()
    example_image.save(photos / "x.png")
    image = photos if folder_mode else photos / "x.png"
    cfg = _config(tmp_path, f"image={image}", "model=local", f"model.path={tmp_path / 'no-weights'}")
    cfg.out_dir = str(taken)
    with pytest.raises(ConfigError, match=f"out_dir={taken} is a file; give a folder"):
        remove(cfg, taken)
    assert taken.read_text() == "a file where the run folder should go"


def test_a_photo_that_cannot_be_read_costs_that_photo_and_is_retried(tmp_path, example_image):
    photos = tmp_path / "photos"
    photos.mkdir()
    example_image.save(photos / "good.png")
    (photos / "broken.png").write_bytes(b"not a png")
    cfg = _config(tmp_path, f"image={photos}", "num_inference_steps=2", "inversion=negative_prompt")
    run = Path(cfg.out_dir)
    assert remove(cfg, run) == {"photos": 2, "done": 2, "failed": 1}
    records = {r["sample_id"]: r for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())}
    assert (records["broken"]["status"], records["broken"]["stage"]) == ("error", "load")
    assert records["broken"]["error_type"] == "ImageError" and records["good"]["output"] == "good.png"
    example_image.save(photos / "broken.png")  # fixed: the rerun tries it again, and only it
    assert remove(cfg, run) == {"photos": 2, "done": 2, "failed": 0}
    assert Image.open(run / "broken.png").size == example_image.size
