"""ReMOVE: its crop rule against the vendored original, the mask on SAM's grid, the score against an independent
computation on a tiny random SAM of the real architecture, and the metric in a run's scores."""

import numpy as np
import pytest
import torch
from oracles.remove_crop import find_smallest_bounding_square
from PIL import Image

from magicremover.eval.remove_score import TINY_SAM, RemoveScore, bounding_square, grid_masks, load_remove_score


def _mask(shape, box):
    mask = np.zeros(shape, np.uint8)
    top, left, bottom, right = box
    mask[top:bottom, left:right] = 255
    return mask


@pytest.mark.parametrize(
    "shape, box",
    [
        ((96, 96), (30, 40, 50, 55)),
        ((96, 128), (2, 60, 30, 70)),
        ((80, 64), (50, 3, 79, 40)),
        ((64, 64), (0, 0, 64, 10)),
        ((120, 90), (100, 70, 118, 89)),
    ],
)
def test_the_crop_is_removes_own_bounding_square(shape, box):
    mask = _mask(shape, box)
    assert bounding_square(mask > 0) == tuple(int(v) for v in find_smallest_bounding_square(mask))


def test_on_a_square_crop_the_grid_mask_is_removes_and_on_a_tall_one_the_padding_is_in_neither():
    mask = _mask((80, 80), (10, 20, 50, 70))
    inside, outside = grid_masks(mask > 0, (64, 64), 64)
    reference = np.array(Image.fromarray(mask).resize((64, 64))).reshape((1, 1, 64, 64)) // 255  # ReMOVE's main.py
    assert torch.equal(inside, torch.from_numpy(reference[0, 0] == 1)) and torch.equal(outside, ~inside)
    # A 100 × 50 crop fills the left half of SAM's square: the right 32 columns are padding.
    tall = _mask((100, 50), (20, 10, 60, 45))
    inside, outside = grid_masks(tall > 0, (64, 32), 64)
    assert not inside[:, 32:].any() and not outside[:, 32:].any() and (inside | outside)[:, :32].all()
    rows, cols = np.nonzero(inside.numpy())
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (13, 37, 7, 27)  # cells wholly in the box × 64/100
    misplaced = np.array(Image.fromarray(tall).resize((64, 64))) // 255  # ReMOVE without the crop: stretched
    assert np.nonzero(misplaced)[1].max() > 50  # mask cells over SAM's padding, where no image is


@pytest.fixture(scope="module")
def sam_folder(tmp_path_factory):
    from transformers import SamConfig, SamModel

    vision = {**TINY_SAM, "initializer_range": 0.02}
    torch.manual_seed(0)
    model = SamModel(SamConfig(vision_config=vision))
    folder = tmp_path_factory.mktemp("sam")
    model.save_pretrained(folder)
    return folder


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (96, 120, 3), dtype=np.uint8)
    image[:, :60] //= 3  # the two halves differ, so inside and outside pool different features
    return image, _mask((96, 120), (30, 35, 60, 70))


def test_the_score_equals_an_independent_computation_on_a_tiny_sam(sam_folder):
    from transformers import SamModel

    image, mask = _scene()
    score = RemoveScore.from_folder(sam_folder)(image, mask)
    # ReMOVE's recipe step by step: its crop, SAM's input (longest side to 128 by PIL's bilinear resize, ImageNet
    # normalisation; a square crop, so no padding), its 64²-style grid mask (here 8²), mean features inside and
    # outside, their cosine.
    x, y, side = find_smallest_bounding_square(mask)
    crop = Image.fromarray(image[y : y + side, x : x + side]).resize((128, 128), Image.BILINEAR)
    pixels = (np.asarray(crop, np.float32) / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    model = SamModel.from_pretrained(sam_folder, local_files_only=True).eval()
    with torch.no_grad():
        features = model.get_image_embeddings(torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None])
    fg = np.array(Image.fromarray(mask[y : y + side, x : x + side]).resize((8, 8))).reshape((1, 1, 8, 8)) // 255
    pooled = [
        features[torch.as_tensor(m).bool().repeat((1, 16, 1, 1))].reshape((1, 16, -1)).mean(2) for m in (fg, 1 - fg)
    ]
    expected = torch.nn.functional.cosine_similarity(pooled[0], pooled[1]).item()
    assert fg.sum() > 0 and (1 - fg).sum() > 0
    assert score == pytest.approx(expected, abs=1e-6)
    assert -1 <= score <= 1 and score != pytest.approx(1.0, abs=1e-3)


def test_an_empty_mask_scores_none_and_a_missing_folder_names_the_fix(sam_folder, tmp_path):
    from magicremover.errors import ModelLoadError

    image, _ = _scene()
    assert RemoveScore.from_folder(sam_folder)(image, np.zeros(image.shape[:2], np.uint8)) is None
    assert load_remove_score(None) is None
    with pytest.raises(ModelLoadError, match=r"^weights.sam=.* is not a SAM model folder; save transformers' SamModel"):
        load_remove_score(tmp_path / "nowhere")


def test_run_scores_report_remove_score_for_outputs_and_inputs(sam_folder):
    from magicremover.eval.authors import Sample
    from magicremover.eval.scores import SetScores

    scorer = RemoveScore.from_folder(sam_folder)
    image, mask = _scene()
    filled = image.copy()
    filled[30:60, 35:70] = image[30:60, 75:110]  # the hole filled with its neighbourhood
    scores = SetScores(remove_score=scorer)
    scores.add(Sample("a", filled, image, None, "dog", object_mask=mask))
    scores.add(Sample("b", image, image, None, "dog", object_mask=None))  # no mask: not scored
    report = scores.compute()
    assert report["remove_score"] == pytest.approx(scorer(filled, mask))
    assert report["remove_score_input"] == pytest.approx(scorer(image, mask))
    assert report["remove_score_settings"]["n"] == 1 and report["remove_score_settings"]["sam"] == str(sam_folder)


def test_evaluate_writes_remove_score_when_weights_sam_is_a_folder(sam_folder, tmp_path):
    import json
    from pathlib import Path

    from magicremover.config import compose_config
    from magicremover.experiments import evaluate as ev

    cfg = compose_config(
        "evaluate",
        [
            f"out_dir={tmp_path / 'run'}",
            "cache_dir=null",
            "device=cpu",
            "data=toy",
            "data.size=3",
            "num_inference_steps=4",
            "inversion=negative_prompt",
            f"weights.sam={sam_folder}",
        ],
    )
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    assert json.loads((Path(cfg.out_dir) / "metrics.json").read_text())["remove_score"] == metrics["remove_score"]
    assert -1 <= metrics["remove_score"] <= 1 and -1 <= metrics["remove_score_input"] <= 1
    assert metrics["remove_score_settings"]["n"] == 3
