"""Set-level scores of a finished run, accumulated image by image so a 14k-sample run never holds its images.

FID against two references — the original images (standard) and the inversion's reconstructions (what the authors'
code measured for MagicRemover) — U-IDS / P-IDS against the originals, and CLIP similarity of outputs and inputs to
the class name. Every image is uint8 ``(H, W, 3)``; outputs and references share one resolution.

``protocol="clean"`` scores those images as they are. ``protocol="authors"`` adds the same scores on the files and
crops the authors' scripts used (``authors_*`` keys, see :mod:`magicremover.eval.authors`), so both protocols sit side by side.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchmetrics import MetricCollection

from magicremover.errors import ConfigError
from magicremover.eval.authors import AuthorsScores, Sample
from magicremover.eval.clip import ClipLoader, ClipSimilarity, clip_description, clip_scores
from magicremover.eval.clip_accuracy import ClipAccuracy
from magicremover.eval.frechet import FrechetScores
from magicremover.eval.lpips import Lpips, LpipsScores
from magicremover.eval.remove_score import RemoveScore, RemoveScores

PROTOCOLS = ("clean", "authors")


class SetScores:
    """Feed ``add`` every finished sample, then read ``compute()``: each family of scores is a torchmetrics
    ``Metric`` (:class:`~magicremover.eval.frechet.FrechetScores`, :class:`~magicremover.eval.clip.ClipSimilarity`,
    :class:`~magicremover.eval.lpips.LpipsScores`, :class:`~magicremover.eval.clip_accuracy.ClipAccuracy`,
    :class:`~magicremover.eval.remove_score.RemoveScores`, :class:`~magicremover.eval.authors.AuthorsScores`), their
    states synced across processes, combined in :attr:`metrics`, a ``MetricCollection``; samples reach them in
    batches of ``batch_size``.

    Args:
        features: the FID / IDS extractor (uint8 ``(N, 3, H, W)`` → ``(N, D)``), or ``None`` for no FID / IDS.
        clip: a CLIP loader (see :mod:`magicremover.eval.clip`), or ``None`` for no CLIP similarity.
        batch_size: images per extractor call.
        fid_backend: the Inception port the extractor is (recorded in ``fid_settings``), if it is one.
        clip_protocol: ``torchmetrics`` (100 · clipped cosine) or ``authors`` (plain cosine, their resize); see
            :mod:`magicremover.eval.clip`.
        protocol: ``clean``, or ``authors`` to add the authors' files, crops and statistics (``authors_*`` keys).
        remove_score: a :class:`~magicremover.eval.remove_score.RemoveScore`, or ``None`` for no ReMOVE score.
        clip_accuracy: also CLIP@1/3/5 and CLIP distance on the mask's box (:mod:`magicremover.eval.clip_accuracy`;
            needs ``clip``).
        lpips: an :class:`~magicremover.eval.lpips.Lpips`, or ``None`` for no LPIPS.
    """

    def __init__(
        self,
        features: nn.Module | None = None,
        clip: ClipLoader | None = None,
        batch_size: int = 16,
        fid_backend: str | None = None,
        clip_protocol: str = "torchmetrics",
        protocol: str = "clean",
        remove_score: RemoveScore | None = None,
        clip_accuracy: bool = True,
        lpips: Lpips | None = None,
    ):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"metrics.protocol={protocol} is not one of {', '.join(PROTOCOLS)}")
        families = {}
        if features is not None:
            families["frechet"] = FrechetScores(features, fid_backend, protocol)
        if clip is not None:
            families["clip"] = ClipSimilarity(clip, clip_protocol)
        if lpips is not None:
            families["lpips"] = LpipsScores(lpips)
        if clip is not None and clip_accuracy:
            families["clip_accuracy"] = ClipAccuracy(*clip(), model=clip_description(clip))
        if remove_score is not None:
            families["remove_score"] = RemoveScores(remove_score)
        if protocol == "authors":
            authors_clip = clip_scores(clip, ["authors"])[0] if clip is not None else None
            families["authors"] = AuthorsScores(features, authors_clip)
        self.metrics = MetricCollection(families, compute_groups=False)
        self.batch_size = batch_size
        self.pending: list[Sample] = []

    def write_authors_files(self, directory: Path) -> None:
        """Under ``protocol=authors``, write each sample's authors' file to ``directory`` (their scripts run on it)."""
        if "authors" in self.metrics:
            self.metrics["authors"].directory = directory

    def add(self, sample: Sample) -> None:
        """One finished sample (see :class:`magicremover.eval.authors.Sample`)."""
        self.pending.append(sample)
        if len(self.pending) == self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if self.pending:
            samples, self.pending = self.pending, []
            self.metrics.update(samples)

    @torch.no_grad()
    def compute(self) -> dict:
        """Every family's keys in one dict: ``fid_original``, ``fid_local``, ``fid_reconstruction``, ``u_ids``,
        ``p_ids``, ``clip_similarity`` (outputs) and ``clip_similarity_input``, ``lpips_outside`` and ``lpips_gt``,
        ``clip_acc@1/3/5`` and ``clip_distance``, ``remove_score`` and ``remove_score_input``, the ``authors_*``
        scores, each family's settings. A family with nothing to score yet adds no keys (FID needs two samples)."""
        self._flush()
        if not len(self.metrics) or not all(m.update_called for m in self.metrics.values()):
            return {}
        return dict(self.metrics.compute())
