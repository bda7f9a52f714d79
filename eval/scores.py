"""Set-level scores of a finished run, accumulated image by image so a 14k-sample run never holds its images.

FID against two references — the original images (standard) and the inversion's reconstructions (what the authors'
code measured for MagicRemover) — U-IDS / P-IDS against the originals, and CLIP similarity of outputs and inputs to
the class name. Every image is uint8 ``(H, W, 3)``; outputs and references share one resolution.

``protocol="clean"`` scores those images as they are. ``protocol="authors"`` adds the same scores on the files and
crops the authors' scripts used (``authors_*`` keys, see :mod:`magicremover.eval.authors`), so both protocols sit side by side.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from magicremover.errors import ConfigError
from magicremover.eval.authors import AuthorsScores, Sample
from magicremover.eval.clip import ClipLoader, clip_scores
from magicremover.eval.clip_accuracy import ClipAccuracy
from magicremover.eval.distribution import fid, inception_discriminative_scores
from magicremover.eval.local_crop import GROW, MIN_SIDE, local_box, local_crop
from magicremover.eval.lpips import Lpips, outside_only
from magicremover.eval.remove_score import MARGIN, RemoveScore

PROTOCOLS = ("clean", "authors")


class SetScores:
    """Feed ``add`` every finished sample, then read ``compute()``.

    Args:
        features: the FID / IDS extractor (uint8 ``(N, 3, H, W)`` → ``(N, D)``), or ``None`` for no FID / IDS.
        clip: a CLIP loader (see :mod:`magicremover.eval.clip`), or ``None`` for no CLIP similarity.
        batch_size: images per extractor call.
        fid_backend: the Inception port the extractor is (recorded in ``fid_settings``), if it is one.
        clip_protocol: ``torchmetrics`` (100 · clipped cosine) or ``authors`` (plain cosine, their resize); see
            :mod:`magicremover.eval.clip`.
        protocol: ``clean``, or ``authors`` to add the authors' files, crops and statistics (``authors_*`` keys).
        remove_score: a :class:`~magicremover.eval.remove_score.RemoveScore`, or ``None`` for no ReMOVE score.
        clip_accuracy: also CLIP@1/3/5 and CLIP distance on the mask's box (:mod:`magicremover.eval.clip_accuracy`; needs ``clip``).
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
        self.features, self.clip_loader, self.batch_size, self.fid_backend = features, clip, batch_size, fid_backend
        self.clip_protocol, self.protocol = clip_protocol, protocol
        self.remove_score = remove_score
        self.lpips = lpips
        self.lpips_scores: dict[str, list[float]] = {"lpips_outside": [], "lpips_gt": []}
        self.accuracy = ClipAccuracy(*clip()) if clip is not None and clip_accuracy else None
        self.remove_scores: dict[str, list[float]] = {"output": [], "original": []}
        extra = ["authors"] if protocol == "authors" else []
        metrics = clip_scores(clip, [clip_protocol, clip_protocol, *extra]) if clip is not None else None
        self.clip = metrics[:2] if metrics else None
        self.authors = None
        if protocol == "authors":
            self.authors = AuthorsScores(features, metrics[2] if metrics else None)
        self.pending: list[Sample] = []
        self.feats: dict[str, list[np.ndarray]] = {
            "output": [],
            "original": [],
            "reconstruction": [],
            "output_local": [],
            "original_local": [],
        }
        self.count = 0

    def write_authors_files(self, directory: Path) -> None:
        """Under ``protocol=authors``, write each sample's authors' file to ``directory`` (their scripts run on it)."""
        if self.authors is not None:
            self.authors.directory = directory

    def add(self, sample: Sample) -> None:
        """One finished sample (see :class:`magicremover.eval.authors.Sample`)."""
        self.pending.append(sample)
        if len(self.pending) == self.batch_size:
            self._flush()

    @torch.no_grad()
    def _flush(self) -> None:
        if not self.pending:
            return
        samples, self.pending = self.pending, []
        outputs, originals = [s.output for s in samples], [s.original for s in samples]
        reconstructions, texts = [s.reconstruction for s in samples], [s.text for s in samples]
        self.count += len(outputs)
        if self.authors is not None:
            self.authors.update(samples)
        if self.features is not None:
            boxes = [(s, local_box(s.object_mask)) for s in samples if s.object_mask is not None]
            batches = {
                "output": outputs,
                "original": originals,
                "reconstruction": [r for r in reconstructions if r is not None],
                "output_local": [local_crop(s.output, box) for s, box in boxes if box],
                "original_local": [local_crop(s.original, box) for s, box in boxes if box],
            }
            for key, images in batches.items():
                if images:
                    self.feats[key].append(self.features(_batch(images)).double().cpu().numpy())
        if self.clip is not None:
            for metric, images in zip(self.clip, (outputs, originals)):
                metric.update(list(_batch(images)), list(texts))
        if self.lpips is not None:
            masked = [s for s in samples if s.object_mask is not None]
            if masked:
                composites = [outside_only(s.output, s.original, s.object_mask) for s in masked]
                self.lpips_scores["lpips_outside"] += list(
                    self.lpips(np.stack([s.original for s in masked]), np.stack(composites))
                )
            truths = [s for s in samples if s.truth is not None]
            if truths:
                self.lpips_scores["lpips_gt"] += list(
                    self.lpips(np.stack([s.truth for s in truths]), np.stack([s.output for s in truths]))
                )
        for sample in samples if self.accuracy is not None else ():
            self.accuracy.add(sample.original, sample.output, sample.object_mask, sample.text)
        for sample in samples if self.remove_score is not None else ():
            mask = sample.object_mask
            scores = {
                key: self.remove_score(getattr(sample, key), mask) if mask is not None else None
                for key in self.remove_scores
            }
            if None not in scores.values():
                for key, score in scores.items():
                    self.remove_scores[key].append(score)

    def compute(self) -> dict:
        """``fid_original``, ``fid_local`` (on crops around the object masks, :mod:`magicremover.eval.local_crop`),
        ``fid_reconstruction`` (``None`` unless every sample has a reconstruction), ``u_ids``, ``p_ids``,
        ``clip_similarity`` (outputs) and ``clip_similarity_input``, ``lpips_outside`` and ``lpips_gt``,
        ``clip_acc@1/3/5`` and ``clip_distance``, ``remove_score`` (outputs) and ``remove_score_input`` over the samples
        with a scorable mask, plus the settings that produced them."""
        self._flush()
        report: dict = {}
        if self.features is not None and self.count >= 2:
            out, orig = (np.concatenate(self.feats[key]) for key in ("output", "original"))
            report["fid_original"] = fid(orig, out)
            complete = sum(len(f) for f in self.feats["reconstruction"]) == self.count
            report["fid_reconstruction"] = fid(np.concatenate(self.feats["reconstruction"]), out) if complete else None
            report |= inception_discriminative_scores(orig, out)
            local = [
                np.concatenate(self.feats[key]) if self.feats[key] else None
                for key in ("original_local", "output_local")
            ]
            report["fid_local"] = fid(*local) if local[0] is not None and len(local[0]) >= 2 else None
            report["fid_settings"] = {
                "backend": self.fid_backend,
                "protocol": self.protocol,
                "extractor": getattr(self.features, "description", type(self.features).__name__),
                "input": "uint8 PNG pixels",
                "local_crop": f"fid_local: the mask's box as a square × {1 + 2 * GROW:g} (≥ {MIN_SIDE} px), inside "
                "the image, resized to its side (bicubic); samples without a mask are left out",
                "n_local": sum(len(f) for f in self.feats["output_local"]),
                "n": self.count,
                "torchmetrics": version("torchmetrics"),
            }
        if self.clip is not None and self.count:
            report["clip_similarity"], report["clip_similarity_input"] = (float(m.compute()) for m in self.clip)
            report["clip_model"] = getattr(self.clip_loader, "description", "custom")
            report["clip_protocol"] = self.clip_protocol
        if self.lpips is not None:
            for key, values in self.lpips_scores.items():
                report[key] = float(np.mean(values)) if values else None
            report["lpips_settings"] = {
                "network": self.lpips.description,
                "outside": "input vs the output with the object region put back to the input (the mask applied)",
                "gt": "ground truth vs output, whole image (the mask ignored)",
                "n_outside": len(self.lpips_scores["lpips_outside"]),
                "n_gt": len(self.lpips_scores["lpips_gt"]),
            }
        if self.accuracy is not None:
            report |= self.accuracy.compute()
            if "clip_accuracy_settings" in report:
                report["clip_accuracy_settings"]["model"] = getattr(self.clip_loader, "description", "custom")
        if self.remove_score is not None:
            scored = self.remove_scores
            report["remove_score"] = float(np.mean(scored["output"])) if scored["output"] else None
            report["remove_score_input"] = float(np.mean(scored["original"])) if scored["original"] else None
            report["remove_score_settings"] = {
                "sam": self.remove_score.description,
                "crop": f"ReMOVE's: the mask's smallest bounding square + {MARGIN} px where the image allows",
                "mask": "mapped onto the feature cells the resized crop covers (SAM's padding in neither region)",
                "n": len(scored["output"]),
            }
        if self.authors is not None:
            report |= self.authors.compute()
        return report


def _batch(images) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
