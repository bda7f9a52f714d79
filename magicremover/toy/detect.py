"""Scoring toy images without a neural network: which (colour, shape) objects and which background they show.

Objects: pixels close to a palette colour form connected blobs; a blob's shape comes from the rotation-invariant
ratio area / (π r²), r the largest distance from its centroid to one of its pixels — about 1.0 for a circle, 0.64
for a square and 0.41 for a triangle. Glass discs (half-transparent) are not scored as objects.
Backgrounds: a small CNN fit on rendered scenes whose seeds are disjoint from training and evaluation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from magicremover.toy.scenes import BACKGROUNDS, COLOURS, render_scene

_PALETTE = np.array(list(COLOURS.values()), dtype=float)
_SHAPE_RATIOS = {"circle": 1.0, "square": 0.637, "triangle": 0.413}


def detect_objects(image: np.ndarray, max_distance: float = 60.0, min_area: int = 40) -> set[tuple[str, str]]:
    """(colour, shape) pairs visible in an ``(H, W, 3)`` uint8 image."""
    pixels = image.astype(float)
    distance = np.linalg.norm(pixels[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, colours)
    nearest = distance.argmin(-1)
    close = distance.min(-1) < max_distance
    found = set()
    for index, colour in enumerate(COLOURS):
        labels, count = ndimage.label(close & (nearest == index))
        for label in range(1, count + 1):
            ys, xs = np.nonzero(labels == label)
            if len(ys) < min_area:
                continue
            radius = np.sqrt(((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2).max()) + 0.5
            ratio = len(ys) / (np.pi * radius**2)
            shape = min(_SHAPE_RATIOS, key=lambda s: abs(_SHAPE_RATIOS[s] - ratio))
            found.add((colour, shape))
    return found


class _BackgroundNet(torch.nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        layers, width = [], 3
        for out in (16, 32, 64):
            layers += [torch.nn.Conv2d(width, out, 3, stride=2, padding=1), torch.nn.GroupNorm(4, out), torch.nn.SiLU()]
            width = out
        self.features = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return self.head(torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1))


def _batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1


@lru_cache(maxsize=1)
def _background_model(n_scenes: int = 3000, steps: int = 600, first_seed: int = 20_000_000) -> _BackgroundNet:
    """A small CNN fit on rendered scenes (seeds disjoint from training and evaluation); ~1 min on one core."""
    kinds = list(BACKGROUNDS)
    scenes = [render_scene(seed) for seed in range(first_seed, first_seed + n_scenes)]
    images, labels = _batch([s.image for s in scenes]), torch.tensor([kinds.index(s.background) for s in scenes])
    torch.manual_seed(0)
    net = _BackgroundNet(len(kinds))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        for _ in range(steps):
            idx = torch.randint(len(images), (64,), generator=generator)
            loss = torch.nn.functional.cross_entropy(net(images[idx]), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def classify_background(images: list[np.ndarray]) -> list[str]:
    """The background kind of each ``(H, W, 3)`` uint8 image."""
    kinds = list(BACKGROUNDS)
    return [kinds[i] for i in _background_model()(_batch(images)).argmax(1).tolist()]


def caption_objects(caption: str) -> set[tuple[str, str]]:
    """The opaque (colour, shape) pairs a caption asks for."""
    words = caption.split()
    return {(words[i], words[i + 1]) for i in range(len(words) - 1) if words[i] in COLOURS and words[i + 1] in _SHAPE_RATIOS}


def caption_background(caption: str) -> str:
    phrase = caption.split(" on ", 1)[1]
    return next(kind for kind, text in BACKGROUNDS.items() if text == phrase)
