"""Metrics against ground truth: PSNR and SSIM inside the object's region (vs the ground truth) and outside it
(vs the input). SSIM maps come from torchmetrics; the averages are restricted to the region."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from magicremover.images import psnr


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float64) / 255).permute(2, 0, 1)[None]


def masked_ssim(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> float:
    """Mean of the SSIM map (Gaussian 11×11, σ 1.5, as torchmetrics) over the pixels where ``region`` is True."""
    _, full = structural_similarity_index_measure(_tensor(a), _tensor(b), data_range=1.0, return_full_image=True)
    values = full[0].mean(0).numpy()[region]
    return float(values.mean()) if values.size else float("nan")


def ground_truth_metrics(
    output: np.ndarray, source: np.ndarray, truth: np.ndarray, region: np.ndarray
) -> dict[str, float]:
    """Removal quality of one output (all uint8 ``(H, W, 3)`` at one size; ``region`` ``(H, W)`` in [0, 1]).

    ``*_in``: inside the region, output vs ground truth (was the object replaced by the right background?);
    ``*_out``: outside it, output vs the input (was the rest left alone?).
    """
    inside = region > 0.5
    return {
        "psnr_in": psnr(output, truth, inside),
        "ssim_in": masked_ssim(output, truth, inside),
        "psnr_out": psnr(output, source, ~inside),
        "ssim_out": masked_ssim(output, source, ~inside),
    }
