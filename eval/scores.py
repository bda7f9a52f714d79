"""Set-level scores of a finished run, accumulated image by image so a 14k-sample run never holds its images.

FID against two references — the original images (standard) and the inversion's reconstructions (what the authors'
code measured for MagicRemover) — U-IDS / P-IDS against the originals, and CLIP similarity of outputs and inputs to
the class name. Every image is uint8 ``(H, W, 3)``; outputs and references share one resolution.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import torch
from torch import nn

from eval.clip import ClipLoader, clip_scores
from eval.distribution import fid, inception_discriminative_scores


class SetScores:
    """Feed ``add`` every finished sample, then read ``compute()``.

    Args:
        features: the FID / IDS extractor (uint8 ``(N, 3, H, W)`` → ``(N, D)``), or ``None`` for no FID / IDS.
        clip: a CLIP loader (see :mod:`eval.clip`), or ``None`` for no CLIP similarity.
        batch_size: images per extractor call.
        fid_backend: the Inception port the extractor is (recorded in ``fid_settings``), if it is one.
        clip_protocol: ``torchmetrics`` (100 · clipped cosine) or ``authors`` (plain cosine, their resize); see
            :mod:`eval.clip`.
    """

    def __init__(
        self,
        features: nn.Module | None = None,
        clip: ClipLoader | None = None,
        batch_size: int = 16,
        fid_backend: str | None = None,
        clip_protocol: str = "torchmetrics",
    ):
        self.features, self.clip_loader, self.batch_size, self.fid_backend = features, clip, batch_size, fid_backend
        self.clip_protocol = clip_protocol
        self.clip = clip_scores(clip, 2, clip_protocol) if clip is not None else None
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, str]] = []
        self.feats: dict[str, list[np.ndarray]] = {"output": [], "original": [], "reconstruction": []}
        self.count = 0

    def add(self, output: np.ndarray, original: np.ndarray, reconstruction: np.ndarray | None, text: str) -> None:
        """One sample: its output, its input, the inversion's reconstruction (if the method made one), the class."""
        self.pending.append((output, original, reconstruction, text))
        if len(self.pending) == self.batch_size:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        if not self.pending:
            return
        outputs, originals, reconstructions, texts = zip(*self.pending)
        self.pending = []
        self.count += len(outputs)
        batches = {
            "output": outputs,
            "original": originals,
            "reconstruction": [r for r in reconstructions if r is not None],
        }
        if self.features is not None:
            for key, images in batches.items():
                if images:
                    self.feats[key].append(self.features(_batch(images)).double().cpu().numpy())
        if self.clip is not None:
            for metric, images in zip(self.clip, (outputs, originals)):
                metric.update(list(_batch(images)), list(texts))

    def compute(self) -> dict:
        """``fid_original``, ``fid_reconstruction`` (``None`` unless every sample has a reconstruction), ``u_ids``,
        ``p_ids``, ``clip_similarity`` (outputs) and ``clip_similarity_input``, plus the settings that produced them."""
        self._flush()
        report: dict = {}
        if self.features is not None and self.count >= 2:
            out, orig = (np.concatenate(self.feats[key]) for key in ("output", "original"))
            report["fid_original"] = fid(orig, out)
            complete = sum(len(f) for f in self.feats["reconstruction"]) == self.count
            report["fid_reconstruction"] = fid(np.concatenate(self.feats["reconstruction"]), out) if complete else None
            report |= inception_discriminative_scores(orig, out)
            report["fid_settings"] = {
                "backend": self.fid_backend,
                "extractor": getattr(self.features, "description", type(self.features).__name__),
                "input": "uint8 PNG pixels",
                "n": self.count,
                "torchmetrics": version("torchmetrics"),
            }
        if self.clip is not None and self.count:
            report["clip_similarity"], report["clip_similarity_input"] = (float(m.compute()) for m in self.clip)
            report["clip_model"] = getattr(self.clip_loader, "description", "custom")
            report["clip_protocol"] = self.clip_protocol
        return report


def _batch(images) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
