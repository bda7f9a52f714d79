import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from magicremover.errors import ConfigError, ImageError
from magicremover.images import fit_to_model, load_image, to_pil, to_tensor


def _save(tmp_path, image, name="image.png", **kwargs):
    path = tmp_path / name
    image.save(path, **kwargs)
    return path


def test_rgba_is_composited_over_white(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    image = load_image(_save(tmp_path, rgba))
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (255, 0, 0) and image.getpixel((5, 5)) == (255, 255, 255)


def test_grey_palette_and_16_bit_images_become_rgb(tmp_path):
    assert load_image(_save(tmp_path, Image.new("L", (16, 16), 77))).getpixel((3, 3)) == (77, 77, 77)
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert load_image(_save(tmp_path, palette)).getpixel((0, 0)) == (10, 20, 30)
    deep = Image.fromarray(np.full((16, 16), 257 * 100, dtype=np.uint16))
    assert load_image(_save(tmp_path, deep)).getpixel((1, 1)) == (100, 100, 100)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    path = _save(tmp_path, image, "rotated.jpg", exif=exif.tobytes())
    assert load_image(path).size == (20, 40)


def test_stretch_is_bilinear_without_antialias_and_ignores_aspect(example_image):
    wide = example_image.resize((96, 48))
    out = fit_to_model(wide, 64, "stretch")
    expected = F.interpolate(to_tensor(wide), size=(64, 64), mode="bilinear", align_corners=False)
    assert out.shape == (1, 3, 64, 64) and torch.allclose(out, expected)


def test_center_crop_keeps_the_middle():
    image = Image.new("RGB", (90, 30), (0, 0, 255))
    image.paste((255, 0, 0), (30, 0, 60, 30))  # red central square, blue sides
    out = fit_to_model(image, (32, 32), "center_crop")
    assert out.shape == (1, 3, 32, 32) and out[0, 0].mean() > 0.95 and out[0, 2].mean() < 0.05
    with pytest.raises(ConfigError, match="resize='squash' is not one of"):
        fit_to_model(image, 32, "squash")


def test_pil_round_trip_is_lossless(example_image):
    assert np.array_equal(np.asarray(to_pil(to_tensor(example_image))), np.asarray(example_image))


def test_unusable_files_get_one_line_errors(tmp_path):
    with pytest.raises(ImageError, match="does not exist; pass image=PATH"):
        load_image(tmp_path / "missing.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="is not an image PIL can read"):
        load_image(text)
    full = _save(tmp_path, Image.effect_noise((64, 64), 50).convert("RGB"), "full.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        load_image(truncated)
    with pytest.raises(ImageError, match="4x4; images must be at least 8 px"):
        load_image(_save(tmp_path, Image.new("RGB", (4, 4)), "tiny.png"))
