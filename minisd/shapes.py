"""A captioned picture world small enough to train Stable Diffusion on a laptop: coloured shapes.

Every picture is drawn on the fly from a seed (no files): a plain grey background and one or two filled,
anti-aliased shapes, with an English caption that says what is where::

    "a small blue square on the left"        "a red square above a blue circle"

Colours sit at canonical hues, shapes are told apart by how much of their box they fill (circle π/4, square 1,
triangle ½), and positions are where a person would point. ``analyse`` reads those three things back from any
picture, which is how the trained model is evaluated: it checks a generated picture against its caption.

A fixed set of caption *combinations* is held out (``HELD_OUT_SINGLE``, ``HELD_OUT_PAIRS``): training never
draws them, so the evaluation asks the model to compose words it has only seen apart.
"""

from __future__ import annotations

import colorsys
import math
import random
from dataclasses import dataclass

import numpy as np
import torch

COLOURS = {"red": 0, "orange": 30, "yellow": 55, "green": 120, "blue": 225, "purple": 285}  # hue, degrees
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.19, 0.23), "large": (0.36, 0.42)}  # the shape's width, as a fraction of the picture's
PAIR_SIZE = (0.26, 0.32)
PAIR_SHARE = 0.4  # the chance that a scene holds two shapes (see random_scene)
POSITIONS = {  # the shape's centre (x, y), fractions of the picture, as a person reads the words
    "on the left": (0.25, 0.5),
    "on the right": (0.75, 0.5),
    "at the top": (0.5, 0.25),
    "at the bottom": (0.5, 0.75),
    "in the center": (0.5, 0.5),
}
RELATIONS = {  # "A <relation> B": where A and B go
    "above": ("at the top", "at the bottom"),
    "below": ("at the bottom", "at the top"),
    "to the left of": ("on the left", "on the right"),
    "to the right of": ("on the right", "on the left"),
}
JITTER = 0.04
FILL = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5}  # the area of each shape over its bounding box

# Held out of training: (colour, shape, position) for one shape, (colour, shape, colour, shape) for two.
HELD_OUT_SINGLE = frozenset(
    [
        ("red", "triangle", "on the left"),
        ("orange", "circle", "at the bottom"),
        ("yellow", "square", "on the right"),
        ("green", "triangle", "at the top"),
        ("blue", "circle", "in the center"),
        ("purple", "square", "at the bottom"),
        ("red", "square", "at the top"),
        ("blue", "triangle", "on the right"),
        ("yellow", "circle", "on the left"),
        ("green", "square", "in the center"),
        ("orange", "triangle", "on the right"),
        ("purple", "circle", "on the left"),
    ]
)
HELD_OUT_PAIRS = frozenset(
    [
        ("red", "circle", "blue", "square"),
        ("green", "triangle", "purple", "circle"),
        ("yellow", "square", "red", "triangle"),
        ("blue", "circle", "orange", "triangle"),
        ("purple", "square", "green", "circle"),
        ("orange", "square", "yellow", "circle"),
        ("red", "triangle", "green", "square"),
        ("blue", "triangle", "yellow", "square"),
    ]
)


@dataclass
class Shape:
    colour: str
    shape: str
    x: float  # centre, fraction of the width
    y: float  # centre, fraction of the height
    size: float  # width, fraction of the picture's width


@dataclass
class Scene:
    """What a picture shows, and the words that say it."""

    caption: str
    shapes: list[Shape]
    background: float  # grey level in [0, 1]
    position: str | None = None  # the position word of a one-shape caption, if it has one
    relation: str | None = None  # the relation word of a two-shape caption, if it has one


# ---------------------------------------------------------------------------------------------------------
# Scenes and captions


def _shape_at(rng: random.Random, colour: str, shape: str, where: str | None, size_range) -> Shape:
    size = rng.uniform(*size_range)
    if where is None:  # anywhere, as long as it stays inside the picture
        x, y = (rng.uniform(size / 2 + 0.02, 1 - size / 2 - 0.02) for _ in range(2))
    else:
        x, y = (c + rng.uniform(-JITTER, JITTER) for c in POSITIONS[where])
    return Shape(colour, shape, x, y, size)


def with_article(words: str) -> str:
    """``words`` with the indefinite article English puts before them: "a red circle", "an orange square"."""
    return ("an " if words[0] in "aeiou" else "a ") + words


def single_scene(rng: random.Random, colour: str, shape: str, position: str | None, size: str | None) -> Scene:
    """One shape; ``position`` None puts it anywhere, ``size`` None picks either size without saying so."""
    size_range = SIZES[size or rng.choice(list(SIZES))]
    words = " ".join(w for w in (size, colour, shape) if w)
    named = with_article(words)
    phrase = rng.choice([named, named, f"one {words}", f"a picture of {named}"])
    caption = phrase + (f" {position}" if position else "")
    shapes = [_shape_at(rng, colour, shape, position, size_range)]
    return Scene(caption, shapes, _background(rng), position=position)


def pair_scene(rng: random.Random, first: tuple[str, str], second: tuple[str, str], relation: str | None) -> Scene:
    """Two shapes of different colours; without a relation word they stand side by side or one above the other."""
    a, b = (with_article(" ".join(colour_shape)) for colour_shape in (first, second))
    if relation is None:
        places = list(rng.choice([RELATIONS["to the left of"], RELATIONS["above"]]))
        rng.shuffle(places)
        caption = f"{a} and {b}"
    else:
        places = list(RELATIONS[relation])
        caption = f"{a} {relation} {b}"
    shapes = [_shape_at(rng, *cs, place, PAIR_SIZE) for cs, place in zip((first, second), places, strict=True)]
    return Scene(caption, shapes, _background(rng), relation=relation)


def _background(rng: random.Random) -> float:
    return rng.choice([rng.uniform(0.0, 0.15), rng.uniform(0.4, 0.6), rng.uniform(0.85, 1.0)])  # dark, mid, light


def random_scene(rng: random.Random, held_out: bool = False, pair_share: float = PAIR_SHARE) -> Scene:
    """A scene whose combination is in the training set (``held_out`` False) or in the held-out set; two shapes
    with probability about ``pair_share`` (a combination on the wrong side of the split is drawn again)."""
    while True:
        if rng.random() < 1 - pair_share:  # one shape
            colour, shape = rng.choice(list(COLOURS)), rng.choice(SHAPES)
            position = rng.choice([*POSITIONS, None])
            if position is not None and ((colour, shape, position) in HELD_OUT_SINGLE) != held_out:
                continue
            if position is None and held_out:
                continue
            return single_scene(rng, colour, shape, position, rng.choice([*SIZES, None]))
        c1, c2 = rng.sample(list(COLOURS), 2)
        s1, s2 = rng.choice(SHAPES), rng.choice(SHAPES)
        if ((c1, s1, c2, s2) in HELD_OUT_PAIRS) != held_out:
            continue
        return pair_scene(rng, (c1, s1), (c2, s2), rng.choice([*RELATIONS, None]))


def evaluation_scenes(seed: int = 0) -> list[Scene]:
    """The held-out captions, each once: every held-out single shape at both sizes, every held-out pair with
    each relation and without."""
    rng = random.Random(seed)
    scenes = [single_scene(rng, c, s, p, size) for c, s, p in sorted(HELD_OUT_SINGLE) for size in SIZES]
    for c1, s1, c2, s2 in sorted(HELD_OUT_PAIRS):
        scenes += [pair_scene(rng, (c1, s1), (c2, s2), r) for r in [*RELATIONS, None]]
    for scene in scenes:  # the canonical wording, so that the evaluation's captions are the same every time
        caption = scene.caption.removeprefix("a picture of ")
        scene.caption = with_article(caption.removeprefix("one ")) if caption.startswith("one ") else caption
    return scenes


# ---------------------------------------------------------------------------------------------------------
# Drawing


def rgb(colour: str) -> tuple[float, float, float]:
    """A saturated, bright colour at its canonical hue."""
    return colorsys.hsv_to_rgb(COLOURS[colour] / 360, 0.9, 0.95)


def _signed_distance(shape: Shape, xs: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
    """Distance to the shape's edge in picture widths, negative inside (exact for circle and square; for the
    triangle the largest of the distances to its three sides, exact near the edges)."""
    dx, dy, r = xs - shape.x, ys - shape.y, shape.size / 2
    if shape.shape == "circle":
        return (dx**2 + dy**2).sqrt() - r
    if shape.shape == "square":
        return torch.maximum(dx.abs(), dy.abs()) - r
    # An upright equilateral triangle of width 2r, centred on its bounding box (height h = √3·r).
    h = math.sqrt(3) * r
    base = dy - h / 2  # below the base: > 0
    sides = (dx.abs() * h + (dy + h / 2) * -r) / math.hypot(h, r)  # the slanted sides, as one by symmetry
    return torch.maximum(base, sides)


def draw(scene: Scene, size: int = 64) -> torch.Tensor:
    """The scene as a (3, size, size) picture in [0, 1]; edges anti-aliased by the pixel's coverage."""
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    picture = torch.full((3, size, size), scene.background)
    for shape in scene.shapes:
        coverage = (0.5 - _signed_distance(shape, xs, ys) * size).clamp(0, 1)  # one pixel wide ramp
        colour = torch.tensor(rgb(shape.colour)).view(3, 1, 1)
        picture = picture * (1 - coverage) + colour * coverage
    return picture


def batch(
    seed: int, n: int, size: int = 64, held_out: bool = False, pair_share: float = PAIR_SHARE
) -> tuple[torch.Tensor, list[str]]:
    """n pictures (n, 3, size, size) in [−1, 1] with their captions, drawn from ``seed``."""
    rng = random.Random(seed)
    scenes = [random_scene(rng, held_out, pair_share) for _ in range(n)]
    return torch.stack([draw(s, size) for s in scenes]) * 2 - 1, [s.caption for s in scenes]


# ---------------------------------------------------------------------------------------------------------
# Reading a picture back


@dataclass
class Found:
    colour: str
    shape: str
    x: float
    y: float
    pixels: int
    fill: float  # how much of its bounding box it fills: what ``shape`` was read from (FILL)


def analyse(picture: np.ndarray | torch.Tensor, min_fraction: float = 0.015) -> list[Found]:
    """The coloured shapes in a picture ((H, W, 3) uint8, or (3, H, W) in [0, 1]), largest first.

    Foreground: saturated, bright pixels. Colour: the nearest canonical hue. Shape: how much of its bounding
    box the colour's pixels fill. Position: their centroid.
    """
    if isinstance(picture, torch.Tensor):
        picture = (picture.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()
    image = picture.astype(np.float32) / 255
    H, W, _ = image.shape
    top, bottom = image.max(-1), image.min(-1)
    saturation = (top - bottom) / np.maximum(top, 1e-6)
    foreground = (saturation > 0.5) & (top > 0.35)
    hue = _hue_degrees(image)
    names = list(COLOURS)
    hues = np.array([COLOURS[c] for c in names], dtype=np.float32)
    distance = np.abs((hue[..., None] - hues + 180) % 360 - 180)  # (H, W, colours), circular
    nearest = distance.argmin(-1)
    found = []
    for i, colour in enumerate(names):
        mask = foreground & (nearest == i)
        if mask.sum() < min_fraction * H * W:
            continue
        ys, xs = np.nonzero(mask)
        box = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
        fill = mask.sum() / box
        shape = min(FILL, key=lambda s: abs(FILL[s] - fill))
        found.append(Found(colour, shape, (xs.mean() + 0.5) / W, (ys.mean() + 0.5) / H, int(mask.sum()), float(fill)))
    return sorted(found, key=lambda f: -f.pixels)


def _hue_degrees(image: np.ndarray) -> np.ndarray:
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    return (np.degrees(np.arctan2(math.sqrt(3) * (g - b), 2 * r - g - b)) + 360) % 360


def nearest_position(x: float, y: float) -> str:
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] - x) ** 2 + (POSITIONS[p][1] - y) ** 2)


def check(scene: Scene, found: list[Found]) -> dict[str, bool]:
    """Does the picture show the caption? Per scene kind: colour, shape, position (one shape); both (two)."""
    if len(scene.shapes) == 1:
        want, got = scene.shapes[0], found[0] if found else None
        result = {
            "colour": got is not None and got.colour == want.colour,
            "shape": got is not None and got.colour == want.colour and got.shape == want.shape,
        }
        if scene.position is not None:
            result["position"] = got is not None and nearest_position(got.x, got.y) == scene.position
        return result
    by_colour = {f.colour: f for f in found}
    hits = [by_colour.get(s.colour) for s in scene.shapes]
    both = all(h is not None and h.shape == s.shape for h, s in zip(hits, scene.shapes, strict=True))
    result = {"both": both}
    if scene.relation is not None:
        a, b = hits
        ok = a is not None and b is not None
        if ok and scene.relation in ("above", "below"):
            ok = (a.y < b.y) == (scene.relation == "above")
        elif ok:
            ok = (a.x < b.x) == (scene.relation == "to the left of")
        result["relation"] = ok
    return result
