"""The toy world: one flat shape on a plain background, and the sentences that describe it.

Scenes are drawn on the fly, analytically, at any resolution (4x4 supersampling per pixel gives
anti-aliased edges), so stage I's small training image and stage II's large one of the same scene agree exactly.
Captions come in several phrasings. A second, held-out set of phrasings (synonyms and sentence forms)
never appears in training: it measures how far the frozen text encoder carries the model to wording it
never saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 94, 220),
    "yellow": (240, 200, 20),
    "purple": (148, 70, 190),
    "orange": (255, 127, 14),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Where each position puts the shape's centre, as a fraction of the image side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"light": (235, 235, 228), "dark": (28, 28, 34)}
# The shape's extent (circle diameter, square side, triangle base) as a fraction of the image side.
SIZE = 0.36
_SIZE_JITTER = 0.06
_POSITION_JITTER = 0.03
_BACKGROUND_JITTER = 10
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    """What one image shows; `size` and the offsets are the small random variations within a description."""

    colour: str
    shape: str
    position: str
    background: str
    size: float = SIZE
    dx: float = 0.0
    dy: float = 0.0
    background_shift: int = 0

    @property
    def attributes(self) -> tuple[str, str, str]:
        """The attributes a caption names and the checker reads: colour, shape, position."""
        return (self.colour, self.shape, self.position)


def random_scene(rng: random.Random) -> Scene:
    """A scene with every attribute and variation drawn from `rng`."""
    return Scene(
        colour=rng.choice(list(COLOURS)),
        shape=rng.choice(SHAPES),
        position=rng.choice(list(POSITIONS)),
        background=rng.choice(list(BACKGROUNDS)),
        size=SIZE + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER),
        dx=rng.uniform(-_POSITION_JITTER, _POSITION_JITTER),
        dy=rng.uniform(-_POSITION_JITTER, _POSITION_JITTER),
        background_shift=rng.randint(-_BACKGROUND_JITTER, _BACKGROUND_JITTER),
    )


def all_scenes() -> list[Scene]:
    """Every attribute combination once, at the nominal size and position (180 scenes)."""
    return [
        Scene(colour, shape, position, background)
        for background in BACKGROUNDS
        for colour in COLOURS
        for shape in SHAPES
        for position in POSITIONS
    ]


def render(scenes: Sequence[Scene], resolution: int) -> torch.Tensor:
    """The scenes as a float batch (N, 3, resolution, resolution) in [0, 1]."""
    fine = resolution * _SUPERSAMPLE
    # Pixel centres in [0, 1].
    axis = (torch.arange(fine, dtype=torch.float32) + 0.5) / fine
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    masks = []
    for scene in scenes:
        cx, cy = POSITIONS[scene.position]
        cx, cy = cx + scene.dx, cy + scene.dy
        half = scene.size / 2
        if scene.shape == "circle":
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= half**2
        elif scene.shape == "square":
            mask = ((xs - cx).abs() <= half) & ((ys - cy).abs() <= half)
        else:
            # Upright isosceles triangle in the same box as the square: apex at the top centre.
            top, bottom = cy - half, cy + half
            rel = (ys - top) / (bottom - top)  # 0 at the apex, 1 at the base
            mask = (ys >= top) & (ys <= bottom) & ((xs - cx).abs() <= rel * half)
        masks.append(mask)
    coverage = torch.stack(masks).float().unsqueeze(1)
    coverage = torch.nn.functional.avg_pool2d(coverage, _SUPERSAMPLE)
    fg = torch.tensor([COLOURS[scene.colour] for scene in scenes], dtype=torch.float32)
    bg = torch.tensor(
        [[channel + scene.background_shift for channel in BACKGROUNDS[scene.background]] for scene in scenes],
        dtype=torch.float32,
    ).clamp(0, 255)
    image = coverage * fg[:, :, None, None] + (1 - coverage) * bg[:, :, None, None]
    return image / 255.0


# ---------------------------------------------------------------------------------------------------
# Captions

# Training wording. `{c}` colour, `{s}` shape, `{p}` a position phrase, `{b}` a background phrase.
_POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left", "on the left side"),
    "right": ("on the right", "at the right", "on the right side"),
    "top": ("at the top", "on the top", "at the top of the image"),
    "bottom": ("at the bottom", "on the bottom", "at the bottom of the image"),
    "center": ("in the center", "in the middle", "at the center"),
}
_BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "light": ("on a light background", "on a white background", "against a light background"),
    "dark": ("on a dark background", "on a black background", "against a dark background"),
}
TEMPLATES: tuple[str, ...] = (
    "a {c} {s} {p}",
    "{p} there is a {c} {s}",
    "a {c} {s} {p} {b}",
    "{p} a {c} {s}",
    "an image of a {c} {s} {p}",
    "a picture of a {c} {s} {p} {b}",
    "a {s} {p}, colored {c}",
    "the {c} {s} is {p}",
    "{c} {s} {p}",
    "a {c} {s} {b}, {p}",
)
# Partial descriptions: the unnamed attributes are free, which teaches the model to fill them itself.
PARTIAL_TEMPLATES: tuple[str, ...] = ("a {c} {s}", "a {s} {p}", "a {c} {s} {b}", "{c} {s}")

# Held out: never used in training, only to measure generalization.
HELDOUT_COLOURS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("lime green", "emerald"),
    "blue": ("navy", "azure"),
    "yellow": ("golden", "lemon"),
    "purple": ("violet", "lavender"),
    "orange": ("tangerine", "amber"),
}
HELDOUT_SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("disc", "round dot"),
    "square": ("box", "block"),
    "triangle": ("pyramid shape", "wedge"),
}
HELDOUT_POSITIONS: dict[str, tuple[str, ...]] = {
    "left": ("toward the left edge", "over on the left-hand side"),
    "right": ("toward the right edge", "over on the right-hand side"),
    "top": ("near the upper edge", "up high"),
    "bottom": ("near the lower edge", "down low"),
    "center": ("right in the middle", "in the very centre"),
}
HELDOUT_TEMPLATES: tuple[str, ...] = (
    "draw a {c} {s} {p}",
    "there's a {c} {s} located {p}",
    "{p} you can see a {c} {s}",
    "a single {c} {s} placed {p}",
    "show me one {c} {s} {p}, please",
)


# More training wording, for the text-conditioned diffusion stages: with six colour words, three shape
# words and one word per position, the model can read the frozen encoder's states by the words
# themselves; many names per attribute push it to read what they share instead. No word of a held-out
# phrase or sentence form appears here (tests/toy/test_world.py keeps it so).
COLOUR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("cherry", "ruby", "brick", "tomato", "cardinal", "vermilion"),
    "green": ("jade", "mint", "forest", "grass", "moss", "leaf"),
    "blue": ("cobalt", "sapphire", "cerulean", "sky", "ocean", "denim"),
    "yellow": ("canary", "mustard", "butter", "sunflower", "saffron", "banana"),
    "purple": ("plum", "lilac", "mauve", "grape", "amethyst", "orchid"),
    "orange": ("apricot", "pumpkin", "carrot", "peach", "copper", "rust"),
}
SHAPE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "circle": ("ball", "orb", "sphere", "coin", "bubble"),
    "square": ("cube", "tile", "crate", "quadrate", "checkerboard square"),
    "triangle": ("cone", "arrowhead", "spike", "delta", "tent"),
}
POSITION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "at the far left", "on the left half", "in the left part"),
    "right": ("to the right", "at the far right", "on the right half", "in the right part"),
    "top": ("in the top part", "on the top half", "along the top", "above the middle"),
    "bottom": ("in the bottom part", "on the bottom half", "along the bottom", "below the middle"),
    "center": ("centered", "in the middle of the image", "at the midpoint", "in the central area"),
}
SYNONYM_TEMPLATES: tuple[str, ...] = (
    "here is a {c} {s} {p}",
    "a photo of a {c} {s} {p}",
    "{p} sits a {c} {s}",
    "the image contains a {c} {s} {p}",
    "a {s} in {c} {p}",
    "look at the {c} {s} {p}",
    "this is a {c} {s} {p} {b}",
)


def caption(scene: Scene, rng: random.Random, *, synonyms: bool = False, full: bool = False) -> str:
    """One training caption of `scene`, full or (sometimes, unless `full`) partial, in a random phrasing.

    With `synonyms`, each of colour, shape and position is named by one of its training synonyms half
    of the time, and the sentence forms include `SYNONYM_TEMPLATES`.
    """
    partial = not full and rng.random() < 0.15
    if not synonyms:
        return _fill(rng.choice(PARTIAL_TEMPLATES if partial else TEMPLATES), scene, rng)
    template = rng.choice(PARTIAL_TEMPLATES if partial else TEMPLATES + SYNONYM_TEMPLATES)
    colour = rng.choice(COLOUR_SYNONYMS[scene.colour]) if rng.random() < 0.5 else scene.colour
    shape = rng.choice(SHAPE_SYNONYMS[scene.shape]) if rng.random() < 0.5 else scene.shape
    positions = POSITION_SYNONYMS if rng.random() < 0.5 else _POSITION_PHRASES
    return _fill(template, scene, rng, colour=colour, shape=shape, positions=positions)


def full_caption(scene: Scene, rng: random.Random) -> str:
    """A training caption that names colour, shape and position."""
    return _fill(rng.choice(TEMPLATES), scene, rng)


def canonical_caption(scene: Scene) -> str:
    """The one caption the captioner is taught to write."""
    return f"a {scene.colour} {scene.shape} {_POSITION_PHRASES[scene.position][0]} on a {scene.background} background"


def caption_attributes(scene: Scene, template: str) -> dict[str, str]:
    """The attributes that `template` names for `scene` (a partial template leaves some out)."""
    named = {}
    if "{c}" in template:
        named["colour"] = scene.colour
    if "{s}" in template:
        named["shape"] = scene.shape
    if "{p}" in template:
        named["position"] = scene.position
    if "{b}" in template:
        named["background"] = scene.background
    return named


def heldout_prompt(scene: Scene, rng: random.Random) -> str:
    """A prompt for `scene` in wording that training never uses: at least one held-out element."""
    template = rng.choice(HELDOUT_TEMPLATES + TEMPLATES)
    colour = rng.choice(HELDOUT_COLOURS[scene.colour])
    shape = rng.choice(HELDOUT_SHAPES[scene.shape])
    position = rng.choice(HELDOUT_POSITIONS[scene.position])
    # Each element held out with even odds, but never none of them.
    picks = [rng.random() < 0.5 for _ in range(4)]
    if template in TEMPLATES and not any(picks[:3]):
        picks[rng.randrange(3)] = True
    c = colour if picks[0] else scene.colour
    s = shape if picks[1] else scene.shape
    p = position if picks[2] else rng.choice(_POSITION_PHRASES[scene.position])
    text = template.format(c=c, s=s, p=p, b=rng.choice(_BACKGROUND_PHRASES[scene.background]))
    return _a_or_an(text)


def training_vocabulary(*, synonyms: bool = False) -> set[str]:
    """Every word a training caption can contain (with `synonyms`: a caption with synonyms)."""
    words: set[str] = set()
    fragments = [*TEMPLATES, *PARTIAL_TEMPLATES, *COLOURS, *SHAPES, "an"]
    fragments += [phrase for phrases in _POSITION_PHRASES.values() for phrase in phrases]
    fragments += [phrase for phrases in _BACKGROUND_PHRASES.values() for phrase in phrases]
    if synonyms:
        fragments += [*SYNONYM_TEMPLATES]
        for table in (COLOUR_SYNONYMS, SHAPE_SYNONYMS, POSITION_SYNONYMS):
            fragments += [phrase for phrases in table.values() for phrase in phrases]
    for fragment in fragments:
        for word in fragment.replace(",", " ").split():
            if not word.startswith("{"):
                words.add(word)
    return words


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption in training wording names (what the captioner is scored on)."""
    words = text.lower().replace(",", " ").split()
    found: dict[str, str] = {}
    for colour in COLOURS:
        if colour in words:
            found["colour"] = colour
    for shape in SHAPES:
        if shape in words:
            found["shape"] = shape
    for position in POSITIONS:
        if position in words or (position == "center" and "middle" in words):
            found["position"] = position
    for background in BACKGROUNDS:
        if background in words:
            found["background"] = background
    return found


def _fill(
    template: str,
    scene: Scene,
    rng: random.Random,
    *,
    colour: str | None = None,
    shape: str | None = None,
    positions: dict[str, tuple[str, ...]] = _POSITION_PHRASES,
) -> str:
    """`template` for `scene`: its colour and shape words unless others are given, a position phrase from
    `positions` and a background phrase drawn from `rng`."""
    text = template.format(
        c=colour or scene.colour,
        s=shape or scene.shape,
        p=rng.choice(positions[scene.position]),
        b=rng.choice(_BACKGROUND_PHRASES[scene.background]),
    )
    return _a_or_an(text)


def _a_or_an(text: str) -> str:
    words = text.split(" ")
    for index, word in enumerate(words[:-1]):
        if word == "a" and words[index + 1][:1] in "aeiou":
            words[index] = "an"
    return " ".join(words)
