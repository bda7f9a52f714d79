"""The toy world: 64×64 synthetic scenes with captions and, for every object, the ground truth without it.

A scene is a patterned background in muted colours with one or two objects of different colours, sometimes with
a drop shadow, sometimes a semi-transparent "glass disc" (alpha 0.5) through which the background shows. Every
scene is a pure function of its seed. Shapes are rendered at 4× resolution and box-filtered, so edges are
anti-aliased and masks are soft coverage values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from magicremover.errors import ConfigError

SIZE, SUPERSAMPLE = 64, 4
BACKGROUNDS = {
    "hstripes": "horizontal stripes",
    "vstripes": "vertical stripes",
    "checker": "a checkerboard",
    "dots": "dots",
    "gradient": "a gradient",
    "solid": "a plain background",
}
COLOURS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 80, 220),
    "yellow": (240, 210, 30),
    "purple": (148, 60, 189),
    "orange": (255, 127, 14),
}
SHAPES = ("circle", "square", "triangle")
GLASS_ALPHA, SHADOW_ALPHA = 0.5, 0.4
# Object radii in pixels: 12-16 rather than the first design's 8-16. The attention gate scores a map's top-20 % region
# (819 px) against the object's mask, an IoU of at most area / 819, so smaller objects cap it below 0.5 for any map.
RADIUS = (12.0, 16.0)
VOCABULARY = sorted(
    {
        "a",
        "photo",
        "of",
        "and",
        "on",
        "glass",
        "disc",
        *COLOURS,
        *SHAPES,
        *(w for phrase in BACKGROUNDS.values() for w in phrase.split()),
    }
)


@dataclass(frozen=True)
class ToyObject:
    """One object of a scene.

    Attributes:
        colour, shape: e.g. ``"red"``, ``"circle"``; glass discs have shape ``"glass disc"``.
        phrase: its words in the caption, e.g. ``"red circle"``, ``"green glass disc"``.
        mask: ``(64, 64)`` float coverage in [0, 1] of the object itself.
        shadow_mask: ``(64, 64)`` coverage of the object or its shadow.
        soft_mask: ``(64, 64)`` how much the object changes each pixel (``mask`` × alpha: 0.5 for glass).
        removed: ``(64, 64, 3)`` uint8, the scene rendered without this object and its shadow.
    """

    colour: str
    shape: str
    phrase: str
    mask: np.ndarray
    shadow_mask: np.ndarray
    soft_mask: np.ndarray
    removed: np.ndarray


@dataclass(frozen=True)
class ToyScene:
    """A rendered scene: ``image`` ``(64, 64, 3)`` uint8, its ``caption``, ``background`` kind, ``objects`` and
    ``empty``, the scene without any object (the ground truth of removing them all)."""

    seed: int
    image: np.ndarray
    caption: str
    background: str
    objects: tuple[ToyObject, ...]
    empty: np.ndarray


def _muted(rng: np.random.Generator) -> np.ndarray:
    hue = rng.uniform(0, 1, 3)
    return 90 + 90 * hue / hue.max() * rng.uniform(0.6, 1.0)


def _background(kind: str, rng: np.random.Generator) -> np.ndarray:
    n = SIZE * SUPERSAMPLE
    first, second = _muted(rng), _muted(rng)
    while np.abs(first - second).sum() < 60:
        second = _muted(rng)
    y, x = np.mgrid[0:n, 0:n] / SUPERSAMPLE
    period = rng.integers(8, 14)
    if kind == "hstripes":
        weight = (y // (period / 2)) % 2
    elif kind == "vstripes":
        weight = (x // (period / 2)) % 2
    elif kind == "checker":
        weight = ((y // period) + (x // period)) % 2
    elif kind == "dots":
        cy, cx = (y % period) - period / 2, (x % period) - period / 2
        weight = (cy**2 + cx**2 < (period / 4) ** 2).astype(float)
    elif kind == "gradient":
        angle = rng.uniform(0, 2 * np.pi)
        proj = (x - SIZE / 2) * np.cos(angle) + (y - SIZE / 2) * np.sin(angle)
        weight = (proj - proj.min()) / (proj.max() - proj.min())
    else:
        weight = np.zeros((n, n))
    return first * (1 - weight[..., None]) + second * weight[..., None]


def _shape_mask(shape: str, cy: float, cx: float, radius: float, rotation: float) -> np.ndarray:
    n = SIZE * SUPERSAMPLE
    y, x = (np.mgrid[0:n, 0:n] + 0.5) / SUPERSAMPLE
    dy, dx = y - cy, x - cx
    if shape in ("circle", "glass disc"):
        return (dy**2 + dx**2 <= radius**2).astype(float)
    c, s = np.cos(rotation), np.sin(rotation)
    u, v = c * dx + s * dy, -s * dx + c * dy
    if shape == "square":
        half = radius * 0.85
        return ((np.abs(u) <= half) & (np.abs(v) <= half)).astype(float)
    # equilateral triangle, circumradius = radius: inside all three half-planes
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        a = rotation + np.pi / 2 + 2 * np.pi * k / 3
        inside &= (dx * np.cos(a) + dy * np.sin(a)) <= radius / 2
    return inside.astype(float)


def _downsample(array: np.ndarray) -> np.ndarray:
    k = SUPERSAMPLE
    return array.reshape(SIZE, k, SIZE, k, *array.shape[2:]).mean(axis=(1, 3))


def _compose(background: np.ndarray, layers: list[dict], skip: int | None = None) -> np.ndarray:
    canvas = background.copy()
    for index, layer in enumerate(layers):
        if index == skip:
            continue
        if layer["shadow"] is not None:
            canvas = canvas * (1 - SHADOW_ALPHA * layer["shadow"][..., None])
        alpha = layer["alpha"] * layer["mask"][..., None]
        canvas = canvas * (1 - alpha) + np.array(layer["rgb"], dtype=float) * alpha
    return np.clip(np.round(_downsample(canvas)), 0, 255).astype(np.uint8)


def radius_range(value) -> tuple[float, float]:
    """``value`` as ``(low, high)`` object radii in pixels, checked to be drawable.

    Objects are placed one after the other and a second one is redrawn until it sits apart from the first (centres at
    least r1 + r2 - 4 px apart), so the range must leave room for a radius-``low`` object beside a radius-``high`` one
    even at the image centre: sqrt(2) (32 - low) >= high + low - 4. Otherwise the generator could loop forever.

    Raises:
        ConfigError: not two numbers, not 0 < low <= high < 32, or no room for a second object.
    """
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        low = high = float("nan")
    half = SIZE / 2
    if not (0 < low <= high < half and np.sqrt(2) * (half - low) >= high + low - 4):
        raise ConfigError(
            f"object radii {value!r} cannot be drawn: give [low, high] px with 0 < low <= high < 32 and room "
            "for a second object beside any first (sqrt(2) * (32 - low) >= high + low - 4), "
            "e.g. scene_radius=[12,16]"
        )
    return low, high


def render_scene(
    seed: int,
    glass_probability: float = 0.1,
    shadow_probability: float = 0.3,
    radius: tuple[float, float] = RADIUS,
    distinct_colours: bool = True,
) -> ToyScene:
    """Render the scene of ``seed`` (deterministic) with its caption and per-object ground truth.

    ``radius`` (low, high) in pixels: the range object radii are drawn from (checked by ``radius_range``).
    ``distinct_colours=False`` also allows two objects of one colour (distinct shapes), the domain the committed
    model was trained on; a draw it rejects is redrawn, so every other scene is the same either way. Only reproducing
    that training run needs anything but the defaults.
    """
    radius = radius_range(radius)
    rng = np.random.default_rng(seed)
    kind = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    background = _background(kind, rng)
    n_objects = 1 + int(rng.random() < 0.5)
    layers, used, centres = [], set(), []
    while len(layers) < n_objects:
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        glass = rng.random() < glass_probability
        shape = "glass disc" if glass else SHAPES[rng.integers(len(SHAPES))]
        size = rng.uniform(*radius)
        cy, cx = rng.uniform(size, SIZE - size, 2)
        # No two objects of one colour: the toy model ties words to regions by colour, so such a pair shares the
        # target's attention and the edit damages both (model card, "Domain changes").
        if (colour, shape) in used or distinct_colours and any(colour == c for c, _ in used):
            continue
        if any(np.hypot(cy - y, cx - x) < size + r - 4 for y, x, r in centres):
            continue  # keep objects mostly apart so each has a visible region
        used.add((colour, shape))
        centres.append((cy, cx, size))
        mask = _shape_mask(shape, cy, cx, size, rng.uniform(0, 2 * np.pi))
        shadow = None
        if not glass and rng.random() < shadow_probability:
            offset = 3 * SUPERSAMPLE  # down-right, without wrapping around the border
            shadow = np.zeros_like(mask)
            shadow[offset:, offset:] = mask[:-offset, :-offset]
            shadow *= 1 - mask
        layers.append(
            {
                "colour": colour,
                "shape": shape,
                "rgb": COLOURS[colour],
                "mask": mask,
                "shadow": shadow,
                "alpha": GLASS_ALPHA if glass else 1.0,
            }
        )
    objects = []
    for index, layer in enumerate(layers):
        mask = _downsample(layer["mask"])
        shadow = _downsample(layer["shadow"]) if layer["shadow"] is not None else np.zeros_like(mask)
        objects.append(
            ToyObject(
                colour=layer["colour"],
                shape=layer["shape"],
                phrase=f"{layer['colour']} {layer['shape']}",
                mask=mask,
                shadow_mask=np.maximum(mask, shadow),
                soft_mask=mask * layer["alpha"],
                removed=_compose(background, layers, skip=index),
            )
        )
    phrases = " and ".join(f"a {o.phrase}" for o in objects)
    caption = f"a photo of {phrases} on {BACKGROUNDS[kind]}"
    return ToyScene(seed, _compose(background, layers), caption, kind, tuple(objects), _compose(background, []))
