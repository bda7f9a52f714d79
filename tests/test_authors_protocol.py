"""``metrics.protocol=authors``: the authors' files (torchvision's padded grid, the baselines' strips), the crops their
scoring scripts read, and their FID, against torchvision's ``save_image`` and an independent re-computation of
``evaluation/evaluate.py``'s semantics on pytorch-fid's own network and Fréchet distance."""

from unittest import mock

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
import torchvision.utils
from PIL import Image

from magicremover.errors import ConfigError
from magicremover.eval.authors import AuthorsScores, Sample, crops, grid, strip
from magicremover.eval.clip import tiny_clip
from magicremover.eval.features import TinyFeatures, inception
from magicremover.eval.scores import SetScores


def _images(seed: int, count: int, side: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(count)]


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1).float() / 255


@pytest.mark.parametrize("side", [64, 512])
def test_the_grid_file_is_byte_identical_to_torchvision_save_image(tmp_path, side):
    reconstruction, edit = _images(side, 2, side)
    # null_text_inversion_coco.py: save_image(torch.concat((img_ori, img_edit), dim=0), ...) with images in [0, 1]
    torchvision.utils.save_image(torch.stack([_tensor(reconstruction), _tensor(edit)]), tmp_path / "theirs.png")
    scores = AuthorsScores(directory=tmp_path / "ours")
    scores.update([Sample("a", edit, edit, reconstruction, "dog", layout="grid")])
    assert (tmp_path / "ours" / "a.png").read_bytes() == (tmp_path / "theirs.png").read_bytes()
    assert grid(reconstruction, edit).shape == (side + 4, 2 * side + 6, 3)  # 516 x 1030 at 512


@pytest.mark.parametrize("side", [64, 512])
def test_the_crops_hold_black_bands_where_the_analysis_says(side):
    reconstruction = np.full((side, side, 3), 100, np.uint8)
    edit = np.full((side, side, 3), 200, np.uint8)
    reference, result, clip = crops("grid", grid(reconstruction, edit), side)
    assert reference.shape == result.shape == (side + 4, side, 3) and clip.shape == (side + 4, side + 6, 3)
    for crop in (reference, result, clip):
        assert (crop[:2] == 0).all() and (crop[-2:] == 0).all()  # 2 black rows above and below
    body = slice(2, side + 2)
    assert (reference[body, :2] == 0).all() and (reference[body, 2:] == 100).all()  # 2 black + recon's first s-2
    assert (result[body, :2] == 100).all() and (result[body, 2:4] == 0).all() and (result[body, 4:] == 200).all()
    assert (clip[body, :2] == 100).all() and (clip[body, 2:4] == 0).all()
    assert (clip[body, 4 : side + 4] == 200).all() and (clip[body, side + 4 :] == 0).all()
    mask = np.full((side, side), 255, np.uint8)
    reference, result, clip = crops("strip", strip(reconstruction, mask, edit), side)  # no padding on strips
    assert (reference == 100).all() and (result == 200).all() and np.array_equal(clip, result)


def _their_fid(folder, model, side: int, result_start: int) -> float:
    """evaluate.py --task fid, re-computed: TF.to_tensor of each file, [0:s] vs [start:start+s], pytorch-fid's
    network (its own resize), np.cov, pytorch-fid's own calculate_frechet_distance."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    batch = torch.stack([TF.to_tensor(Image.open(f).convert("RGB")) for f in sorted(folder.glob("*.png"))])
    stats = []
    for start in (0, result_start):
        with torch.no_grad():
            acts = model(batch[:, :, :, start : start + side])[0].squeeze(3).squeeze(2).numpy().astype(np.float64)
        stats += [np.mean(acts, axis=0), np.cov(acts, rowvar=False)]
    return float(calculate_frechet_distance(*stats))


def _write_their_files(folder, layout: str, outputs, originals, reconstructions) -> None:
    """The files the released script (grids) and the baselines' scripts (strips) wrote, through torchvision."""
    folder.mkdir()
    for i, (output, original, reconstruction) in enumerate(zip(outputs, originals, reconstructions)):
        if layout == "grid":
            torchvision.utils.save_image(torch.stack([_tensor(reconstruction), _tensor(output)]), folder / f"{i}.png")
        else:
            black = torch.zeros(3, *output.shape[:2])
            torchvision.utils.save_image(
                torch.cat([_tensor(original), black, _tensor(output)], -1), folder / f"{i}.png"
            )


@pytest.mark.slow  # 90 s: runs pytorch-fid's own script
def test_the_authors_fid_equals_their_script_on_pytorch_fids_network(tmp_path, pytorch_fid_weights):
    from pytorch_fid import inception as pytorch_fid

    path, state = pytorch_fid_weights
    side, count = 64, 6
    outputs, originals, reconstructions = (_images(seed, count, side) for seed in (1, 2, 3))
    _write_their_files(tmp_path / "grids", "grid", outputs, originals, reconstructions)
    with mock.patch.object(pytorch_fid, "load_state_dict_from_url", lambda *a, **k: state):
        model = pytorch_fid.InceptionV3([3]).eval()
    scores = AuthorsScores(inception(backend="pytorch_fid", pytorch_fid_weights=str(path)))
    scores.update(
        [
            Sample(str(i), *images, "dog", layout="grid")
            for i, images in enumerate(zip(outputs, originals, reconstructions))
        ]
    )
    report = scores.compute()
    expected = _their_fid(tmp_path / "grids", model, side, side)
    assert report["authors_fid"] == pytest.approx(expected, rel=1e-6) and expected > 0
    assert report["authors_fid_reconstruction"] == report["authors_fid"] != report["authors_fid_original"]
    assert report["authors_settings"]["layout"] == "grid"


class _FloatInput(torch.nn.Module):
    """evaluate.py's model contract ([0, 1] floats in, a tuple out) over a uint8 extractor."""

    def __init__(self, features):
        super().__init__()
        self.features = features

    def forward(self, batch: torch.Tensor):
        return (self.features((batch * 255).round().to(torch.uint8))[:, :, None, None],)


def test_strips_score_the_result_slot_and_both_protocols_sit_side_by_side(tmp_path):
    side, count = 32, 8
    outputs, originals, reconstructions = (_images(seed, count, side) for seed in (4, 5, 6))
    _write_their_files(tmp_path / "strips", "strip", outputs, originals, reconstructions)
    features = TinyFeatures(dim=6, seed=3)
    scores = SetScores(features, tiny_clip(seed=5), batch_size=3, protocol="authors", clip_protocol="authors")
    scores.write_authors_files(tmp_path / "ours")
    for i, images in enumerate(zip(outputs, originals, reconstructions)):
        scores.add(Sample(str(i), *images, "dog", layout="strip"))
    report = scores.compute()
    assert report["authors_fid"] == pytest.approx(
        _their_fid(tmp_path / "strips", _FloatInput(features), side, 2 * side)
    )
    assert report["authors_fid_original"] == report["authors_fid"] != report["authors_fid_reconstruction"]
    for i in range(count):  # the written strip is theirs, byte for byte
        assert (tmp_path / "ours" / f"{i}.png").read_bytes() == (tmp_path / "strips" / f"{i}.png").read_bytes()
    # a strip's result crop is the output itself, unpadded: the authors' CLIP score equals the clean one
    assert report["authors_clip_similarity"] == pytest.approx(report["clip_similarity"], rel=1e-6)
    assert {"fid_original", "u_ids", "authors_u_ids", "authors_p_ids"} <= report.keys()
    assert report["fid_settings"]["protocol"] == "authors"


def test_a_protocol_that_does_not_exist_is_a_one_line_error():
    with pytest.raises(ConfigError, match="metrics.protocol=paper is not one of clean, authors"):
        SetScores(protocol="paper")


def test_the_toy_acceptance_command_composes_the_authors_protocol_with_pytorch_fid(pytorch_fid_weights):
    from hydra.utils import instantiate

    from magicremover.config import compose_config

    assert "frechet" not in instantiate(compose_config("evaluate", ["data=toy"]).metrics).metrics  # ground truth only
    overrides = [
        "data=toy",
        "metrics.protocol=authors",
        "metrics.fid_backend=pytorch_fid",
        f"weights.inception_pytorch_fid={pytorch_fid_weights[0]}",
        "metrics.clip=null",
    ]
    scores = instantiate(compose_config("evaluate", overrides).metrics)
    authors, frechet = scores.metrics["authors"], scores.metrics["frechet"]
    assert frechet.protocol == "authors" and "pytorch-fid" in authors.features.description
