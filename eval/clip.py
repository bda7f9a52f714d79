"""CLIP similarity between each output and the bare class name ("dog"): lower means less of the object is left.

Two protocols on one model (OpenAI CLIP ViT-B/16, as the authors), loaded from a hub id or a local folder and
checked, because an offline hub load can return a silently broken tokenizer:

* ``torchmetrics`` — ``CLIPScore``: 100 · cosine, clipped at 0, averaged; CLIP's processor (bicubic resize of the
  short side to 224, centre crop).
* ``authors`` — the authors' ``evaluation/evaluate.py`` (task ``cs``): the plain cosine averaged (0.21, not 21), the
  image resized to 224 × 224 by bilinear tensor interpolation without antialias (torchvision's ``T.Resize`` on a
  tensor before 0.17), then CLIP's mean/std normalisation; the text is the bare class name.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from magicremover.errors import ConfigError, ModelLoadError

ClipLoader = Callable[[], tuple[CLIPModel, CLIPProcessor]]
PROTOCOLS = ("torchmetrics", "authors")


class _ProjectedFeatures(torch.nn.Module):
    """CLIP whose ``get_*_features`` return the projected embedding tensors. transformers 5 returns an output object
    (projection in ``pooler_output``), which torchmetrics 1.9's CLIPScore cannot normalise."""

    def __init__(self, clip: CLIPModel):
        super().__init__()
        self.clip, self.config = clip, clip.config

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return _tensor(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return _tensor(self.clip.get_text_features(*args, **kwargs))


def _tensor(features) -> torch.Tensor:
    return features if isinstance(features, torch.Tensor) else features.pooler_output


def load_clip(model: str = "openai/clip-vit-base-patch16") -> ClipLoader:
    """A loader of a CLIP model and its processor from a hub id or a local folder (called when the metric set is built,
    so a missing model fails before any sample runs). Every metric calling it shares the one model it loads."""

    @functools.cache
    def load() -> tuple[CLIPModel, CLIPProcessor]:
        try:
            clip, processor = CLIPModel.from_pretrained(model), CLIPProcessor.from_pretrained(model)
        except (OSError, ValueError) as err:
            raise ModelLoadError(
                f"could not load CLIP from {model} ({str(err).splitlines()[0]}); set weights.clip=LOCAL_FOLDER"
            ) from err
        if len(processor.tokenizer) != clip.config.text_config.vocab_size:
            raise ModelLoadError(
                f"CLIP at {model}: tokenizer has {len(processor.tokenizer)} tokens, the model embeds "
                f"{clip.config.text_config.vocab_size}; set weights.clip=LOCAL_FOLDER with a complete CLIP"
            )
        return clip.eval(), processor

    load.description = f"CLIP {model}"
    return load


def tiny_clip(seed: int = 0) -> ClipLoader:
    """A seeded random CLIP with the real tokenizer (built offline), for tests: plumbing only."""
    from magicremover.clip_tokenizer import build_clip_tokenizer
    from magicremover.models import text_config_for

    @functools.cache
    def load() -> tuple[CLIPModel, CLIPProcessor]:
        tokenizer = build_clip_tokenizer()
        text = text_config_for(
            tokenizer, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2
        )
        vision = dict(
            image_size=32,
            patch_size=8,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
        )
        with torch.random.fork_rng():  # seeded weights without touching the caller's random state
            torch.manual_seed(seed)
            clip = CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision, projection_dim=16)).eval()
        images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        return clip, CLIPProcessor(image_processor=images, tokenizer=tokenizer)

    load.description = f"tiny random CLIP (seed {seed}): plumbing only"
    return load


def clip_description(loader: ClipLoader) -> str:
    """What to record as the CLIP model: the loader's ``description`` (its hub id or folder), else ``custom``."""
    return getattr(loader, "description", "custom")


def clip_scores(loader: ClipLoader, protocols: Sequence[str]) -> list:
    """One metric per entry of ``protocols``, all sharing one model (e.g. outputs and inputs vs the class name). Update
    each with uint8 ``(3, H, W)`` images and one text per image; ``compute()`` is the mean: in [0, 100] under
    ``torchmetrics``, a cosine in [−1, 1] under ``authors``."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    for protocol in protocols:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"metrics.clip_protocol={protocol} is not one of {', '.join(PROTOCOLS)}")
    clip, processor = loader()
    shared = (_ProjectedFeatures(clip), processor)
    return [
        AuthorsClipSimilarity(clip, processor)
        if protocol == "authors"
        else CLIPScore(model_name_or_path=lambda: shared)
        for protocol in protocols
    ]


class AuthorsClipSimilarity(Metric):
    """The authors' CLIP similarity (``evaluate.py``, task ``cs``): mean cosine of image and class-name embeddings."""

    higher_is_better = False  # for removal: less of the object left
    full_state_update = False

    def __init__(self, clip: CLIPModel, processor: CLIPProcessor):
        super().__init__()
        self.clip, self.tokenizer = clip, processor.tokenizer
        images = processor.image_processor
        self.side = images.crop_size["height"] if getattr(images, "crop_size", None) else images.size["shortest_edge"]
        self.mean = torch.tensor(images.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(images.image_std).view(1, 3, 1, 1)
        self.add_state("cosines", default=[], dist_reduce_fx="cat")

    @torch.no_grad()
    def update(self, images: list[torch.Tensor], texts: list[str]) -> None:
        pixels = torch.stack(list(images)).float() / 255
        pixels = F.interpolate(
            pixels, size=(self.side, self.side), mode="bilinear", align_corners=False, antialias=False
        )
        image = _tensor(self.clip.get_image_features(pixel_values=(pixels - self.mean) / self.std))
        tokens = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        text = _tensor(self.clip.get_text_features(**tokens))
        self.cosines.append(F.cosine_similarity(image, text))

    def compute(self) -> torch.Tensor:
        return dim_zero_cat(self.cosines).mean()


class ClipSimilarity(Metric):
    """``clip_similarity`` (outputs) and ``clip_similarity_input`` (inputs) to the class name, the CLIP model and the
    protocol: two metrics of :func:`clip_scores` sharing one model. Lower is better for removal.

    Args:
        loader: a CLIP loader; protocol: ``torchmetrics`` or ``authors``.
    """

    higher_is_better = False
    full_state_update = False

    def __init__(self, loader: ClipLoader, protocol: str = "torchmetrics"):
        super().__init__()
        self.loader, self.protocol = loader, protocol
        self.outputs, self.inputs = clip_scores(loader, [protocol, protocol])

    def update(self, samples: list) -> None:
        """``samples``: :class:`magicremover.eval.authors.Sample` s (uint8 ``(H, W, 3)`` images)."""
        texts = [s.text for s in samples]
        for metric, key in ((self.outputs, "output"), (self.inputs, "original")):
            metric.update([torch.from_numpy(getattr(s, key)).permute(2, 0, 1).contiguous() for s in samples], texts)

    def compute(self) -> dict:
        if not self.outputs.update_called:
            return {}
        return {
            "clip_similarity": float(self.outputs.compute()),
            "clip_similarity_input": float(self.inputs.compute()),
            "clip_model": clip_description(self.loader),
            "clip_protocol": self.protocol,
        }
