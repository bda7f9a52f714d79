"""CLIP@1/3/5 and CLIP distance on the removed object's box, as Inst-Inpaint's ``eval/clip_accuracy.py`` scores.

Per sample, the object's box (here: the bounding box of the sample's mask) is cropped from the input and from the
output after both are resized to 256² (bilinear), padded to a square with black (centred), and scored by CLIP
against ``"a photo of a {class}"`` for every class removed anywhere in the run. The input crop's top class is the
object CLIP sees; **CLIP@N** is the fraction of samples where that class is *not* among the output crop's top N
(higher is better: the object is gone). **CLIP distance** is the mean drop of CLIP's logit (100 · cosine) for the
sample's own class from the input crop to the output crop, the ``ground_truth`` column that script records (higher:
less of the object is left). Inst-Inpaint scores with OpenAI's ViT-B/32; this uses ``metrics.clip``'s model
(``weights.clip=openai/clip-vit-base-patch32`` to match), recorded under ``clip_accuracy_settings``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from magicremover.eval.clip import _tensor
from magicremover.fullsize import mask_box

EVAL_RESOLUTION = 256
TOP_N = (1, 3, 5)


def box_crop(image: np.ndarray, mask: np.ndarray) -> Image.Image | None:
    """The mask's bounding box cut from ``image`` (uint8 ``(s, s, 3)``) at 256² and padded to a centred black square;
    ``None`` for an empty mask. Box corners scale as the script's ``int(x · 256 / s)``."""
    region = mask_box((mask.max(-1) if mask.ndim == 3 else mask) > 0)
    if region is None:
        return None
    scale = EVAL_RESOLUTION / image.shape[1]
    box = [int(v * scale) for v in region]
    resized = Image.fromarray(image).resize((EVAL_RESOLUTION, EVAL_RESOLUTION), Image.BILINEAR)
    crop = resized.crop(box)
    width, height = crop.size
    side = max(width, height)
    square = Image.new(crop.mode, (side, side), (0, 0, 0))
    square.paste(crop, ((side - width) // 2, (side - height) // 2))
    return square


def clip_at_n(source_logits: torch.Tensor, output_logits: torch.Tensor, n: int) -> float:
    """Fraction of rows whose source top class is not among the output's top ``n``; logits ``(samples, classes)``."""
    seen = source_logits.argmax(1, keepdim=True)
    top = output_logits.topk(min(n, output_logits.shape[1]), dim=1).indices
    return float((top != seen).all(1).float().mean())


NAME_BYTES = 128  # a class name's UTF-8 bytes in the synced state (longer names are cut there)


def _encoded(name: str) -> torch.Tensor:
    return torch.tensor(list(name.encode()[:NAME_BYTES].ljust(NAME_BYTES, b"\0")), dtype=torch.uint8)[None]


def _decoded(row: torch.Tensor) -> str:
    return bytes(row.tolist()).rstrip(b"\0").decode(errors="replace")


class ClipAccuracy(Metric):
    """Accumulates the box crops' CLIP image embeddings; ``compute()`` scores them against every class seen:
    ``clip_acc@1/3/5`` (higher: the object is no longer recognised) and ``clip_distance``.

    Args:
        clip, processor: a transformers CLIP model and its processor (see :mod:`magicremover.eval.clip`).
        model: what to record as the CLIP model in ``clip_accuracy_settings``.
    """

    higher_is_better = True
    full_state_update = False

    def __init__(self, clip, processor, model: str = "custom"):
        super().__init__()
        self.clip, self.processor, self.model = clip, processor, model
        self.add_state("original", default=[], dist_reduce_fx="cat")
        self.add_state("output", default=[], dist_reduce_fx="cat")
        self.add_state("classes", default=[], dist_reduce_fx="cat")  # each class name's bytes, one row per sample

    @torch.no_grad()
    def update(self, samples: list) -> None:
        """``samples``: :class:`magicremover.eval.authors.Sample` s (uint8 ``(s, s, 3)`` images); those without a
        non-empty mask are skipped."""
        for sample in samples:
            mask = sample.object_mask
            crops = (
                {key: box_crop(getattr(sample, key), mask) for key in ("original", "output")}
                if mask is not None
                else {}
            )
            if not crops or crops["original"] is None:
                continue
            for key, crop in crops.items():
                pixels = self.processor(images=crop, return_tensors="pt")["pixel_values"]
                embedding = _tensor(self.clip.get_image_features(pixel_values=pixels))
                getattr(self, key).append(F.normalize(embedding, dim=-1))
            self.classes.append(_encoded(sample.text))

    @torch.no_grad()
    def compute(self) -> dict:
        """``clip_acc@1/3/5`` and ``clip_distance`` over the scored samples (``None`` when there are none)."""
        if not self.classes:
            return {f"clip_acc@{n}": None for n in TOP_N} | {"clip_distance": None}
        classes = [_decoded(row) for row in dim_zero_cat(self.classes)]
        names = sorted(set(classes))
        tokens = self.processor.tokenizer([f"a photo of a {name}" for name in names], padding=True, return_tensors="pt")
        text = F.normalize(_tensor(self.clip.get_text_features(**tokens)), dim=-1)
        scale = self.clip.logit_scale.exp()
        source, output = (scale * dim_zero_cat(getattr(self, key)) @ text.T for key in ("original", "output"))
        own = torch.tensor([names.index(name) for name in classes])[:, None]
        report = {f"clip_acc@{n}": clip_at_n(source, output, n) for n in TOP_N}
        report["clip_distance"] = float((source.gather(1, own) - output.gather(1, own)).mean())
        report["clip_accuracy_settings"] = {
            "crop": f"the mask's box at {EVAL_RESOLUTION}², padded to a centred black square (Inst-Inpaint)",
            "classes": len(names),
            "n": len(classes),
            "model": self.model,
        }
        return report
