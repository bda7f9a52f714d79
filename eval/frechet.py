"""FID against two references, FID on local crops, and U-IDS / P-IDS, as one torchmetrics ``Metric``.

The states are the extractor's features per image (float64, concatenated across processes), so a 14k-sample run
holds ``(N, 2048)`` numbers rather than its images, and the statistics are computed once, at the end.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from magicremover.eval.authors import Sample
from magicremover.eval.distribution import fid, inception_discriminative_scores
from magicremover.eval.features import extractor_description
from magicremover.eval.local_crop import GROW, MIN_SIDE, local_box, local_crop

KINDS = ("output", "original", "reconstruction", "output_local", "original_local")


def as_batch(images) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` images as one uint8 ``(N, 3, H, W)`` tensor."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


class FrechetScores(Metric):
    """``fid_original``, ``fid_reconstruction`` (``None`` unless every sample has a reconstruction), ``fid_local``
    (on crops around the object masks, :mod:`magicremover.eval.local_crop`), ``u_ids``, ``p_ids`` and
    ``fid_settings``. Lower FID is better.

    Args:
        features: the extractor, uint8 ``(N, 3, H, W)`` → ``(N, D)``.
        fid_backend: the Inception port the extractor is (recorded in ``fid_settings``), if it is one.
        protocol: the scoring protocol (recorded).
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, features: nn.Module, fid_backend: str | None = None, protocol: str = "clean"):
        super().__init__()
        self.features, self.fid_backend, self.protocol = features, fid_backend, protocol
        for kind in KINDS:
            self.add_state(kind, default=[], dist_reduce_fx="cat")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, samples: list[Sample]) -> None:
        self.count += len(samples)
        boxes = [(s, local_box(s.object_mask)) for s in samples if s.object_mask is not None]
        batches = {
            "output": [s.output for s in samples],
            "original": [s.original for s in samples],
            "reconstruction": [s.reconstruction for s in samples if s.reconstruction is not None],
            "output_local": [local_crop(s.output, box) for s, box in boxes if box],
            "original_local": [local_crop(s.original, box) for s, box in boxes if box],
        }
        for kind, images in batches.items():
            if images:
                getattr(self, kind).append(self.features(as_batch(images)).double().cpu())

    def _features(self, kind: str):
        state = getattr(self, kind)
        return dim_zero_cat(state).numpy() if len(state) else None

    def compute(self) -> dict:
        if int(self.count) < 2:
            return {}
        out, orig, recon = (self._features(kind) for kind in ("output", "original", "reconstruction"))
        local = [self._features(kind) for kind in ("original_local", "output_local")]
        complete = recon is not None and len(recon) == int(self.count)
        return {
            "fid_original": fid(orig, out),
            "fid_reconstruction": fid(recon, out) if complete else None,
            **inception_discriminative_scores(orig, out),
            "fid_local": fid(*local) if local[0] is not None and len(local[0]) >= 2 else None,
            "fid_settings": {
                "backend": self.fid_backend,
                "protocol": self.protocol,
                "extractor": extractor_description(self.features),
                "input": "uint8 PNG pixels",
                "local_crop": f"fid_local: the mask's box as a square × {1 + 2 * GROW:g} (≥ {MIN_SIDE} px), inside "
                "the image, resized to its side (bicubic); samples without a mask are left out",
                "n_local": 0 if local[1] is None else len(local[1]),
                "n": int(self.count),
                "torchmetrics": version("torchmetrics"),
            },
        }
