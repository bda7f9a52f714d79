"""fid_local: the crop rule by hand, and the score against an independent Fréchet distance on the same crops."""

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import linalg

from magicremover.eval.local_crop import local_box, local_crop


def _mask(box, shape=(64, 64)):
    mask = np.zeros(shape, np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 255
    return mask


def test_the_crop_is_the_grown_square_moved_inside_the_image():
    # A 24 × 12 box centred at (x 30, y 20): side 24 × 1.5 = 36, centred, inside.
    assert local_box(_mask((14, 18, 26, 42))) == (12, 2, 48, 38)
    # A 6-px box at the top-left corner: side 32 (the minimum), moved to start at 0.
    assert local_box(_mask((0, 0, 6, 6))) == (0, 0, 32, 32)
    # A box near the bottom-right edge: moved left and up, not shrunk.
    assert local_box(_mask((50, 54, 64, 64))) == (32, 32, 64, 64)
    # A box wider than the image allows: the crop is the whole (square) image.
    assert local_box(_mask((10, 0, 40, 64))) == (0, 0, 64, 64)
    assert local_box(np.zeros((64, 64), np.uint8)) is None


def _frechet(a, b):
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def test_fid_local_equals_an_independent_frechet_distance_on_the_crops():
    from magicremover.eval.authors import Sample
    from magicremover.eval.features import TinyFeatures
    from magicremover.eval.scores import SetScores

    rng = np.random.default_rng(0)
    features = TinyFeatures(dim=8, seed=3)
    scores = SetScores(features=features, batch_size=7)
    crops = {"original": [], "output": []}
    for i in range(30):
        original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        output = np.clip(original.astype(int) + rng.integers(-40, 40, original.shape), 0, 255).astype(np.uint8)
        mask = _mask((5 + i, 10, 25 + i, 30 + i % 7))
        scores.add(Sample(str(i), output, original, None, "dog", object_mask=mask))
        box = local_box(mask)
        for key, image in (("original", original), ("output", output)):
            cut = Image.fromarray(image).crop(box).resize((64, 64), Image.BICUBIC)
            crops[key].append(np.asarray(cut))
    scores.add(Sample("unmasked", output, original, None, "dog", mask=None))  # in the global FID only
    report = scores.compute()
    feats = {k: features(torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2)).double().numpy() for k, v in crops.items()}
    assert report["fid_local"] == pytest.approx(_frechet(feats["original"], feats["output"]), rel=1e-6)
    assert report["fid_settings"]["n_local"] == 30 and report["fid_settings"]["n"] == 31
    assert np.array_equal(
        local_crop(original, (0, 0, 32, 32)),
        np.asarray(Image.fromarray(original[:32, :32]).resize((64, 64), Image.BICUBIC)),
    )
