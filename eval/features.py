"""Image feature extractors for FID and U-IDS/P-IDS: uint8 ``(N, 3, H, W)`` in [0, 255] → float ``(N, D)``.

The real one is the FID Inception-v3 (TF 2015-12-05 weights, pool3, D = 2048) in one of two ports, loaded from a
local file, never downloaded behind the user's back:

* ``torch_fidelity`` — torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's port, TF1-style resize to 299²);
* ``pytorch_fid`` — the ``pytorch-fid`` package's ``InceptionV3`` (bilinear ``F.interpolate`` to 299², no antialias),
  which is what the authors' ``evaluation/evaluate.py`` and ``inception.py`` ran for the paper's FID.

The two ports give different numbers on the same images. The tiny one is a seeded random CNN with the same input
contract, so the metric plumbing runs offline; its numbers mean nothing beyond the tests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from magicremover.errors import ConfigError, ModelLoadError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
PT_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
PT_INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{PT_INCEPTION_FILE}"
BACKENDS = ("torch_fidelity", "pytorch_fid")


def _hub_cache(name: str) -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / name


def _weights_file(weights: str | None, name: str, url: str, setting: str) -> Path:
    path = Path(weights).expanduser() if weights else _hub_cache(name)
    if not path.is_file():
        raise ModelLoadError(
            f"Inception weights not found at {path}: download {url} and set {setting}=PATH (or use metrics=ground_truth)"
        )
    return path


def inception(
    weights: str | None = None,
    antialias: bool = False,
    backend: str | None = "torch_fidelity",
    pytorch_fid_weights: str | None = None,
) -> nn.Module | None:
    """The FID Inception (2048-d pool3), in eval mode.

    Args:
        weights: ``torch_fidelity``'s ``weights-inception-2015-12-05-6726825d.pth``; ``None``: the torch hub cache.
        antialias: ``torch_fidelity`` only: antialiased resize to 299² (torchmetrics ≥ 1.8's default); ``False`` is
            torch-fidelity's own resize.
        backend: ``torch_fidelity``, ``pytorch_fid`` (the authors'), or ``None`` for no extractor (no FID / IDS:
            ``metrics=ground_truth``).
        pytorch_fid_weights: ``pytorch_fid``'s ``pt_inception-2015-12-05-6726825d.pth``; ``None``: the hub cache.
    """
    if backend is None:
        return None
    if backend == "pytorch_fid":
        path = _weights_file(pytorch_fid_weights, PT_INCEPTION_FILE, PT_INCEPTION_URL, "weights.inception_pytorch_fid")
        return PytorchFidInception(path)
    if backend != "torch_fidelity":
        raise ConfigError(f"metrics.fid_backend={backend} is not one of {', '.join(BACKENDS)}")
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = _weights_file(weights, INCEPTION_FILE, INCEPTION_URL, "weights.inception")
    module = NoTrainInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path), antialias=antialias
    )
    module.num_features = 2048
    module.description = f"inception-v3-compat pool3 (torch-fidelity 2015-12-05 weights), antialias={antialias}"
    return module


class PytorchFidInception(nn.Module):
    """pytorch-fid's ``InceptionV3`` (pool3) with its weights read from a local file.

    pytorch-fid fetches its weights through torch hub's cache, so a private cache folder holding only a link to
    ``path`` is set for the construction: the file is read, nothing is downloaded.
    """

    def __init__(self, path: Path):
        super().__init__()
        from pytorch_fid.inception import InceptionV3

        with tempfile.TemporaryDirectory() as hub:
            link = Path(hub, "checkpoints", PT_INCEPTION_FILE)
            link.parent.mkdir()
            link.symlink_to(path.resolve())
            previous = torch.hub.get_dir()
            torch.hub.set_dir(hub)
            try:
                self.net = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True, normalize_input=True)
            finally:
                torch.hub.set_dir(previous)
        self.net.eval()
        self.num_features = 2048
        self.description = f"pytorch-fid InceptionV3 pool3 ({PT_INCEPTION_FILE}), bilinear resize to 299, no antialias"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"feature extractors take uint8 images, got {images.dtype}")
        return self.net(images.float() / 255)[0].flatten(1)  # pytorch-fid takes [0, 1] (TF.to_tensor of a PNG)


class TinyFeatures(nn.Module):
    """A seeded random CNN with the Inception extractor's contract, for offline tests (not a quality measure).

    Args:
        dim: feature size ``D``.
        seed: weight seed; equal seeds give equal features.
    """

    def __init__(self, dim: int = 16, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.num_features = dim
        self.description = f"tiny random CNN (dim {dim}, seed {seed}): plumbing only"
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.SiLU(), nn.Conv2d(8, dim, 3, stride=2), nn.AdaptiveAvgPool2d(1)
        )
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"feature extractors take uint8 images, got {images.dtype}")
        return self.net(images.float() / 127.5 - 1).flatten(1)


def extractor_description(features: nn.Module) -> str:
    """What to record as the FID extractor: its ``description``, else its class name."""
    return getattr(features, "description", type(features).__name__)
