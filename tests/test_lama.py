import hashlib

import pytest
import torch
from PIL import Image, ImageDraw

from magicremover.baselines.lama import AttentionLaMa, LaMa, file_md5
from magicremover.errors import ImageError, ModelLoadError
from magicremover.images import dilate
from magicremover.inversion import InversionConfig
from magicremover.types import RemovalSample


@pytest.fixture(scope="module")
def weights(lama_weights):
    return lama_weights


def _sample(size=(60, 60), with_mask=True):
    image = Image.effect_noise(size, 40).convert("RGB")
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle([20, 20, 35, 35], fill=255)
    return RemovalSample(image, "a photo of noise", "noise", mask=mask if with_mask else None)


def test_output_size_range_and_known_pixels(weights):
    lama = LaMa(str(weights), md5=None, mask_dilation=5, resolution=60)  # 60 is not a multiple of 8
    sample = _sample()
    result = lama(sample)
    assert result.image.shape == (1, 3, 60, 60) and 0 <= result.image.min() and result.image.max() <= 1
    from magicremover.images import fit_to_model, load_image

    image = fit_to_model(load_image(sample.image), 60)
    known = (result.mask == 0).expand(1, 3, 60, 60)
    assert torch.equal(result.image[known], image[known])  # known pixels pasted back exactly
    assert result.mask.sum() == (16 + 4) ** 2  # the 16x16 hole grown by a 5x5 square kernel


def test_empty_hole_returns_the_input(weights):
    lama = LaMa(str(weights), md5=None, mask_dilation=0, resolution=64)
    image = torch.rand(1, 3, 64, 64)
    assert torch.equal(lama.inpaint(image, torch.zeros(1, 1, 64, 64)), image)


def test_dilation_matches_a_square_kernel():
    mask = torch.zeros(1, 1, 9, 9)
    mask[..., 4, 4] = 1
    assert dilate(mask, 3).sum() == 9 and dilate(mask, 3)[..., 3:6, 3:6].all()
    assert torch.equal(dilate(mask, 0), mask)


def test_checksum_and_missing_weights_are_reported(weights, tmp_path):
    assert file_md5(weights) == hashlib.md5(weights.read_bytes()).hexdigest()
    with pytest.raises(ModelLoadError, match="has MD5 .* not the expected e3aa4aaa15225a33ec84f9f4bc47e500"):
        LaMa(str(weights))
    with pytest.raises(ModelLoadError, match="method.weights=/nope/big-lama.pt does not exist"):
        LaMa("/nope/big-lama.pt")
    with pytest.raises(ModelLoadError, match="set weights.lama="):
        LaMa(None)
    with pytest.raises(ModelLoadError, match="could not download http://127.0.0.1:9/big-lama.pt"):
        LaMa("http://127.0.0.1:9/big-lama.pt", cache_dir=tmp_path, allow_http=True)  # a closed loopback port


def test_mask_is_required_and_must_fit(weights):
    lama = LaMa(str(weights), md5=None, resolution=64)
    with pytest.raises(ImageError, match="LaMa needs a mask"):
        lama(_sample(with_mask=False))
    bad = _sample()
    with pytest.raises(ImageError, match="the mask is 30x30 but the image is 60x60"):
        lama(RemovalSample(bad.image, bad.prompt, bad.target, mask=bad.mask.resize((30, 30))))


def test_attention_mask_to_lama(tiny, example_image, weights):
    lama = LaMa(str(weights), md5=None, mask_dilation=0)
    remover = AttentionLaMa(tiny, InversionConfig(method="negative_prompt", num_inference_steps=5), lama)
    result = remover(RemovalSample(example_image, "a photo of a red circle on horizontal stripes", "circle"))
    assert result.image.shape == (1, 3, 64, 64) and set(result.mask.unique().tolist()) <= {0.0, 1.0}
    assert {k: v.calls for k, v in result.calls.items()} == {"inversion": 5, "attention_mask": 1}


def test_lama_through_the_cli_without_loading_a_diffusion_model(weights, tmp_path, example_image):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    from magicremover.experiments.remove import remove

    mask = Image.new("L", example_image.size, 0)
    ImageDraw.Draw(mask).ellipse([20, 20, 44, 44], fill=255)
    mask.save(tmp_path / "mask.png")
    root = Path(__file__).resolve().parents[1]
    with initialize_config_dir(version_base="1.3", config_dir=str(root / "conf")):
        cfg = compose(
            "remove",
            overrides=[
                "method=lama",
                f"method.weights={weights}",
                "method.md5=null",
                "method.resolution=64",
                f"mask={tmp_path / 'mask.png'}",
                f"out_dir={tmp_path / 'run'}",
                "model=local",
                "model.path=/nonexistent",
            ],
        )
    payload = remove(cfg, Path(cfg.out_dir))  # model=local with a bad path would fail if it were loaded
    assert set(payload["files"]) == {"output", "mask"} and payload["unet_calls"] == {}
