"""The photo path never damages a photo silently: pixels beyond the mask are the input's bytes, colour and alpha, in
every mode the loader accepts; a mask is read by its own rule; a crop ends in no seam; several passes blend once."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms, ImageDraw
from pipelines import pipeline

from magicremover.errors import ConfigError, ImageError
from magicremover.images import load_mask
from magicremover.outputs import save_image
from magicremover.toy.photos import toy_photo

SIZE = (96, 72)


@pytest.fixture(scope="module")
def lama(lama_weights, toy):
    """LaMa (random weights) at the toy model's 64²: it changes every pixel under the mask and nothing else."""
    overrides = [f"weights.lama={lama_weights}", "weights.lama_md5=null", "resolution=64", "method.mask_dilation=3"]
    return pipeline(toy, *overrides, method="lama")


def _disc_mask(size=SIZE, box=(30, 20, 62, 50)) -> Image.Image:
    mask = Image.new("L", size)
    ImageDraw.Draw(mask).ellipse(box, fill=255)
    return mask


def _colours(size=SIZE, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


# --- masks -----------------------------------------------------------------------------------------------------------


def test_a_mask_painted_on_transparency_is_read_by_its_alpha_never_composited_over_white(tmp_path, lama):
    size, box = (320, 240), (150, 100, 182, 130)
    disc = np.asarray(_disc_mask(size, box))
    la = np.stack([np.zeros_like(disc), disc], axis=-1)  # black everywhere; the alpha marks the object
    Image.fromarray(la).save(tmp_path / "la.png")
    white_strokes = np.dstack([np.full((*disc.shape, 3), 255, np.uint8), disc])  # white paint on transparency
    Image.fromarray(white_strokes).save(tmp_path / "rgba.png")
    for name in ("la.png", "rgba.png"):
        assert np.array_equal(np.asarray(load_mask(tmp_path / name)), disc), name
    Image.fromarray(_colours(size)).save(tmp_path / "photo.png")
    removal = lama(tmp_path / "photo.png", "circle", mask=tmp_path / "la.png")
    assert removal.record["framing"]["region"] == [150, 100, 183, 131]  # the disc's box, not the whole photo
    assert 0 < removal.record["paste_back"]["replaced_fraction"] < 0.1

    opaque = np.dstack([np.repeat(disc[..., None], 3, -1), np.full_like(disc, 255)])  # grey levels, alpha unused
    assert np.array_equal(np.asarray(load_mask(Image.fromarray(opaque))), disc)
    both = np.dstack([np.repeat(disc[..., None], 3, -1), 255 - disc // 2])
    with pytest.raises(ImageError, match="^the mask has both transparency and grey levels.*save it as grey"):
        load_mask(Image.fromarray(both))


# --- every mode ------------------------------------------------------------------------------------------------------


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def cmyk_profile() -> bytes:
    """A CMYK ICC profile (v2, lut16) whose conversion is known in closed form: linear sRGB = 1 − (C + K) / 2 (and M,
    Y for green, blue). Linear in every ink, so lcms' interpolation is exact; no CMYK profile ships with Pillow."""
    d50_from_srgb = np.array(
        [[0.4360747, 0.3850649, 0.1430804], [0.2225045, 0.7168786, 0.0606169], [0.0139322, 0.0971045, 0.7141733]]
    )
    grid = [d50_from_srgb @ (1 - (np.array(cmy) + k) / 2) for *cmy, k in np.ndindex(2, 2, 2, 2)]
    clut = [round(v * 32768) for xyz in grid for v in xyz]  # lut16's XYZ: 1.0 is 0x8000
    lut = b"mft2" + bytes(4) + bytes([4, 3, 2, 0]) + b"".join(_s15(v) for v in np.eye(3).ravel())
    lut += struct.pack(">HH8H", 2, 2, *[0, 65535] * 4) + struct.pack(f">{len(clut)}H", *clut)
    lut += struct.pack(">6H", *[0, 65535] * 3)
    name = b"test CMYK\0"
    desc = b"desc" + bytes(4) + struct.pack(">I", len(name)) + name + bytes(8 + 3 + 67)
    white = b"XYZ " + bytes(4) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    tags = [(b"desc", desc), (b"wtpt", white), (b"A2B0", lut)]
    offset, table, data = 128 + 4 + 12 * len(tags), struct.pack(">I", len(tags)), b""
    for signature, body in tags:
        body += bytes(-len(body) % 4)
        table += signature + struct.pack(">II", offset + len(data), len(body))
        data += body
    header = struct.pack(">I4sI", offset + len(data), bytes(4), 0x02100000) + b"prtrCMYKXYZ " + bytes(12) + b"acsp"
    header += bytes(68 - len(header)) + _s15(0.9642) + _s15(1.0) + _s15(0.8249)
    return header + bytes(128 - len(header)) + table + data


def cmyk_reference(cmyk: np.ndarray) -> np.ndarray:
    """:func:`cmyk_profile`'s conversion of ``(H, W, 4)`` uint8 inks to sRGB bytes, by its formula."""
    inks = cmyk / 255
    linear = 1 - (inks[..., :3] + inks[..., 3:]) / 2
    encoded = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    return np.round(encoded * 255)


def _png16_rgb(path, rgb16: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (PIL cannot write one)."""
    height, width, _ = rgb16.shape
    raw = b"".join(b"\0" + row.astype(">u2").tobytes() for row in rgb16)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def _photo_file(tmp_path, mode: str):
    """A photo of ``mode`` saved to a file, and the pixels its output must keep (mode, array) beyond the mask."""
    rgb = _colours()
    grey = rgb.mean(-1).astype(np.uint8)
    band = np.full(grey.shape, 255, np.uint8)
    band[:, :24] = 128  # a semi-transparent band
    band[:4] = 0  # and a transparent strip
    path = tmp_path / f"photo-{mode.replace(';', '')}.png"
    if mode == "RGB16":
        _png16_rgb(path, rgb.astype(np.uint16) * 257 + 3)
        return path, Image.open(path).convert("RGB")  # PIL reads 8 bits: those are the bytes there are
    if mode == "CMYK":
        path = path.with_suffix(".tif")
        Image.fromarray(rgb).convert("CMYK").save(path, icc_profile=cmyk_profile())
        reread = Image.open(path)
        srgb = ImageCms.createProfile("sRGB")
        return path, ImageCms.profileToProfile(reread, io.BytesIO(cmyk_profile()), srgb, outputMode="RGB")
    image = {
        "RGB": lambda: Image.fromarray(rgb),
        "RGBA": lambda: Image.fromarray(np.dstack([rgb, band])),
        "L": lambda: Image.fromarray(grey),
        "LA": lambda: Image.fromarray(np.dstack([grey, band])),
        "P": lambda: Image.fromarray(rgb).quantize(64),
        "P+transparency": lambda: Image.fromarray(np.dstack([rgb, band // 255 * 255])).quantize(64),
        "1": lambda: Image.fromarray(grey > 127),
        "I;16": lambda: Image.fromarray(grey.astype(np.uint16) * 250 + np.arange(grey.shape[1], dtype=np.uint16)),
        "I": lambda: Image.fromarray(grey.astype(np.int32) * 1000),
        "F": lambda: Image.fromarray(grey.astype(np.float32)),
    }[mode]()
    if mode in ("I", "F"):
        path = path.with_suffix(".tif")
    image.save(path)
    reread = Image.open(path)
    kept = {"P": "RGB", "P+transparency": "RGBA", "1": "L"}.get(mode)
    if mode == "I":
        values = np.asarray(reread, dtype=np.float64)  # above 16 bits: scaled by 255 / the maximum
        return path, Image.fromarray(np.round(values * 255 / values.max()).astype(np.uint8))
    if mode == "F":
        return path, Image.fromarray(np.asarray(reread).round().astype(np.uint8))
    return path, reread.convert(kept) if kept else reread


MODES = ["RGB", "RGBA", "L", "LA", "P", "P+transparency", "1", "I;16", "I", "F", "CMYK", "RGB16"]


@pytest.mark.parametrize("mode", MODES)
def test_pixels_beyond_the_mask_are_the_inputs_bytes_colour_and_alpha_in_every_mode(tmp_path, lama, mode):
    path, kept = _photo_file(tmp_path, mode)
    removal = lama(path, "circle", mask=_disc_mask())
    save_image(removal.image, tmp_path / "out.png")
    out = Image.open(tmp_path / "out.png")
    out.load()
    assert out.mode == kept.mode and out.size == SIZE
    expected, written = np.asarray(kept), np.asarray(out)
    untouched = removal.alpha == 0
    assert untouched.mean() > 0.6 and (~untouched).any()
    assert np.array_equal(written[untouched], expected[untouched])  # colour and alpha, byte for byte
    if kept.mode in ("RGBA", "LA"):
        assert np.array_equal(written[..., -1], expected[..., -1])  # alpha untouched under the mask too
    changed = written[removal.alpha == 1] != expected[removal.alpha == 1]
    assert changed.any()  # the object's pixels did change
    assert (removal.record["photo"]["converted"] is None) == (
        mode in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16", "P+transparency")
    )


def test_an_rgba_array_and_a_tensor_come_back_in_their_own_mode_untouched_beyond_the_mask(lama):
    rgba = np.dstack([_colours(), np.full(SIZE[::-1], 128, np.uint8)])
    removal = lama(rgba, "circle", mask=np.asarray(_disc_mask()) > 0)
    out = np.asarray(removal.image)
    assert removal.image.mode == "RGBA" and np.array_equal(out[removal.alpha == 0], rgba[removal.alpha == 0])
    tensor = torch.from_numpy(_colours()).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
    removal = lama(tensor[None], "circle", mask=_disc_mask())
    assert removal.image.size == SIZE and removal.image.mode == "RGB"
    with pytest.raises(ImageError, match="^an image must be a path, a PIL image, a numpy array or a torch tensor"):
        lama([[0, 1]], "circle", mask=_disc_mask())
    with pytest.raises(ConfigError, match=r"^target=None: give a word of the prompt"):
        lama(rgba, None)


# --- colour profiles -------------------------------------------------------------------------------------------------


def _profile_space(image: Image.Image) -> str | None:
    icc = image.info.get("icc_profile")
    return ImageCms.ImageCmsProfile(io.BytesIO(icc)).profile.xcolor_space.strip() if icc else None


def test_a_cmyk_jpeg_is_converted_through_its_profile_and_no_output_carries_a_foreign_profile(tmp_path, lama):
    jpeg = tmp_path / "cmyk.jpg"
    Image.fromarray(_colours()).convert("CMYK").save(jpeg, quality=98, icc_profile=cmyk_profile())
    removal = lama(jpeg, "circle", mask=_disc_mask())
    save_image(removal.image, tmp_path / "out.png")
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "RGB" and _profile_space(out) == "RGB"  # sRGB, which the pixels now are
    expected = cmyk_reference(np.asarray(Image.open(jpeg)))
    untouched = removal.alpha == 0
    assert np.abs(np.asarray(out)[untouched] - expected[untouched]).max() <= 1
    assert "through its ICC profile to sRGB" in removal.record["photo"]["converted"]

    grey = Image.fromarray(_colours().mean(-1).astype(np.uint8))
    grey.save(tmp_path / "grey-cmyk.png", icc_profile=cmyk_profile())  # a profile of the wrong colour space
    removal = lama(tmp_path / "grey-cmyk.png", "circle", mask=_disc_mask())
    save_image(removal.image, tmp_path / "grey-out.png")
    out = Image.open(tmp_path / "grey-out.png")
    assert out.mode == "L" and _profile_space(out) is None
    assert removal.record["photo"]["icc_profile"] == "dropped: a CMYK profile does not describe a L output"


# --- framing and compositing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(4000, 3000), (6000, 4000)])
def test_a_crop_on_a_large_photo_blends_to_zero_inside_the_crop_and_leaves_no_seam(toy, size):
    photo = toy_photo(10000000, size=size, scale=3.125)
    removal = pipeline(toy, "num_inference_steps=10")(photo.image, photo.phrase, photo.caption, mask=photo.mask)
    assert removal.record["framing"]["used"] == "crop"
    left, top, right, bottom = removal.record["box"]
    feather = removal.record["paste_back"]["feather_px"]
    alpha = removal.alpha
    assert (alpha[top, left:right] == 0).all() and (alpha[bottom - 1, left:right] == 0).all()
    assert (alpha[top:bottom, left] == 0).all() and (alpha[top:bottom, right - 1] == 0).all()
    step = max(np.abs(np.diff(alpha, axis=0)).max(), np.abs(np.diff(alpha, axis=1)).max())
    assert step <= 1 / max(feather, 1) + 1e-6  # a ramp, never a jump
    out, inp = np.asarray(removal.image).astype(int), np.asarray(photo.image).astype(int)
    assert np.array_equal(out[alpha == 0], inp[alpha == 0])
    assert (out != inp).any()
    # The symptom: the mean change jumped from 0 to 27.5 across the crop's first column.
    jumps = np.abs(out - inp).mean(axis=(0, 2))
    assert jumps[left] == 0 and jumps[right - 1] == 0


def test_two_passes_over_one_object_equal_one_pass_so_the_feather_is_weighted_once(toy, example_image):
    pipe = pipeline(toy, "num_inference_steps=6", "paste.strategy=resize")
    photo = example_image.resize((160, 120))
    once = pipe(photo, "circle", "a photo of a red circle")
    twice = pipe(photo, ["circle", "circle"], "a photo of a red circle")
    ring = (once.alpha > 0) & (once.alpha < 1)
    assert ring.any() and np.array_equal(np.asarray(twice.image), np.asarray(once.image))


def test_a_tiny_mask_says_what_happened(toy, caplog):
    photo = toy_photo(10000000)
    speck = Image.new("L", photo.image.size)
    speck.putpixel((900, 420), 255)
    with caplog.at_level("WARNING", logger="magicremover"):
        removal = pipeline(toy, "num_inference_steps=6", "paste.strategy=crop")(photo.image, photo.phrase, mask=speck)
    assert np.array_equal(np.asarray(removal.image), np.asarray(photo.image))
    assert "nothing was changed" in removal.record["paste_back"]["warning"] and "nothing was changed" in caplog.text
    with pytest.raises(ImageError, match=r"^the mask's 1 marked pixel\(s\) vanish .*\(paste.strategy=crop\)$"):
        pipeline(toy, "paste.strategy=resize")(photo.image, photo.phrase, mask=speck)


def test_a_method_without_a_mask_warns_that_it_replaced_the_whole_photo(toy, example_image, caplog):
    pipe = pipeline(toy, "num_inference_steps=2", "inversion=negative_prompt", method="reconstruction")
    with caplog.at_level("WARNING", logger="magicremover"):
        removal = pipe(example_image.resize((128, 96)), "circle")
    assert removal.record["paste_back"]["applied"] is False and "pass mask=" in removal.record["paste_back"]["warning"]
    assert "gives no mask" in caplog.text and removal.alpha is None
    masked = pipe(example_image.resize((128, 96)), "circle", mask=_disc_mask((128, 96)))
    assert masked.record["paste_back"]["applied"] is True and (masked.alpha == 0).mean() > 0.5
