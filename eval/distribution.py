"""Set-level metrics on extracted features: FID (torchmetrics' statistics and formula) and U-IDS / P-IDS (a linear SVM,
as Co-Mod-GAN defines them). Features are extracted once per image set and shared by every score."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.svm import LinearSVC
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance


class _Precomputed(nn.Module):
    """Hands already extracted features to torchmetrics' FID, so images are not run through the extractor again."""

    def __init__(self, dim: int):
        super().__init__()
        self.num_features = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets ``(N, D)``, ``(M, D)`` (N, M ≥ 2)."""
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.set_dtype(torch.float64)
    metric.update(torch.from_numpy(real), real=True)
    metric.update(torch.from_numpy(fake), real=False)
    return float(metric.compute())


def inception_discriminative_scores(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """U-IDS and P-IDS of paired feature sets ``(N, D)`` (row i of both comes from one source image).

    A linear SVM is fitted to tell real (1) from fake (0) on all features, with no held-out split (Co-Mod-GAN).
    U-IDS is its misclassification rate; P-IDS the fraction of pairs whose fake scores more real than its own real.
    Both are 0.5 when outputs are indistinguishable from the references, 0 when trivially separable.
    """
    svm = LinearSVC(dual=False).fit(np.concatenate([real, fake]), np.r_[np.ones(len(real)), np.zeros(len(fake))])
    real_score, fake_score = svm.decision_function(real), svm.decision_function(fake)
    return {
        "u_ids": float(0.5 * (np.mean(real_score <= 0) + np.mean(fake_score > 0))),  # 1 − svm.score: 0 predicts fake
        "p_ids": float(np.mean(fake_score > real_score)),
    }
