"""Scoring toy images without a neural network: which (colour, shape) objects and which background they show.

Objects: pixels close to a palette colour form connected blobs; a blob is the shape whose ideal outline — same area,
same centroid, best of 5° rotations — it overlaps most, if that IoU is at least ``min_iou``. Unlike a single
area-to-extent ratio, this survives the rounded corners of decoded images, and a blob like no shape counts as
nothing. Glass discs (half-transparent) are not scored as objects.
Backgrounds: a small CNN fit on rendered scenes whose seeds are disjoint from training and evaluation.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from scipy import ndimage

from magicremover.toy.scenes import BACKGROUNDS, COLOURS, SHAPES, render_scene

_PALETTE = np.array(list(COLOURS.values()), dtype=float)
# rotations up to each shape's symmetry: a square repeats every 90°, an equilateral triangle every 120°
_ANGLES = {"circle": (0.0,), "square": np.deg2rad(np.arange(0, 90, 5)), "triangle": np.deg2rad(np.arange(0, 120, 5))}


def _ideal(shape: str, area: float, dy: np.ndarray, dx: np.ndarray, angle: float) -> np.ndarray:
    """Boolean mask of ``shape`` with ``area`` px² centred where (``dy``, ``dx``) = 0, rotated by ``angle``."""
    if shape == "circle":
        return dy**2 + dx**2 <= area / np.pi
    u, v = np.cos(angle) * dx + np.sin(angle) * dy, -np.sin(angle) * dx + np.cos(angle) * dy
    if shape == "square":
        half = np.sqrt(area) / 2
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    circumradius = np.sqrt(area * 4 / (3 * np.sqrt(3)))  # equilateral triangle: area = 3√3/4 R²
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        a = np.pi / 2 + 2 * np.pi * k / 3
        inside &= u * np.cos(a) + v * np.sin(a) <= circumradius / 2
    return inside


def classify_shape(blob: np.ndarray) -> tuple[str, float]:
    """The shape an ``(H, W)`` boolean blob matches best, and its IoU with that ideal shape in [0, 1]."""
    ys, xs = np.nonzero(blob)
    y, x = np.mgrid[0 : blob.shape[0], 0 : blob.shape[1]]
    dy, dx = y - ys.mean(), x - xs.mean()
    best = {}
    for shape in SHAPES:
        ideals = (_ideal(shape, len(ys), dy, dx, angle) for angle in _ANGLES[shape])
        best[shape] = max((ideal & blob).sum() / (ideal | blob).sum() for ideal in ideals)
    shape = max(best, key=best.get)
    return shape, float(best[shape])


def detect_objects(
    image: np.ndarray, max_distance: float = 40.0, min_area: int = 40, min_iou: float = 0.75
) -> set[tuple[str, str]]:
    """(colour, shape) pairs visible in an ``(H, W, 3)`` uint8 image.

    Defaults chosen on the toy VAE's reconstructions of rendered scenes (seeds from 30,000,000, disjoint from training,
    the held-out split and the background classifier's): their objects match an ideal shape at a median IoU of 0.96
    (98 % ≥ 0.84), other blobs mostly below 0.45; there 411 of 412 objects are found and nothing else.
    """
    distance = np.linalg.norm(image.astype(float)[:, :, None, :] - _PALETTE[None, None], axis=-1)  # (H, W, colours)
    nearest = distance.argmin(-1)
    close = distance.min(-1) < max_distance
    found = set()
    for index, colour in enumerate(COLOURS):
        labels, count = ndimage.label(close & (nearest == index))
        for label in range(1, count + 1):
            blob = labels == label
            if blob.sum() < min_area:
                continue
            shape, iou = classify_shape(blob)
            if iou >= min_iou:
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
    return {(words[i], words[i + 1]) for i in range(len(words) - 1) if words[i] in COLOURS and words[i + 1] in SHAPES}


def caption_background(caption: str) -> str:
    phrase = caption.split(" on ", 1)[1]
    return next(kind for kind, text in BACKGROUNDS.items() if text == phrase)
