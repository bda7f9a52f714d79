"""ReMOVE (Chandrasekar et al., CVPR-W 2024): a reference-free removal score from SAM's image features.

The score is the cosine similarity between SAM's image-encoder features mean-pooled inside the mask and outside it,
on the crop around the mask that ReMOVE's ``--crop`` takes (its smallest bounding square plus 16 px where the image
allows; higher is better: the filled region looks like its surroundings). SAM resizes the crop's longer side to its
input size and pads the rest; the mask is mapped onto the part of the feature grid the image covers, and padding
cells count as neither inside nor outside. ReMOVE's script resizes the mask to the whole 64² grid instead, which
matches only square crops: a crop clamped at the photo's edge, or no crop, puts its mask off the features. On a square
crop both mappings are the same (``tests/test_remove_score.py`` checks ours against its crop rule, vendored).

SAM comes from a local folder of transformers' ``SamModel`` (e.g. ``facebook/sam-vit-huge`` saved with
``save_pretrained``; ``weights.sam=PATH``); nothing is downloaded.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from magicremover.errors import ModelLoadError
from magicremover.fullsize import mask_box

MARGIN = 16  # px around the mask's bounding square (ReMOVE's crop)


def bounding_square(mask: np.ndarray) -> tuple[int, int, int] | None:
    """ReMOVE's crop: ``(x, y, side)`` of the smallest square around the mask's box, grown by :data:`MARGIN` on every
    side when that stays inside the image, else by the largest margin that does (0 at an edge). The square may run
    past the bottom or right edge; the crop is then clipped there. ``None`` for an empty mask."""
    region = mask_box(mask)
    if region is None:
        return None
    left, top, right, bottom = region[0], region[1], region[2] - 1, region[3] - 1  # ReMOVE's inclusive corners
    side = max(right - left + 1, bottom - top + 1)
    height, width = mask.shape
    if top >= MARGIN and left >= MARGIN and bottom + MARGIN <= height and right + MARGIN <= width:
        margin = MARGIN
    else:
        margin = max(min(left, top, height - bottom, width - right), 0)
    return int(left - margin), int(top - margin), int(side + 2 * margin)


def grid_masks(mask: np.ndarray, covered: tuple[int, int], grid: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The mask on SAM's ``grid × grid`` features: ``(inside, outside)``, bool ``(grid, grid)``.

    ``covered`` is the resized image's ``(h, w)`` in grid cells (the rest is SAM's padding, in neither). A cell is
    inside when the mask, resized to the covered cells as ReMOVE resizes it (PIL's default resampling of an 8-bit
    mask), is 255 there; outside when it is not.
    """
    rows, cols = covered
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((cols, rows))) == 255
    inside = torch.zeros(grid, grid, dtype=torch.bool)
    outside = torch.zeros(grid, grid, dtype=torch.bool)
    inside[:rows, :cols] = torch.from_numpy(resized)
    outside[:rows, :cols] = torch.from_numpy(~resized)
    return inside, outside


TINY_SAM = {  # SAM's vision encoder at toy size: 128-px input, an 8×8 feature grid
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "output_channels": 16,
    "image_size": 128,
    "patch_size": 16,
    "global_attn_indexes": [1],
    "window_size": 4,
    "num_pos_feats": 8,
    "mlp_dim": 64,
}


@functools.cache  # stateless: one model per seed serves every run of a process (a sweep's jobs)
def tiny_remove_score(seed: int = 0) -> RemoveScore:
    """ReMOVE on a random SAM of the real architecture at toy size: for offline tests of the plumbing; its numbers
    mean nothing."""
    from transformers import SamConfig, SamModel

    with torch.random.fork_rng():  # seeded without moving the caller's random state
        torch.manual_seed(seed)
        return RemoveScore(SamModel(SamConfig(vision_config=TINY_SAM)), description="tiny random SAM")


def load_remove_score(path: str | Path | None) -> RemoveScore | None:
    """:meth:`RemoveScore.from_folder`, or ``None`` (no ReMOVE score) when no SAM folder is configured."""
    return RemoveScore.from_folder(path) if path else None


class RemoveScore:
    """ReMOVE on a SAM model.

    Args:
        model: a transformers ``SamModel`` (its vision encoder is used).
        description: what to record as the model (its folder).
    """

    def __init__(self, model, description: str = "custom"):
        from transformers import SamImageProcessor

        self.model = model.eval()
        side = model.config.vision_config.image_size
        self.grid = side // model.config.vision_config.patch_size
        self.processor = SamImageProcessor(size={"longest_edge": side}, pad_size={"height": side, "width": side})
        self.description = description

    @classmethod
    def from_folder(cls, path: str | Path) -> RemoveScore:
        """SAM from a local transformers folder.

        Raises:
            ModelLoadError: the folder is missing or holds no SAM model (one line naming ``weights.sam=``).
        """
        from transformers import SamModel

        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"weights.sam={path} is not a SAM model folder; save transformers' SamModel (facebook/sam-vit-huge) "
                "there with save_pretrained, or leave weights.sam=null"
            )
        model = SamModel.from_pretrained(folder, local_files_only=True)
        return cls(model, description=str(folder))

    @torch.no_grad()
    def __call__(self, image: np.ndarray, mask: np.ndarray) -> float | None:
        """The score of one result: ``image`` uint8 ``(H, W, 3)``, ``mask`` ``(H, W)`` (nonzero = removed object).
        ``None`` when the mask is empty or covers the whole crop (no inside or no outside)."""
        mask = np.asarray(mask)
        if mask.ndim == 3:
            mask = mask.max(-1)
        mask = mask > 127 if mask.dtype == np.uint8 else mask.astype(bool)
        square = bounding_square(mask)
        if square is None:
            return None
        x, y, side = square
        crop, crop_mask = image[y : y + side, x : x + side], mask[y : y + side, x : x + side]
        inputs = self.processor(np.array(crop), return_tensors="pt")  # a copy: the processor wants a writable array
        device = next(self.model.parameters()).device
        features = self.model.get_image_embeddings(inputs["pixel_values"].to(device))[0].float().cpu()  # (C, g, g)
        scale = self.grid / self.processor.pad_size["height"]
        covered = tuple(max(1, round(int(n) * scale)) for n in inputs["reshaped_input_sizes"][0])
        inside, outside = grid_masks(crop_mask, covered, self.grid)
        if not inside.any() or not outside.any():
            return None
        pooled = [features[:, region].mean(1) for region in (inside, outside)]
        return float(torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0))


class RemoveScores(Metric):
    """``remove_score`` (outputs) and ``remove_score_input`` (the inputs, the same masks), means over the samples whose
    mask both can score, and ``remove_score_settings``. Higher is better.

    Args:
        score: the scorer (:class:`RemoveScore`).
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, score: RemoveScore):
        super().__init__()
        self.score = score
        self.add_state("output", default=[], dist_reduce_fx="cat")
        self.add_state("original", default=[], dist_reduce_fx="cat")

    def update(self, samples: list) -> None:
        """``samples``: :class:`magicremover.eval.authors.Sample` s; those without a mask are left out."""
        for sample in samples:
            if sample.object_mask is None:
                continue
            scores = {key: self.score(getattr(sample, key), sample.object_mask) for key in ("output", "original")}
            if None not in scores.values():
                for key, value in scores.items():
                    getattr(self, key).append(torch.tensor([value], dtype=torch.float64))

    def compute(self) -> dict:
        scored = {
            key: dim_zero_cat(getattr(self, key)) if getattr(self, key) else None for key in ("output", "original")
        }
        return {
            "remove_score": float(np.mean(scored["output"].numpy())) if scored["output"] is not None else None,
            "remove_score_input": float(np.mean(scored["original"].numpy()))
            if scored["original"] is not None
            else None,
            "remove_score_settings": {
                "sam": self.score.description,
                "crop": f"ReMOVE's: the mask's smallest bounding square + {MARGIN} px where the image allows",
                "mask": "mapped onto the feature cells the resized crop covers (SAM's padding in neither region)",
                "n": 0 if scored["output"] is None else len(scored["output"]),
            },
        }
