"""Set-level metrics against independent computations: FID (scipy), U-IDS/P-IDS (a construction with a known answer),
CLIP similarity (cosines by hand), and the loaders' failures."""

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from magicremover.errors import ConfigError, ModelLoadError
from magicremover.eval.authors import Sample
from magicremover.eval.clip import clip_scores, load_clip, tiny_clip
from magicremover.eval.distribution import fid, inception_discriminative_scores
from magicremover.eval.features import TinyFeatures, inception
from magicremover.eval.scores import SetScores


def _fid_by_hand(a, b):
    (m1, m2), (s1, s2) = (a.mean(0), b.mean(0)), (np.cov(a, rowvar=False), np.cov(b, rowvar=False))
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))


def test_fid_matches_scipy_and_is_zero_against_itself():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) * 1.5 + 0.3
    assert fid(a, b) == pytest.approx(_fid_by_hand(a, b), rel=1e-6)
    assert abs(fid(a, a)) < 1e-8


def test_ids_on_a_construction_with_a_known_answer():
    # Real features at x in [1, 2], fakes at -x except three that sit far on the real side: a linear SVM separates at
    # ~0 and misclassifies exactly those three fakes, each of which also scores above its own real.
    real = np.linspace(1, 2, 20)[:, None]
    fake = -real.copy()
    fake[:3] = [[5.0], [6.0], [7.0]]
    scores = inception_discriminative_scores(real, fake)
    assert scores["u_ids"] == pytest.approx(0.5 * 3 / 20) and scores["p_ids"] == pytest.approx(3 / 20)
    separable = inception_discriminative_scores(real, real - 10)
    assert separable == {"u_ids": 0.0, "p_ids": 0.0}


def test_tiny_features_follow_the_extractor_contract():
    images = torch.randint(0, 256, (3, 3, 40, 48), dtype=torch.uint8)
    features = TinyFeatures(dim=8, seed=1)
    assert features(images).shape == (3, 8) and torch.equal(features(images), TinyFeatures(dim=8, seed=1)(images))
    with pytest.raises(TypeError, match="uint8"):
        features(images.float())


def test_inception_loads_a_weights_file_with_the_real_layout(tmp_path, monkeypatch):
    # The real key layout with random values: build the module once without loading, save its state dict.
    from torchmetrics.image.fid import NoTrainInceptionV3

    captured = {}
    monkeypatch.setattr(
        nn.Module, "load_state_dict", lambda self, state, *a, **k: captured.setdefault("keys", self.state_dict())
    )
    monkeypatch.setattr(torch, "load", lambda *a, **k: {})
    NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    monkeypatch.undo()
    torch.manual_seed(0)
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    random = {
        k: torch.rand_like(v) + 0.5
        if "running_var" in k
        else torch.randn_like(v) * 0.05
        if v.is_floating_point()
        else v
        for k, v in captured["keys"].items()
    }
    torch.save(random, path)
    extractor = inception(weights=str(path), antialias=False)
    features = extractor(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    assert features.shape == (2, 2048) and torch.isfinite(features).all()
    assert "antialias=False" in extractor.description


def test_pytorch_fid_backend_reads_a_local_file_and_is_the_package_network(tmp_path, monkeypatch, pytorch_fid_weights):
    from pytorch_fid import inception as pytorch_fid

    path, random = pytorch_fid_weights
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))  # nothing cached: a download attempt would fail
    hub_before = torch.hub.get_dir()
    extractor = inception(backend="pytorch_fid", pytorch_fid_weights=str(path))
    assert torch.hub.get_dir() == hub_before
    images = torch.randint(0, 256, (2, 3, 64, 48), dtype=torch.uint8)
    # the package's own network, handed the same weights as its hub download would: [0, 1] input, pool3
    monkeypatch.setattr(pytorch_fid, "load_state_dict_from_url", lambda *a, **k: random)
    reference = pytorch_fid.InceptionV3([3]).eval()
    monkeypatch.undo()
    with torch.no_grad():
        expected = reference(images.float() / 255)[0].flatten(1)
    assert extractor(images).shape == (2, 2048) and torch.equal(extractor(images), expected)
    assert "pytorch-fid" in extractor.description
    with pytest.raises(ModelLoadError, match="weights.inception_pytorch_fid=PATH"):
        inception(backend="pytorch_fid")
    with pytest.raises(ConfigError, match="metrics.fid_backend=tf is not one of torch_fidelity, pytorch_fid"):
        inception(backend="tf")


def test_table1_measures_fid_with_the_authors_backend():
    from magicremover.config import compose_config

    assert (
        compose_config("evaluate", ["+artefact=table1", "metrics=standard"]).metrics.features.backend == "pytorch_fid"
    )
    assert compose_config("evaluate", ["metrics=standard"]).metrics.features.backend == "torch_fidelity"
    scores = SetScores(features=TinyFeatures(dim=4), fid_backend="pytorch_fid")
    for seed in range(3):
        image = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        scores.add(Sample(str(seed), image, image[::-1].copy(), None, "dog"))
    assert scores.compute()["fid_settings"]["backend"] == "pytorch_fid"
    table1 = compose_config("evaluate", ["+artefact=table1", "metrics=standard"]).metrics
    assert table1.clip_protocol == "authors"


def test_missing_extractor_weights_name_the_setting(tmp_path, monkeypatch):
    with pytest.raises(ModelLoadError, match="weights.inception=PATH"):
        inception(weights=str(tmp_path / "nope.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: no silent download attempt
    with pytest.raises(ModelLoadError, match="download https://github.com/toshas"):
        inception()
    with pytest.raises(ModelLoadError, match="weights.clip=LOCAL_FOLDER"):
        load_clip(str(tmp_path / "no_clip"))()


def test_clip_similarity_is_the_mean_clipped_cosine():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(5)]
    texts = ["dog", "traffic light", "cat", "hair drier", "person"]
    (metric,) = clip_scores(tiny_clip(seed=5), ["torchmetrics"])
    metric.update([torch.from_numpy(i).permute(2, 0, 1) for i in images[:3]], texts[:3])
    metric.update([torch.from_numpy(i).permute(2, 0, 1) for i in images[3:]], texts[3:])
    clip, processor = tiny_clip(seed=5)()
    with torch.no_grad():
        image = clip.get_image_features(**processor(images=images, return_tensors="pt")).pooler_output
        text = clip.get_text_features(**processor(text=texts, return_tensors="pt", padding=True)).pooler_output
    expected = (100 * torch.nn.functional.cosine_similarity(image, text)).clamp(min=0).mean()
    assert float(metric.compute()) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 0


def test_authors_clip_protocol_is_their_plain_cosine_after_their_resize():
    import torchvision.transforms as T

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(4)]
    texts = ["dog", "fire hydrant", "cat", "person"]
    (metric,) = clip_scores(tiny_clip(seed=5), ["authors"])
    metric.update([torch.from_numpy(i).permute(2, 0, 1) for i in images], texts)
    clip, processor = tiny_clip(seed=5)()
    # evaluate.py: TF.to_tensor, T.Resize((224, 224)) on the tensor (no antialias then), CLIP's Normalize; one text each
    side = processor.image_processor.crop_size["height"]
    aug = T.Compose(
        [
            T.Resize((side, side), antialias=False),
            T.Normalize(processor.image_processor.image_mean, processor.image_processor.image_std),
        ]
    )
    expected = []
    with torch.no_grad():
        for image, text in zip(images, texts):
            pixels = aug(torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255)
            image_z = clip.get_image_features(pixel_values=pixels).pooler_output
            text_z = clip.get_text_features(**processor.tokenizer([text], return_tensors="pt")).pooler_output
            expected.append(
                float((image_z / image_z.norm(dim=-1, keepdim=True) * text_z / text_z.norm(dim=-1, keepdim=True)).sum())
            )
    assert float(metric.compute()) == pytest.approx(np.mean(expected), rel=1e-5, abs=1e-7)
    with pytest.raises(ConfigError, match="metrics.clip_protocol=openai is not one of torchmetrics, authors"):
        clip_scores(tiny_clip(seed=5), ["openai"])


def test_set_scores_against_identical_sets_and_missing_reconstructions():
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(6)]
    scores = SetScores(TinyFeatures(), tiny_clip(seed=5), batch_size=4)
    for i, image in enumerate(images):
        scores.add(Sample(str(i), image, image, image if i else None, "dog"))  # the first sample has no reconstruction
    report = scores.compute()
    assert abs(report["fid_original"]) < 1e-6 and report["fid_reconstruction"] is None
    assert report["clip_similarity"] == pytest.approx(report["clip_similarity_input"])
    assert report["fid_settings"]["n"] == 6


def test_the_tiny_metrics_cover_every_family_and_each_is_a_torchmetrics_metric():
    """``metrics=tiny`` is the offline plumbing run of ``metrics=standard``: every family, every key with a value."""
    from hydra.utils import instantiate
    from torchmetrics import Metric

    from magicremover.config import compose_config

    scores = instantiate(compose_config("evaluate", ["metrics=tiny"]).metrics)
    assert set(scores.metrics) == {"frechet", "clip", "lpips", "clip_accuracy", "remove_score"}
    assert all(isinstance(m, Metric) and isinstance(m.higher_is_better, bool) for m in scores.metrics.values())
    rng = np.random.default_rng(2)
    mask = np.zeros((64, 64), np.uint8)
    mask[20:44, 16:40] = 255
    for i in range(5):
        original = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        output = np.where(mask[..., None] > 0, original // 2, original)
        scores.add(Sample(str(i), output, original, original, "dog", object_mask=mask, truth=original))
    report = scores.compute()
    keys = [
        "fid_original",
        "fid_reconstruction",
        "fid_local",
        "u_ids",
        "p_ids",
        "clip_similarity",
        "clip_similarity_input",
        "lpips_outside",
        "lpips_gt",
        "clip_acc@1",
        "clip_distance",
        "remove_score",
        "remove_score_input",
    ]
    assert not [key for key in keys if report.get(key) is None], report
    assert report["lpips_settings"]["n_gt"] == 5 and report["remove_score_settings"]["n"] == 5
    scores.metrics.reset()  # torchmetrics' reset empties every family's synced states
    assert int(scores.metrics["frechet"].count) == 0 and not scores.metrics["lpips"].gt
    assert not scores.metrics["remove_score"].output and not scores.metrics["clip_accuracy"].classes
