import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image, ImageDraw

from eval.coco import CocoDataset
from experiments import evaluate as ev
from magicremover.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """A COCO-layout folder: RGB, grayscale and CMYK images; polygon and crowd-RLE annotations; categories with a
    two-word name ("fire hydrant": fire, hydr, ant) and a multi-token word ("surfboard": surf, board)."""
    root = tmp_path_factory.mktemp("coco")
    (root / "val2017").mkdir()
    (root / "annotations").mkdir()
    rgb = Image.new("RGB", (80, 60), (90, 120, 150))
    ImageDraw.Draw(rgb).rectangle([10, 10, 30, 40], fill=(200, 40, 40))
    rgb.save(root / "val2017" / "000000000001.jpg")
    Image.new("L", (64, 64), 128).save(root / "val2017" / "000000000002.png")
    Image.new("CMYK", (48, 48), (0, 80, 80, 0)).save(root / "val2017" / "000000000003.jpg")
    crowd = np.zeros((64, 64), dtype=np.uint8)
    crowd[20:40, 5:25] = 1
    counts, flat, value, run = [], crowd.flatten(order="F"), 0, 0
    for pixel in flat:  # uncompressed RLE, column-major, starting with zeros
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    data = {
        "images": [{"id": 1, "file_name": "000000000001.jpg", "width": 80, "height": 60},
                   {"id": 2, "file_name": "000000000002.png", "width": 64, "height": 64},
                   {"id": 3, "file_name": "000000000003.jpg", "width": 48, "height": 48}],
        "categories": [{"id": 11, "name": "fire hydrant"}, {"id": 42, "name": "surfboard"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 11, "iscrowd": 0, "area": 600.0, "bbox": [10, 10, 20, 30],
             "segmentation": [[10, 10, 30, 10, 30, 40, 10, 40]]},
            {"id": 2, "image_id": 1, "category_id": 18, "iscrowd": 0, "area": 100.0, "bbox": [50, 30, 10, 10],
             "segmentation": [[50, 30, 60, 30, 60, 40, 50, 40]]},
            {"id": 3, "image_id": 2, "category_id": 42, "iscrowd": 1, "area": 400.0, "bbox": [5, 20, 20, 20],
             "segmentation": {"counts": counts, "size": [64, 64]}},
            {"id": 4, "image_id": 3, "category_id": 18, "iscrowd": 0, "area": 100.0, "bbox": [4, 4, 10, 10],
             "segmentation": [[4, 4, 14, 4, 14, 14, 4, 14]]},
        ],
    }  # fmt: skip
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    return root


def test_every_image_category_pair_with_prompt_and_union_mask(coco_root):
    data = CocoDataset(root=str(coco_root), mask_dilation=1)
    assert data.ids == ["coco000000000001_11", "coco000000000002_42", "coco000000000001_18", "coco000000000003_18"]
    items = [data[i] for i in range(len(data))]
    assert [i.sample.prompt for i in items] == ["a photo of a fire hydrant", "a photo of a surfboard", "a photo of a dog", "a photo of a dog"]
    assert [i.sample.target for i in items][:2] == ["fire hydrant", "surfboard"]
    assert all(i.sample.image.mode == "RGB" for i in items)  # grayscale and CMYK converted
    crowd = np.asarray(items[1].sample.mask) > 0
    assert crowd.sum() == 400 and crowd[20:40, 5:25].all()  # the crowd RLE mask, decoded
    assert (np.asarray(items[0].sample.mask) > 0).sum() >= 20 * 30  # polygon mask, this category only


def test_dilation_subsets_and_filters(coco_root):
    base = (np.asarray(CocoDataset(root=str(coco_root), mask_dilation=1)[1].sample.mask) > 0).sum()
    grown = (np.asarray(CocoDataset(root=str(coco_root), mask_dilation=5)[1].sample.mask) > 0).sum()
    assert grown == (20 + 4) ** 2 and base == 400
    assert CocoDataset(root=str(coco_root), size=2, seed=3).ids == CocoDataset(root=str(coco_root), size=2, seed=3).ids
    assert len(CocoDataset(root=str(coco_root), size=2).ids) == 2
    assert CocoDataset(root=str(coco_root), one_object_per_image=True).ids == ["coco000000000002_42", "coco000000000003_18"]
    assert CocoDataset(root=str(coco_root), min_area=0.1).ids == ["coco000000000001_11"]  # 600 / 4800 px


def test_bad_locations_and_files(coco_root, tmp_path):
    with pytest.raises(ConfigError, match="data.root=/nope does not exist"):
        CocoDataset(root="/nope")
    with pytest.raises(ConfigError, match="no COCO annotation file"):
        CocoDataset(root=str(tmp_path))
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": [')
    with pytest.raises(ConfigError, match="is not a COCO instances file"):
        CocoDataset(annotations=str(broken))


def test_fixture_runs_end_to_end_through_evaluate(coco_root, tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("evaluate", overrides=["data=coco", f"data.root={coco_root}", f"out_dir={tmp_path / 'run'}",
                                             f"cache_dir={tmp_path / 'cache'}", "device=cpu", "num_inference_steps=4",
                                             "inversion=negative_prompt", "metrics=tiny"])  # fmt: skip
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    assert (metrics["samples"], metrics["ok"], metrics["errors"]) == (4, 4, 0)
    for key in ("fid_original", "fid_reconstruction", "u_ids", "p_ids", "clip_similarity", "clip_similarity_input"):
        assert np.isfinite(metrics[key]), key
    assert 0 <= metrics["u_ids"] <= 0.5 and 0 <= metrics["p_ids"] <= 1
    assert all(Image.open(p).size == (64, 64) for p in (Path(cfg.out_dir) / "outputs").glob("*.png"))
