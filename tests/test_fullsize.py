"""Full-size output: the model's square pasted back into the photo, untouched beyond the dilated mask."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from magicremover import fullsize
from magicremover.errors import ConfigError, ImageError
from magicremover.inputs import as_image
from magicremover.photo_meta import PhotoMeta


def _photo(width=300, height=200, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_alpha_is_one_on_the_mask_ramps_to_zero_at_the_dilated_edge_and_zero_beyond():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 6:10, 6:10] = 1  # the square 112.5–187.5 x 75–125 of a 300 x 200 photo
    settings = fullsize.PasteSettings(dilate=0.05, feather=0.03)  # 15 px, ramp 9 px
    alpha = fullsize.paste_alpha(mask, (300, 200), fullsize.whole((300, 200)), settings)
    assert alpha.shape == (200, 300) and settings.pixels((300, 200)) == (15, 9)
    assert alpha[100, 150] == 1 and alpha[100, 113 - 6] == 1  # inside, and within dilate - feather
    assert alpha[100, 112 - 16] == 0 and alpha[100, 0] == 0  # beyond 15 px
    ramp = alpha[100, 112 - 15 : 112 - 5]
    assert np.all(np.diff(ramp) >= 0) and 0 < ramp[3] < 1  # monotone ramp towards the mask
    # Independent check: every pixel with α > 0 lies within 15 px (+1 for the bilinear edge) of the mask.
    inside = np.zeros((200, 300), bool)
    inside[75:125, 112:188] = True
    far = ndimage.distance_transform_edt(~inside) > 16
    assert (alpha[far] == 0).all()


def test_composite_keeps_the_photo_bytes_wherever_alpha_is_zero_and_blends_once_elsewhere():
    photo = _photo()
    output = torch.rand(1, 3, 32, 32)
    alpha = np.zeros((200, 300), np.float32)
    alpha[50:120, 100:220] = np.linspace(0, 1, 120)[None, :]
    edit = fullsize.placed(photo, output, (0, 0, 300, 200))
    pasted = np.asarray(PhotoMeta(photo).composite(edit, alpha))
    original = np.asarray(photo)
    assert pasted.shape == original.shape
    assert np.array_equal(pasted[alpha == 0], original[alpha == 0])
    resized = np.asarray(
        Image.fromarray((output[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).resize(
            (300, 200), Image.Resampling.BICUBIC
        )
    )
    assert np.array_equal(np.asarray(edit), resized)
    blended = np.round(original + alpha[..., None] * (resized.astype(float) - original)).astype(np.uint8)
    assert np.array_equal(pasted, blended)


def test_box_placement_leaves_everything_outside_the_box_untouched():
    photo = _photo(200, 100)
    box = (50, 10, 150, 90)
    mask = torch.ones(1, 1, 8, 8)
    alpha = fullsize.paste_alpha(mask, photo.size, box, fullsize.PasteSettings())
    assert alpha[:, :50].max() == 0 and alpha[:, 150:].max() == 0 and alpha[20:80, 60:140].min() == 1
    heat = fullsize.full_size_map(torch.ones(1, 1, 8, 8), photo.size, box)
    assert heat.size == photo.size and np.asarray(heat)[:, :50].max() == 0


def test_model_input_is_antialiased_and_user_masks_must_match_the_photo():
    stripes = np.zeros((512, 512, 3), np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes alias to black or white under point sampling
    fitted = np.asarray(fullsize.model_input(Image.fromarray(stripes), (0, 0, 512, 512), 64))
    assert abs(fitted.mean() - 127.5) < 3 and fitted.std() < 10
    with pytest.raises(ImageError, match="the mask is 10x10 but the image is 300x200"):
        fullsize.model_mask(Image.new("L", (10, 10)), (300, 200), (0, 0, 300, 200), 64)


def test_paste_settings_and_image_arrays_are_checked():
    with pytest.raises(ConfigError, match="feather ≤ dilate"):
        fullsize.PasteSettings(dilate=0.01, feather=0.02)
    assert as_image(np.full((9, 12), 0.5)).getpixel((0, 0)) == (128, 128, 128)
    assert as_image(np.zeros((9, 12, 4), np.uint8)).size == (12, 9)
    with pytest.raises(ImageError, match=r"in \[0, 1\]"):
        as_image(np.full((9, 9, 3), 2.0))
    with pytest.raises(ImageError, match="shape"):
        as_image(np.zeros((9, 9, 2), np.uint8))
    with pytest.raises(ImageError, match="uint8, bool or float"):
        as_image(np.zeros((9, 9), np.int64))
