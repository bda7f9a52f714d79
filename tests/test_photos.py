"""Photos as people take them: the crop around a small object, several objects in one call, the photo's own data."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms
from pipelines import pipeline
from scipy import ndimage

from magicremover.errors import ConfigError, PromptError
from magicremover.fullsize import PasteSettings, choose_box, crop_box, mask_box, model_input, whole
from magicremover.images import psnr
from magicremover.toy.photos import toy_photo
from magicremover.toy.scenes import render_scene


def test_the_crop_box_is_a_grown_square_shifted_into_the_photo():
    assert crop_box((100, 100, 140, 120), (1000, 800), 64, 2.5) == (70, 60, 170, 160)  # 2.5 x 40 around the centre
    assert crop_box((0, 0, 10, 10), (1000, 800), 64, 2.5) == (0, 0, 64, 64)  # at least the model's side, shifted in
    assert crop_box((900, 700, 1000, 800), (1000, 800), 64, 2.5) == (750, 550, 1000, 800)
    assert crop_box((10, 10, 90, 50), (300, 100), 64, 2.5) == (0, 0, 200, 100)  # clamped where the photo is short
    assert mask_box(np.zeros((4, 4), bool)) is None
    assert mask_box(np.pad(np.ones((2, 3), bool), ((1, 1), (2, 0)))) == (2, 1, 5, 3)


def test_auto_crops_only_what_it_enlarges_and_says_why_it_did_not():
    settings, size = PasteSettings(strategy="auto"), (1280, 960)
    box, record = choose_box((600, 400, 680, 480), size, 64, settings, "mask")
    assert box == (540, 340, 740, 540) and record["used"] == "crop" and record["crop"] == list(box)
    for region, reason in (
        ((0, 0, 1200, 900), "covers most"),
        ((100, 100, 500, 400), "would not enlarge"),
        (None, "no object region"),
    ):
        box, record = choose_box(region, size, 64, settings, "located")
        assert box == whole(size) and record["used"] == "resize" and reason in record["reason"]
    box, record = choose_box((100, 100, 500, 400), size, 64, PasteSettings(strategy="crop"), "mask")
    assert record["used"] == "crop" and box == (0, 0, 1000, 960)  # asked for: cropped even when it barely helps
    assert choose_box((600, 400, 680, 480), size, 64, PasteSettings(strategy="resize"), "mask")[0] == whole(size)


def test_bad_strategy_and_margin_are_one_line_errors():
    with pytest.raises(ConfigError, match="paste.strategy=tile is not one of resize, crop, auto"):
        PasteSettings(strategy="tile")
    for margin in (0, -1, 0.5):
        with pytest.raises(ConfigError, match=f"paste.crop_margin={margin} must be at least 1"):
            PasteSettings(crop_margin=margin)


def test_a_small_object_in_a_large_photo_is_removed_at_full_resolution_by_auto(toy):
    # 1280x960, a glass disc of radius ~40 px on stripes; at 64² the squeezed photo shows it as a 2-px speck. The README
    # table has this photo and four others (the toy model's own inside PSNR caps the margin over the ceiling there).
    photo = toy_photo(10000000)
    inside, truth = np.asarray(photo.mask) > 127, np.asarray(photo.truth)
    squeezed = model_input(photo.truth, whole(photo.truth.size), 64).resize(photo.truth.size, Image.Resampling.BICUBIC)
    ceiling = psnr(np.asarray(squeezed), truth, inside)  # the best any resize output can be inside
    removal = pipeline(toy, method="magicremover")(photo.image, photo.phrase, photo.caption, mask=photo.mask)
    out = np.asarray(removal.image)
    framing = removal.record["framing"]
    assert framing["used"] == "crop" and framing["region_from"] == "mask" and removal.record["box"] == framing["crop"]
    assert psnr(out, truth, inside) >= ceiling + 3, (psnr(out, truth, inside), ceiling)
    # The final mask is on the model's 64² grid over the crop: one model pixel of slack around the user's mask.
    cell = (removal.record["box"][2] - removal.record["box"][0]) / 64
    grown = ndimage.distance_transform_edt(~inside) > removal.record["paste_back"]["dilate_px"] + cell
    assert np.array_equal(out[grown], np.asarray(photo.image)[grown])


def test_two_objects_go_in_one_call_and_every_target_is_checked_first(toy):
    pipe = pipeline(toy)
    scene = next(s for s in map(render_scene, range(10000000, 10000100)) if len(s.objects) == 2)
    a, b = scene.objects
    before = toy.calls.totals()
    with pytest.raises(PromptError, match="dog"):
        pipe(Image.fromarray(scene.image), [a.phrase, "dog"], scene.caption)
    assert toy.calls.totals() == before  # refused before any UNet call
    with pytest.raises(ConfigError, match="one mask per target"):
        pipe(Image.fromarray(scene.image), [a.phrase, b.phrase], scene.caption, mask=Image.new("L", (64, 64)))
    removal = pipe(Image.fromarray(scene.image), [a.phrase, b.phrase], scene.caption)
    out = np.asarray(removal.image)
    for obj in (a, b):
        region = obj.shadow_mask > 0
        assert psnr(out, scene.empty, region) > psnr(scene.image, scene.empty, region) + 5, obj.phrase
    assert removal.record["targets"] == [a.phrase, b.phrase] and len(removal.record["passes"]) == 2
    assert all(p["extras"]["target_tokens"] for p in removal.record["passes"])
    assert [p.record["target"] for p in removal.passes] == [a.phrase, b.phrase] and all(p.mask for p in removal.passes)


def _icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.fixture(scope="module")
def lama_pipe(lama_weights, toy):
    return pipeline(toy, f"weights.lama={lama_weights}", "weights.lama_md5=null", method="lama")


def test_exif_orientation_icc_and_alpha_survive_to_the_saved_output(lama_pipe, tmp_path, example_image):
    from magicremover.outputs import save_image

    upright = example_image.resize((96, 64))
    mask = Image.new("L", (96, 64))
    mask.paste(255, (30, 20, 60, 44))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "PhoneMaker"  # rotate 90° clockwise to view; a maker tag that must survive
    jpeg, icc = tmp_path / "photo.jpg", _icc()  # a profile embeds its creation time: build it once
    upright.transpose(Image.Transpose.ROTATE_90).save(jpeg, quality=95, exif=exif, icc_profile=icc)
    removal = lama_pipe(jpeg, "circle", mask=mask)
    save_image(removal.image, tmp_path / "out.png")
    saved = Image.open(tmp_path / "out.png")
    assert saved.size == (96, 64) and saved.info.get("icc_profile") == icc
    assert saved.getexif()[0x0112] == 1 and saved.getexif()[0x010F] == "PhoneMaker"
    assert removal.record["photo"]["icc_profile"] and "written as 1" in removal.record["photo"]["exif"]

    rgba = upright.convert("RGBA")
    alpha = Image.linear_gradient("L").resize((96, 64))
    rgba.putalpha(alpha)
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    out = lama_pipe(Image.open(io.BytesIO(buffer.getvalue())), "circle", mask=mask)
    assert out.image.mode == "RGBA" and np.array_equal(np.asarray(out.image.getchannel("A")), np.asarray(alpha))
    assert out.record["photo"]["alpha"] == "kept untouched"
