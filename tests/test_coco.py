import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image, ImageDraw

from magicremover.config import compose_config
from magicremover.errors import ConfigError
from magicremover.eval.coco import CocoDataset
from magicremover.experiments import evaluate as ev

ROOT = Path(__file__).resolve().parents[1]


def test_every_image_category_pair_with_prompt_and_union_mask(coco_root):
    data = CocoDataset(root=str(coco_root), mask_dilation=1)
    assert data.ids == ["coco000000000001_11", "coco000000000002_42", "coco000000000001_18", "coco000000000003_18"]
    items = [data[i] for i in range(len(data))]
    assert [i.sample.prompt for i in items] == [
        "a photo of a fire hydrant",
        "a photo of a surfboard",
        "a photo of a dog",
        "a photo of a dog",
    ]
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
    assert CocoDataset(root=str(coco_root), one_object_per_image=True).ids == [
        "coco000000000002_42",
        "coco000000000003_18",
    ]
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
        cfg = compose(
            "evaluate",
            overrides=[
                "data=coco",
                f"data.root={coco_root}",
                f"out_dir={tmp_path / 'run'}",
                f"cache_dir={tmp_path / 'cache'}",
                "device=cpu",
                "num_inference_steps=4",
                "inversion=negative_prompt",
                "metrics=tiny",
            ],
        )
    metrics = ev.evaluate(cfg, Path(cfg.out_dir))
    assert (metrics["samples"], metrics["ok"], metrics["errors"]) == (4, 4, 0)
    for key in ("fid_original", "fid_reconstruction", "u_ids", "p_ids", "clip_similarity", "clip_similarity_input"):
        assert np.isfinite(metrics[key]), key
    assert 0 <= metrics["u_ids"] <= 0.5 and 0 <= metrics["p_ids"] <= 1
    assert all(Image.open(p).size == (64, 64) for p in (Path(cfg.out_dir) / "outputs").glob("*.png"))


def test_an_empty_segmentation_costs_its_sample_not_the_run(tmp_path):
    """A real COCO file whose second image's annotation has ``"segmentation": []`` (pycocotools' frPyObjects raises
    IndexError on it): the failure is recorded at stage ``load``, the good image is removed, metrics are written."""
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    (root / "annotations").mkdir()
    for name in ("000000000001.jpg", "000000000002.jpg"):
        photo = Image.new("RGB", (64, 64), (90, 120, 150))
        ImageDraw.Draw(photo).ellipse([20, 20, 44, 44], fill=(200, 40, 40))
        photo.save(root / "val2017" / name)
    data = {
        "images": [
            {"id": 1, "file_name": "000000000001.jpg", "width": 64, "height": 64},
            {"id": 2, "file_name": "000000000002.jpg", "width": 64, "height": 64},
        ],
        "categories": [{"id": 18, "name": "dog"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 1,
                "category_id": 18,
                "iscrowd": 0,
                "area": 576.0,
                "bbox": [20, 20, 24, 24],
                "segmentation": [[20, 20, 44, 20, 44, 44, 20, 44]],
            },
            {
                "id": 2,
                "image_id": 2,
                "category_id": 18,
                "iscrowd": 0,
                "area": 576.0,
                "bbox": [20, 20, 24, 24],
                "segmentation": [],
            },
        ],
    }
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    out = tmp_path / "run"
    cfg = compose_config(
        "evaluate",
        [
            "data=coco",
            f"data.root={root}",
            f"out_dir={out}",
            "cache_dir=null",
            "device=cpu",
            "num_inference_steps=2",
            "inversion=negative_prompt",
            "metrics=ground_truth",
        ],
    )
    for _ in range(2):  # and a rerun, which once died the same way
        metrics = ev.evaluate(cfg, out)
        assert (metrics["samples"], metrics["ok"], metrics["errors"]) == (2, 1, 1)
    records = ev.read_manifests(out)
    failed = records["coco000000000002_18"]
    assert (failed["status"], failed["stage"], failed["error_type"]) == ("error", "load", "IndexError")
    assert records["coco000000000001_18"]["status"] == "ok" and (out / "outputs" / "coco000000000001_18.png").is_file()
    assert json.loads((out / "metrics.json").read_text()) == metrics
