"""Image feature extractors for FID and U-IDS/P-IDS: uint8 ``(N, 3, H, W)`` in [0, 255] → float ``(N, D)``.

The real one is torchmetrics' Inception-v3 (torch-fidelity's port of the TF 2015-12-05 weights, pool3, D = 2048),
loaded from a local file, never downloaded behind the user's back. The tiny one is a seeded random CNN with the same
input contract, so the metric plumbing runs offline; its numbers mean nothing beyond the tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from magicremover.errors import ModelLoadError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"


def _hub_cache() -> Path:
    return Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints" / INCEPTION_FILE


def inception(weights: str | None = None, antialias: bool = False) -> nn.Module:
    """torchmetrics' FID Inception (2048-d pool3), in eval mode.

    Args:
        weights: path to ``weights-inception-2015-12-05-6726825d.pth``; ``None`` looks in the torch hub cache.
        antialias: antialiased resize to 299² (torchmetrics ≥ 1.8's default); ``False`` matches torch-fidelity and
            the TF/pytorch-fid numbers papers report.
    """
    from torchmetrics.image.fid import NoTrainInceptionV3

    path = Path(weights).expanduser() if weights else _hub_cache()
    if not path.is_file():
        raise ModelLoadError(f"Inception weights not found at {path}: download {INCEPTION_URL} and set weights.inception=PATH (or use metrics=ground_truth)")
    module = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path), antialias=antialias)
    module.num_features = 2048
    module.description = f"inception-v3-compat pool3 (torch-fidelity 2015-12-05 weights), antialias={antialias}"
    return module


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
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.SiLU(), nn.Conv2d(8, dim, 3, stride=2), nn.AdaptiveAvgPool2d(1))
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.5)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"feature extractors take uint8 images, got {images.dtype}")
        return self.net(images.float() / 127.5 - 1).flatten(1)
