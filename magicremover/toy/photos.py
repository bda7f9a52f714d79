"""Toy scenes as people's photos: a small object in a large photo, with its ground truth.

A one-object toy scene is scaled by ``scale`` (3.125: the 64² scene becomes a 200² tile, radii of 12–16 px become
37–50 px) and placed in a photo whose background is the scene's own background, scaled the same way and tiled with
mirroring (so stripes, checkers and gradients continue across tiles without seams). The ground truth is the same
photo built from the scene without the object; the mask covers the object and its shadow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from magicremover.toy.scenes import SIZE, ToyScene, render_scene


@dataclass(frozen=True)
class ToyPhoto:
    """A large photo: ``image`` and ``truth`` RGB, ``mask`` L (255 = object or shadow), all of the photo's size;
    ``box`` the scaled scene's place (left, top, right, bottom); ``phrase`` the object's words, ``caption`` the
    scene's."""

    image: Image.Image
    truth: Image.Image
    mask: Image.Image
    box: tuple[int, int, int, int]
    phrase: str
    caption: str


def _tiled(tile: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``tile`` ``(t, t, C)`` repeated over ``size`` = (width, height), every odd tile mirrored."""
    t = tile.shape[0]
    rows, cols = -(-size[1] // t), -(-size[0] // t)
    out = np.zeros((rows * t, cols * t, tile.shape[2]), tile.dtype)
    for r in range(rows):
        for c in range(cols):
            flipped = tile[:: -1 if r % 2 else 1, :: -1 if c % 2 else 1]
            out[r * t : (r + 1) * t, c * t : (c + 1) * t] = flipped
    return out[: size[1], : size[0]]


PHOTO_SEED = 30_000_000  # the held-out photos' range: never used to choose a setting
ASPECTS = (4 / 3, 3 / 2, 1.0)


def one_object_scene(seed: int) -> ToyScene:
    """The first one-object scene at or after ``seed``."""
    while len((scene := render_scene(seed)).objects) != 1:
        seed += 1
    return scene


def held_out_photos(n: int, first_seed: int = PHOTO_SEED) -> list[ToyPhoto]:
    """The first ``n`` photos of the held-out set (:func:`held_out_photo`)."""
    return [held_out_photo(index, first_seed) for index in range(n)]


def held_out_photo(index: int, first_seed: int = PHOTO_SEED) -> ToyPhoto:
    """Photo ``index`` of a set nobody tuned on, made from its own seeds alone: the longer side 1024–4000 px (aspect
    4:3, 3:2 or 1:1, either orientation), the object's equivalent radius 20–120 px, its tile at a random even place of
    the tile grid (the photo's edges and corners included). Objects are the toy scenes' own mix (glass, shadows)."""
    rng = np.random.default_rng(first_seed + index)
    scene = one_object_scene(first_seed + 1000 * index)
    longer, aspect = int(rng.integers(1024, 4001)), ASPECTS[rng.integers(len(ASPECTS))]
    size = (longer, round(longer / aspect)) if rng.random() < 0.7 else (round(longer / aspect), longer)
    radius = np.sqrt(scene.objects[0].mask.sum() / np.pi)  # at 64²
    scale = min(rng.uniform(20, 120) / radius, min(size) / SIZE)
    side = round(SIZE * scale)
    at = tuple(int(rng.choice(np.arange(0, extent // side, 2))) for extent in size)
    return toy_photo(scene.seed, size, scale, at)


def toy_photo(seed: int, size: tuple[int, int] = (1280, 960), scale: float = 3.125, at: tuple[int, int] = (2, 2)):
    """The photo of the first one-object scene at or after ``seed``, its scaled scene at tile ``at`` (column, row;
    both even, so the tile is not mirrored)."""
    scene = one_object_scene(seed)
    (obj,) = scene.objects
    side = round(SIZE * scale)
    big = lambda a: np.asarray(Image.fromarray(a).resize((side, side), Image.Resampling.BICUBIC))  # noqa: E731
    truth = _tiled(big(obj.removed), size)
    image = truth.copy()
    left, top = at[0] * side, at[1] * side
    image[top : top + side, left : left + side] = big(scene.image)
    mask = np.zeros(size[::-1], np.uint8)
    mask[top : top + side, left : left + side] = big((obj.shadow_mask > 0.5).astype(np.uint8) * 255)
    return ToyPhoto(
        Image.fromarray(image),
        Image.fromarray(truth),
        Image.fromarray((mask > 127).astype(np.uint8) * 255),
        (left, top, left + side, top + side),
        obj.phrase,
        scene.caption,
    )
