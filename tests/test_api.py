"""The one-call API on the toy model: full-size output, EXIF, inputs of every kind, the paper's square on request."""

import numpy as np
import pytest
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from magicremover import Pipeline, remove
from magicremover.config import build_remover, compose_config
from magicremover.errors import PromptError

FAST = ["inversion=negative_prompt", "num_inference_steps=20", "cache_dir=null", "device=cpu"]


@pytest.fixture(scope="module")
def pipe(toy):
    cfg = compose_config("remove", FAST)
    return Pipeline(cfg, build_remover(cfg, components=toy))


@pytest.fixture(scope="module")
def photo_1024(example_image, tmp_path_factory):
    """The example scene as a 1024x683 JPEG stored rotated, with EXIF orientation 6 (rotate 90° clockwise to view)."""
    upright = example_image.resize((1024, 683), Image.Resampling.BICUBIC)
    path = tmp_path_factory.mktemp("photo") / "scene.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    upright.transpose(Image.Transpose.ROTATE_90).save(path, quality=95, exif=exif)
    return path


def test_a_1024x683_jpeg_comes_back_at_its_size_untouched_beyond_the_dilated_mask(pipe, photo_1024):
    removal = pipe(photo_1024, "circle", "a photo of a red circle on horizontal stripes")
    upright = np.asarray(Image.open(photo_1024).transpose(Image.Transpose.ROTATE_270).convert("RGB"))
    out = np.asarray(removal.image)
    assert out.shape == (683, 1024, 3) and removal.record["mode"] == "full_size"
    assert np.array_equal(np.asarray(removal.input), upright)
    # Independently: the final mask M at the photo's size (nearest, so its edge may sit one model pixel = 16 px off),
    # grown by the recorded dilation: beyond that, every byte is the input's.
    dilate = removal.record["paste_back"]["dilate_px"]
    mask = F.interpolate(removal.result.mask, size=(683, 1024), mode="nearest")[0, 0].numpy() > 0.5
    far = ndimage.distance_transform_edt(~mask) > dilate + 16
    assert far.mean() > 0.3 and np.array_equal(out[far], upright[far])
    # Inside the object (the red circle) the output changed: the red is gone.
    red = (upright[..., 0] > 150) & (upright[..., 1] < 90) & (upright[..., 2] < 90)
    assert red.sum() > 5000 and out[red][:, 0].mean() < upright[red][:, 0].mean() - 40
    assert removal.mask.size == removal.attention.size == removal.reconstruction.size == (1024, 683)


def test_remove_takes_a_pil_image_in_one_call_with_the_coco_prompt(example_image):
    removal = remove(example_image.resize((96, 64)), target="circle", overrides=FAST)
    assert removal.image.size == (96, 64) and removal.record["prompt"] == "a photo of a circle"
    assert removal.record["paste_back"]["applied"] and 0 < removal.record["paste_back"]["replaced_fraction"] < 0.6


def test_numpy_input_and_the_papers_square(pipe, example_image):
    array = np.asarray(example_image.resize((80, 48)))
    square = pipe(array, "circle", full_size=False)
    assert square.image.size == (64, 64) and square.record["mode"] == "model" and "paste_back" not in square.record
    full = pipe(array.astype(np.float32) / 255, "circle")
    assert full.image.size == (80, 48)


def test_a_target_missing_from_the_prompt_is_one_line(pipe, example_image):
    with pytest.raises(PromptError, match="target .dog. is not in the prompt"):
        pipe(example_image, "dog", "a photo of a red circle")


def test_a_mask_runs_mask_mode_on_the_loaded_model_and_leaves_the_pipeline_text_only(pipe, example_image):
    photo = example_image.resize((96, 64))
    mask = np.zeros((64, 96), np.uint8)
    mask[15:50, 30:70] = 255
    removal = pipe(photo, "circle", mask=mask)
    assert pipe._mask_remover.settings.use_mask and not pipe.remover.settings.use_mask
    assert pipe._mask_remover.components is pipe.remover.components  # no second model load
    assert removal.image.size == (96, 64) and removal.record["paste_back"]["applied"]
