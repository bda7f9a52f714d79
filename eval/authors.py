"""Table 1 as the authors scored it (``metrics.protocol=authors``): the files their scripts wrote, the crops their
scoring scripts read, and their statistics code path (mycfhs/Magicremover, read, not copied).

* MagicRemover rows: ``null_text_inversion_coco.py`` saved ``save_image(concat((reconstruction, edit)))``, a
  torchvision grid with 2-px zero padding: ``(s + 4) × (2s + 6)``, the reconstruction at rows/columns ``2:s+2``, the
  edit at columns ``s+4:2s+4``.
* Baseline rows: ``[original | mask | result]`` strips, ``s × 3s``, no padding (``evaluate.py``'s comments).
* ``evaluation/evaluate.py`` (``--task fid``) takes columns ``[0:s]`` as the reference and ``[s:2s]`` (grids) or
  ``[2s:3s]`` (strips) as the result, all rows, scaled to [0, 1]; pytorch-fid's network resizes each crop to 299²;
  ``np.cov`` and pytorch-fid's ``calculate_frechet_distance`` (``scipy.linalg.sqrtm`` with its ε fallback).
* ``--task cs`` scores columns ``[s:]`` (grids) or ``[2s:]`` (strips) against the bare class name.
* ``calculate_uids.py`` fits its SVM to the same two crops.

So on a grid, the reference crop is 2 black columns and the reconstruction's first ``s − 2``; the result crop is the
reconstruction's last 2 columns, 2 black columns and the edit's first ``s − 4``; both carry 2 black rows above and
below. The side ``s`` is the images' width (64 on the toy world, 512 on COCO), not a literal 512.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from magicremover.eval.distribution import inception_discriminative_scores
from magicremover.eval.features import extractor_description
from magicremover.outputs import atomic_write

PAD = 2  # torchvision.utils.make_grid's default padding (pad_value 0)
LAYOUTS = ("grid", "strip")
FEATURE_KEYS = tuple(f"{kind}{part}" for kind in ("original", "reconstruction", "written") for part in ("", "_result"))


def grid(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The file ``torchvision.utils.save_image(torch.concat((first, second)))`` writes, as uint8 ``(h + 4, 2w + 6, 3)``
    (two uint8 ``(h, w, 3)`` images; a uint8 image survives save_image's ``× 255 + 0.5`` round trip unchanged)."""
    h, w, _ = first.shape
    canvas = np.zeros((h + 2 * PAD, 2 * w + 3 * PAD, 3), np.uint8)
    canvas[PAD : PAD + h, PAD : PAD + w] = first
    canvas[PAD : PAD + h, 2 * PAD + w : 2 * PAD + 2 * w] = second
    return canvas


def strip(original: np.ndarray, mask: np.ndarray, result: np.ndarray) -> np.ndarray:
    """``[original | mask | result]``, uint8 ``(h, 3w, 3)``; ``mask`` ``(h, w)`` or ``(h, w, 3)``."""
    mask = np.repeat(mask[..., None], 3, axis=2) if mask.ndim == 2 else mask
    return np.concatenate([original, mask, result], axis=1)


def file_for(layout: str, first: np.ndarray, output: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """The authors' file for one sample: ``first`` fills the reference slot (reconstruction or original)."""
    if layout == "grid":
        return grid(first, output)
    return strip(first, np.zeros(first.shape[:2], np.uint8) if mask is None else mask, output)


def crops(layout: str, file: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference crop ``[:, 0:s]``, the result crop (``[:, s:2s]`` on a grid, ``[:, 2s:3s]`` on a strip) and the
    CLIP crop (from the result crop's start to the right edge) of an authors' file, uint8 ``(H, W', 3)`` each."""
    start = side if layout == "grid" else 2 * side
    return file[:, :side], file[:, start : start + side], file[:, start:]


def frechet_distance(reference: np.ndarray, result: np.ndarray) -> float:
    """FID on the authors' statistics path: ``np.mean``, ``np.cov(rowvar=False)`` and pytorch-fid's
    ``calculate_frechet_distance`` (``scipy.linalg.sqrtm``, ε = 1e-6 added to the diagonals when the product is
    singular). Feature sets ``(N, D)``, N ≥ 2. Differs from torchmetrics' eigenvalue route below 2,048 samples."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    stats = [(np.mean(x, axis=0), np.cov(x, rowvar=False)) for x in (reference, result)]
    return float(calculate_frechet_distance(*stats[0], *stats[1]))


@dataclass
class Sample:
    """One finished sample as the scores see it: uint8 ``(s, s, 3)`` images (``reconstruction`` ``None`` when no run
    made one), the mask ``(s, s)`` or ``(s, s, 3)`` the method was given (or ``None``), the class name, and the
    layout of the file the authors' code would have written for its method (``grid`` when it made its own
    reconstruction, MagicRemover's rows; ``strip`` for baselines), and the dataset's object mask ``(s, s)`` uint8 at
    the output's size, the same for every method (``None`` when the dataset has none), where the removal metrics
    look; ``truth`` the ground truth at the output's size, on datasets with one."""

    sample_id: str
    output: np.ndarray
    original: np.ndarray
    reconstruction: np.ndarray | None
    text: str
    mask: np.ndarray | None = None
    layout: str = "strip"
    object_mask: np.ndarray | None = None
    truth: np.ndarray | None = None


class AuthorsScores(Metric):
    """FID against both references, U-IDS / P-IDS and CLIP similarity on the authors' files and crops.

    For each reference (original, reconstruction) the sample's file is built with that image in the reference slot;
    ``authors_fid`` is the number their ``evaluate.py`` prints on the file they would have written (the
    reconstruction's for grids, the original's for strips). U-IDS / P-IDS and CLIP similarity use that file.

    Args:
        features: the FID extractor (uint8 ``(N, 3, H, W)`` → ``(N, D)``); theirs is ``metrics.fid_backend=pytorch_fid``.
        clip: a metric with ``update(images, texts)`` / ``compute()`` (their protocol: :class:`magicremover.eval.clip.AuthorsClipSimilarity`),
            or ``None``.
        directory: where each sample's file is written as ``<sample_id>.png`` (so their scripts can be run on it).
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, features=None, clip=None, directory: Path | None = None):
        super().__init__()
        self.features, self.clip, self.directory = features, clip, directory
        for key in FEATURE_KEYS:
            self.add_state(key, default=[], dist_reduce_fx="cat")
        self.add_state("layout_counts", default=torch.zeros(len(LAYOUTS), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0), dist_reduce_fx="sum")

    @torch.no_grad()
    def update(self, samples: list[Sample]) -> None:
        self.count += len(samples)
        clip_crops = []
        for sample in samples:
            if sample.layout not in LAYOUTS:
                raise ValueError(f"layout {sample.layout} is not one of {', '.join(LAYOUTS)}")
            if sample.layout == "grid" and sample.reconstruction is None:
                raise ValueError(f"sample {sample.sample_id}: a grid needs the method's own reconstruction")
            self.layout_counts[LAYOUTS.index(sample.layout)] += 1
            file = file_for(sample.layout, _written(sample), sample.output, sample.mask)
            if self.directory is not None:
                atomic_write(self.directory / f"{sample.sample_id}.png", _png(file))
            clip_crops.append(_chw(crops(sample.layout, file, sample.output.shape[1])[2]))
        if self.features is not None:
            written: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            for kind in ("original", "reconstruction"):
                rows = [i for i, sample in enumerate(samples) if getattr(sample, kind) is not None]
                if not rows:
                    continue
                pairs = [_crop_pair(samples[i], getattr(samples[i], kind)) for i in rows]
                reference, result = (self._features([pair[part] for pair in pairs]) for part in (0, 1))
                getattr(self, kind).append(torch.from_numpy(reference))
                getattr(self, kind + "_result").append(torch.from_numpy(result))
                written |= {
                    i: (reference[j], result[j]) for j, i in enumerate(rows) if _written_kind(samples[i]) == kind
                }
            self.written.append(torch.from_numpy(np.stack([written[i][0] for i in range(len(samples))])))
            self.written_result.append(torch.from_numpy(np.stack([written[i][1] for i in range(len(samples))])))
        if self.clip is not None:
            self.clip.update(clip_crops, [s.text for s in samples])

    def _features(self, images: list[np.ndarray]) -> np.ndarray:
        return self.features(torch.stack([_chw(image) for image in images])).double().cpu().numpy()

    def compute(self) -> dict:
        """``authors_fid`` (their printed number), ``authors_fid_original``, ``authors_fid_reconstruction`` (``None``
        unless every sample has one), ``authors_u_ids``, ``authors_p_ids``, ``authors_clip_similarity`` and
        ``authors_settings``."""
        report: dict = {}
        count = int(self.count)
        layouts = [layout for layout, n in zip(LAYOUTS, self.layout_counts.tolist()) if n]
        if self.features is not None and count >= 2:
            feats = {
                key: dim_zero_cat(getattr(self, key)).numpy() if getattr(self, key) else None for key in FEATURE_KEYS
            }
            for kind in ("original", "reconstruction"):
                complete = feats[kind] is not None and len(feats[kind]) == count
                report[f"authors_fid_{kind}"] = (
                    frechet_distance(feats[kind], feats[kind + "_result"]) if complete else None
                )
            # one layout: the written file is one of the two already scored (sqrtm at 2048² takes ~20 s on a core)
            written = {"grid": "authors_fid_reconstruction", "strip": "authors_fid_original"}
            if len(layouts) == 1 and report[written[layouts[0]]] is not None:
                report["authors_fid"] = report[written[layouts[0]]]
            else:
                report["authors_fid"] = frechet_distance(feats["written"], feats["written_result"])
            ids = inception_discriminative_scores(feats["written"], feats["written_result"])
            report |= {f"authors_{key}": value for key, value in ids.items()}
        if self.clip is not None and count:
            report["authors_clip_similarity"] = float(self.clip.compute())
        layout = "/".join(sorted(layouts))
        report["authors_settings"] = {
            "layout": layout,
            "files": str(self.directory) if self.directory else None,
            "crops": "reference [:, 0:s]; result [:, s:2s] on grids, [:, 2s:3s] on strips; CLIP from the result's start",
            "authors_fid": "against the reconstruction on grids, the original on strips (what evaluate.py prints)",
            "statistics": "np.cov + pytorch_fid calculate_frechet_distance (scipy sqrtm, eps 1e-6 fallback)",
            "extractor": extractor_description(self.features),
        }
        return report


def _written_kind(sample: Sample) -> str:
    return "reconstruction" if sample.layout == "grid" else "original"


def _written(sample: Sample) -> np.ndarray:
    return getattr(sample, _written_kind(sample))


def _crop_pair(sample: Sample, first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, result, _ = crops(
        sample.layout, file_for(sample.layout, first, sample.output, sample.mask), sample.output.shape[1]
    )
    return reference, result


def _chw(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="png")  # save_image's own encoder call: PIL, default settings
    return buffer.getvalue()
