"""LPIPS: torchmetrics' network over a torchvision backbone file (random values, the real key layout) against a
by-hand LPIPS, the outside-only composite, the keys in a run's scores and the one-line errors."""

import numpy as np
import pytest
import torch
import torchvision

from magicremover.eval.lpips import Lpips, load_lpips, outside_only


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lpips") / "alexnet-owt-7be5be79.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


def _by_hand(metric: Lpips, backbone, a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS's definition: inputs to [-1, 1], LPIPS's shift and scale, AlexNet's five ReLU outputs, each unit-normalised
    over channels, squared differences weighted by the linear layers, averaged over space, summed over layers."""
    alexnet = torchvision.models.alexnet(weights=None)
    alexnet.load_state_dict(torch.load(backbone, weights_only=True))
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    weights = [lin.model[-1].weight for lin in metric.net.lins]  # LPIPS's published linear weights, (1, C, 1, 1)
    total = 0.0
    with torch.no_grad():
        x, y = ((torch.from_numpy(i).permute(2, 0, 1)[None].float() / 255 * 2 - 1 - shift) / scale for i in (a, b))
        layer = 0
        for index, module in enumerate(alexnet.features[:12]):
            x, y = module(x), module(y)
            if index in (1, 4, 7, 9, 11):
                nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total += float(((nx - ny) ** 2 * weights[layer]).sum(1).mean())
                layer += 1
    return total


def test_lpips_equals_the_definition_computed_by_hand(backbone):
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-60, 60, a.shape), 0, 255).astype(np.uint8)
    metric = Lpips(backbone)
    ours = metric(a, b)
    assert ours.shape == (2,) and ours[0] > 0
    assert ours == pytest.approx([_by_hand(metric, backbone, a[i], b[i]) for i in range(2)], rel=1e-5)
    assert metric(a, a) == pytest.approx([0.0, 0.0], abs=1e-7)


def test_outside_only_counts_nothing_inside_the_mask(backbone):
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:40, 20:40] = 255
    inside_changed = original.copy()
    inside_changed[20:40, 20:40] = 0
    outside_changed = inside_changed.copy()
    outside_changed[:5] = 255
    metric = Lpips(backbone)
    assert np.array_equal(outside_only(inside_changed, original, mask), original)
    assert metric(original[None], outside_only(inside_changed, original, mask)[None])[0] == pytest.approx(0, abs=1e-7)
    assert metric(original[None], outside_only(outside_changed, original, mask)[None])[0] > 1e-4


def test_run_scores_report_lpips_outside_and_against_ground_truth(backbone):
    from magicremover.eval.authors import Sample
    from magicremover.eval.scores import SetScores

    rng = np.random.default_rng(2)
    metric = Lpips(backbone)
    scores = SetScores(lpips=metric)
    original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    output = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    truth = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 10:30] = 255
    scores.add(Sample("a", output, original, None, "dog", object_mask=mask, truth=truth))
    scores.add(Sample("b", output, original, None, "dog"))  # neither a mask nor a ground truth: not scored
    report = scores.compute()
    assert report["lpips_outside"] == pytest.approx(
        metric(original[None], outside_only(output, original, mask)[None])[0]
    )
    assert report["lpips_gt"] == pytest.approx(metric(truth[None], output[None])[0])
    assert (report["lpips_settings"]["n_outside"], report["lpips_settings"]["n_gt"]) == (1, 1)


def test_missing_or_wrong_backbone_files_are_one_line_errors(tmp_path, backbone, monkeypatch):
    from magicremover.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"^weights.lpips_backbone=.* does not exist; give torchvision's alexnet"):
        load_lpips(tmp_path / "missing.pth")
    wrong = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ModelLoadError, match=r"is not torchvision's alex state dict"):
        load_lpips(wrong)
    with pytest.raises(ModelLoadError, match=r"^metrics.lpips.net=resnet is not one of alex, vgg, squeeze$"):
        load_lpips(backbone, net="resnet")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert load_lpips(None) is None  # nothing in the hub cache: LPIPS is off
