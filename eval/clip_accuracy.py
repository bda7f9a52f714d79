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


class ClipAccuracy:
    """Accumulates the box crops' CLIP image embeddings; ``compute()`` scores them against every class seen.

    Args:
        clip, processor: a transformers CLIP model and its processor (see :mod:`magicremover.eval.clip`).
    """

    def __init__(self, clip, processor):
        self.clip, self.processor = clip, processor
        self.embeddings: dict[str, list[torch.Tensor]] = {"original": [], "output": []}
        self.classes: list[str] = []

    @torch.no_grad()
    def add(self, original: np.ndarray, output: np.ndarray, mask: np.ndarray | None, class_name: str) -> None:
        """One sample (uint8 ``(s, s, 3)`` images); skipped without a non-empty mask."""
        crops = {"original": box_crop(original, mask), "output": box_crop(output, mask)} if mask is not None else {}
        if not crops or crops["original"] is None:
            return
        for key, crop in crops.items():
            pixels = self.processor(images=crop, return_tensors="pt")["pixel_values"]
            self.embeddings[key].append(F.normalize(_tensor(self.clip.get_image_features(pixel_values=pixels)), dim=-1))
        self.classes.append(class_name)

    @torch.no_grad()
    def compute(self) -> dict:
        """``clip_acc@1/3/5`` and ``clip_distance`` over the scored samples (``None`` when there are none)."""
        if not self.classes:
            return {f"clip_acc@{n}": None for n in TOP_N} | {"clip_distance": None}
        names = sorted(set(self.classes))
        tokens = self.processor.tokenizer([f"a photo of a {name}" for name in names], padding=True, return_tensors="pt")
        text = F.normalize(_tensor(self.clip.get_text_features(**tokens)), dim=-1)
        scale = self.clip.logit_scale.exp()
        source, output = (scale * torch.cat(self.embeddings[key]) @ text.T for key in ("original", "output"))
        own = torch.tensor([names.index(name) for name in self.classes])[:, None]
        report = {f"clip_acc@{n}": clip_at_n(source, output, n) for n in TOP_N}
        report["clip_distance"] = float((source.gather(1, own) - output.gather(1, own)).mean())
        report["clip_accuracy_settings"] = {
            "crop": f"the mask's box at {EVAL_RESOLUTION}², padded to a centred black square (Inst-Inpaint)",
            "classes": len(names),
            "n": len(self.classes),
        }
        return report
