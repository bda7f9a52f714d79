import pytest
import torch
from PIL import Image, ImageDraw

from magicremover.baselines.sd_inpaint import SDInpaint
from magicremover.errors import ImageError, ModelLoadError
from magicremover.types import RemovalSample


def _sample(with_mask=True):
    image = Image.new("RGB", (64, 64), (40, 120, 200))
    ImageDraw.Draw(image).ellipse([16, 16, 40, 40], fill=(220, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).ellipse([16, 16, 40, 40], fill=255)
    return RemovalSample(image, "a photo of a red circle", "circle", mask=mask if with_mask else None)


def test_runs_at_the_requested_size_deterministically(inpaint_dir):
    remover = SDInpaint(path=str(inpaint_dir), num_inference_steps=2, resolution=64, mask_dilation=4, device="cpu")
    first, second = remover(_sample()), remover(_sample())
    assert first.image.shape == (1, 3, 64, 64) and torch.equal(first.image, second.image)
    assert first.mask.shape == (1, 1, 64, 64) and first.mask.sum() > (25 * 25 * 0.785)  # dilated hole


def test_paste_back_keeps_unmasked_pixels(inpaint_dir):
    from magicremover.images import fit_to_model

    remover = SDInpaint(path=str(inpaint_dir), num_inference_steps=2, resolution=64, paste_back=True, device="cpu")
    result = remover(_sample())
    keep = (result.mask == 0).expand(1, 3, 64, 64)
    assert torch.equal(result.image[keep], fit_to_model(_sample().image, 64)[keep])
    plain = SDInpaint(path=str(inpaint_dir), num_inference_steps=2, resolution=64, device="cpu")(_sample())
    assert not torch.equal(plain.image[keep], fit_to_model(_sample().image, 64)[keep])  # the VAE round trip drifts


def test_errors(inpaint_dir, tiny, tmp_path):
    remover = SDInpaint(path=str(inpaint_dir), num_inference_steps=2, resolution=64, device="cpu")
    with pytest.raises(ImageError, match="SD-Inpaint needs a mask"):
        remover(_sample(with_mask=False))
    tiny.save_pretrained(tmp_path / "plain")
    with pytest.raises(ModelLoadError, match="4-channel UNet, not an inpainting model"):
        SDInpaint(path=str(tmp_path / "plain"), device="cpu")
    with pytest.raises(ModelLoadError, match="pass method.path=DIR"):
        SDInpaint(device="cpu")  # the hub id is not cached and the hub is unreachable
