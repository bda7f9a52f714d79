import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from PIL import Image

from experiments._cli import run_entry_point
from experiments.remove import remove

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
        [sys.executable, "-m", "experiments.remove", "num_inference_steps=10"],
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
