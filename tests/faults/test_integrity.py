"""Nothing silently wrong, and a bad sample costs one sample: settings and results are checked, every failure is
recorded with its type and stage, and a resume only continues what the same settings started."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from magicremover.errors import ConfigError, ImageError
from magicremover.eval.data import ToyDataset
from magicremover.experiments import evaluate as ev
from magicremover.experiments._cli import find_user_error
from magicremover.images import load_image
from magicremover.inversion import InversionCache, InversionConfig, invert_cached
from magicremover.inversion.core import Inversion


@pytest.mark.parametrize(
    "override, message",
    [
        ("guidance_scale=nan", "guidance_scale=nan must be a finite number"),
        ("guidance_scale=inf", "guidance_scale=inf must be a finite number"),
        ("method.guidance_weight=nan", "method.guidance_weight=nan must be a finite number"),
        ("inversion.lr=inf", "inversion.lr=inf must be a finite number"),
        ("num_inference_steps=1", "method.t_ratio=0.85 edits none of num_inference_steps=1 steps"),
        ("method=p2p_reweight method.factor=nan", "method.factor=nan must be a finite number"),
    ],
)
def test_bad_numbers_fail_before_any_unet_call(config, override, message):
    cfg = config(*override.split())
    with pytest.raises(Exception) as raised:  # Hydra wraps errors raised while instantiating; the CLI unwraps them
        ev.evaluate(cfg, Path(cfg.out_dir))
    assert isinstance(find_user_error(raised.value), ConfigError)
    assert str(find_user_error(raised.value)).startswith(message)
    assert not (Path(cfg.out_dir) / "manifest.jsonl").exists()


@pytest.mark.parametrize("size", [0, -3])
def test_data_size_must_be_positive(size):
    with pytest.raises(ConfigError, match=f"data.size={size} must be a positive number of samples"):
        ToyDataset(size=size)


def _wrap(monkeypatch, change):
    """Make the evaluation call ``change(sample, remover, first)`` instead of the remover (``first``: the run's first
    sample)."""
    real = ev.build_remover
    seen = []

    def wrapped(cfg):
        remover = real(cfg)

        def call(sample):
            seen.append(sample.sample_id)
            return change(sample, remover, sample.sample_id == seen[0])

        return call

    monkeypatch.setattr(ev, "build_remover", wrapped)


def test_a_non_finite_output_is_a_failed_sample_never_ok(config, monkeypatch):
    def poison(sample, remover, first):
        result = remover(sample)
        if first:
            result.image = torch.full_like(result.image, float("nan"))
        return result

    _wrap(monkeypatch, poison)
    cfg = config()
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    records = ev.read_manifests(Path(cfg.out_dir))
    failed = [r for r in records.values() if r["status"] == "error"]
    assert (metrics["ok"], metrics["errors"]) == (1, 1)
    assert failed[0]["stage"] == "output" and failed[0]["error_type"] == "NonFiniteError"
    assert not (Path(cfg.out_dir) / "outputs" / f"{failed[0]['sample_id']}.png").exists()


def test_any_exception_in_a_sample_is_recorded_and_the_run_goes_on(config, monkeypatch):
    def crash(sample, remover, first):
        if first:
            [][0]  # as pycocotools on an annotation with "segmentation": []
        return remover(sample)

    _wrap(monkeypatch, crash)
    cfg = config()
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    failed = [r for r in ev.read_manifests(Path(cfg.out_dir)).values() if r["status"] == "error"]
    assert (metrics["ok"], metrics["errors"]) == (1, 1) and (Path(cfg.out_dir) / "metrics.json").is_file()
    assert failed[0]["error_type"] == "IndexError" and failed[0]["error"] == "list index out of range"


def test_a_non_finite_inversion_is_an_error_and_never_cached(tiny, image_tensor, tmp_path, monkeypatch):
    import magicremover.inversion.cache as cache_module

    def broken(*args):
        inversion = real(*args)
        inversion.null_embeddings[3] = float("nan")
        return inversion

    real = cache_module.invert
    monkeypatch.setattr(cache_module, "invert", broken)
    cache = InversionCache(tmp_path)
    config = InversionConfig(method="null_text", num_inference_steps=4, inner_steps=1)
    with pytest.raises(ArithmeticError, match=r"null_embeddings has non-finite values \(stage: inversion\)"):
        invert_cached(tiny, image_tensor, "a photo of a dog", config, cache)
    assert not list(tmp_path.rglob("*.safetensors"))


def _cached_entry(tiny, image_tensor, tmp_path) -> tuple[InversionCache, InversionConfig, Inversion, Path]:
    cache, config = InversionCache(tmp_path), InversionConfig(method="negative_prompt", num_inference_steps=4)
    first = invert_cached(tiny, image_tensor, "a photo of a dog", config, cache)
    (path,) = tmp_path.rglob("*.safetensors")
    return cache, config, first, path


@pytest.mark.parametrize("damage", ["nan", "sign"])
def test_the_cache_verifies_content(tiny, image_tensor, tmp_path, damage, caplog):
    cache, config, first, path = _cached_entry(tiny, image_tensor, tmp_path)
    data = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    meta = json.loads(data[8:header])["trajectory_kept"]["data_offsets"]
    offset = header + meta[0] + 64  # a float32 inside the trajectory, inside a valid safetensors file
    if damage == "nan":
        data[offset : offset + 4] = np.array([np.nan], dtype=np.float32).tobytes()
    else:
        data[offset + 3] ^= 0x80  # the sign bit
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        again = invert_cached(tiny, image_tensor, "a photo of a dog", config, InversionCache(tmp_path))
    assert not again.from_cache and "does not match its digest" in caplog.text
    torch.testing.assert_close(again.trajectory, first.trajectory, rtol=0, atol=0, equal_nan=True)


def test_resume_refuses_other_settings_and_keeps_the_config(config):
    cfg = config("data.size=1")
    ev.evaluate(cfg, Path(cfg.out_dir))
    before = (Path(cfg.out_dir) / "config.yaml").read_text()
    other = config("data.size=1", "method.lambda_=0.5")
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(method.lambda_\)"):
        ev.evaluate(other, Path(other.out_dir))
    assert (Path(cfg.out_dir) / "config.yaml").read_text() == before
    grown = config("data.size=2", "data.num_shards=1")  # more samples, same settings: resumes
    assert ev.evaluate(grown, Path(grown.out_dir))["ok"] == 2
    forced = config("data.size=2", "method.lambda_=0.5", "resume=force")
    assert ev.evaluate(forced, Path(forced.out_dir))["ok"] == 2


def test_out_dir_problems_are_found_before_any_work(config, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    cfg = config()
    with pytest.raises(ConfigError, match="out_dir=.*/run is a file; give a folder"):
        ev.evaluate(cfg, Path(cfg.out_dir))
    below_a_file = config(f"out_dir={tmp_path / 'run' / 'sub'}")
    with pytest.raises(ConfigError, match="cannot be written"):
        ev.evaluate(below_a_file, Path(below_a_file.out_dir))


def test_decompression_bombs_and_animations(tmp_path, monkeypatch, caplog):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64² = 4,096 > 2 × 1,000: PIL's bomb error
    with pytest.raises(ImageError, match="big.png is too large to read safely"):
        load_image(tmp_path / "big.png")
    monkeypatch.undo()
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    with caplog.at_level(logging.WARNING):
        image = load_image(tmp_path / "anim.gif")
    assert "has 3 frames; using the first" in caplog.text and image.getpixel((0, 0))[0] > 200
