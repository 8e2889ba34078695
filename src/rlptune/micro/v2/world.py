"""World v2: scenes that survive CoOp's random resized crop, for the 12+12-block ViT micro CLIP.

v1 drew one small object per 64x64 image, so the official crop (scale 0.08-1) often cut the class away. Here a
scene repeats its object (one large instance, or two to six scattered ones, some partly out of frame) over a
background that fills the frame, so a crop of a few percent of the image usually still shows the shape, colour,
pattern, background and rendering style. Rendering reuses v1's shape masks, patterns, backgrounds and styles
(:mod:`rlptune.micro.world`), so the two worlds share their visual vocabulary and their caption words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

import numpy as np

from .. import world as W1

WORLD_VERSION = "w2"
IMAGE_SIZE = W1.IMAGE_SIZE

SHAPES = list(W1.SHAPES)
COLOR_NAMES = list(W1.COLOR_NAMES)
PATTERNS = list(W1.PATTERNS)
BACKGROUNDS = list(W1.BACKGROUNDS)
STYLES = list(W1.STYLES)
COUNTS = [1, 2, 3, 4, 5, 6]
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
# Object side (px) drawn per count: one instance is large, many are medium; a side is drawn from the range.
SIDE_RANGE = {1: (36, 48), 2: (26, 34), 3: (24, 30), 4: (20, 26), 5: (18, 24), 6: (16, 22)}

#: The attributes a scene has, each with its values (the supervised targets of the image tower).
ATTRIBUTE_VALUES: dict[str, list] = {
    "shape": SHAPES,
    "color": COLOR_NAMES,
    "pattern": PATTERNS,
    "background": BACKGROUNDS,
    "style": STYLES,
    "count": COUNTS,
}


@dataclass(frozen=True)
class Scene:
    shape: str = "circle"
    color: str = "red"
    pattern: str = "plain"
    background: str = "plain"
    style: str = "photo"
    count: int = 1

    def attrs(self) -> dict:
        return asdict(self)


def _choice(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


def sample_scene(rng: np.random.Generator, **fixed) -> Scene:
    """A random scene; keyword arguments pin attributes. Values are drawn in a fixed order (reproducible)."""
    drawn = {name: _choice(rng, values) for name, values in ATTRIBUTE_VALUES.items()}
    drawn.update(fixed)
    return Scene(**drawn)


def _centres(count: int, side: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """Object centres: spread out (rejection sampling on overlap), a quarter of a side may leave the frame."""
    lo, hi = side // 4, IMAGE_SIZE - side // 4
    if count == 1:
        lo, hi = side // 2 - side // 6, IMAGE_SIZE - side // 2 + side // 6
    centres: list[tuple[int, int]] = []
    for _ in range(count):
        best, best_gap = None, -1
        for _try in range(12):
            c = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
            gap = min((max(abs(c[0] - o[0]), abs(c[1] - o[1])) for o in centres), default=IMAGE_SIZE)
            if gap > best_gap:
                best, best_gap = c, gap
            if gap >= side:
                break
        centres.append(best)
    return centres


def render_content(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene in the plain photo rendering, as an int64 HxWx3 array."""
    img = W1._background(scene.background, rng)
    colour = np.clip(np.array(W1.COLORS[scene.color], dtype=np.int64) + rng.integers(-15, 16, size=3), 0, 255)
    shade = W1._shade(colour)
    lo, hi = SIDE_RANGE[scene.count]
    side = int(rng.integers(lo, hi + 1))
    for cx, cy in _centres(scene.count, side, rng):
        mask = W1._shape_mask(scene.shape, cx, cy, side)
        pat = W1._pattern_mask(scene.pattern, cx - side // 2, cy - side // 2, rng)
        img[mask] = colour
        img[mask & pat] = shade
    return img


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A 64x64x3 uint8 image of ``scene``; deterministic given the generator state."""
    return W1.apply_style(render_content(scene, rng), scene.style, rng)


def render_seeded(scene: Scene, seed: int | Iterable[int]) -> np.ndarray:
    return render(scene, np.random.default_rng(seed))


# --------------------------------------------------------------------------- captions

#: How often a caption names each attribute. Patterns and backgrounds are named rarely, so the text side knows
#: them less well than the image side (the zero-shot prompt under-describes them: headroom for prompt learning).
MENTION_PROBS = {"shape": 0.85, "color": 0.6, "pattern": 0.15, "background": 0.25, "style": 0.7}


def noun_phrase(scene: Scene, mention: set[str], rng: np.random.Generator) -> str:
    words = []
    if "color" in mention:
        words.append(scene.color)
    if "pattern" in mention:
        words.append(scene.pattern)
    if "shape" in mention:
        words.append(scene.shape if scene.count == 1 else W1._plural(scene.shape))
    else:
        words.append("shape" if scene.count == 1 else "shapes")
    if scene.count == 1:
        art = "one" if rng.random() < 0.15 else ("an" if words[0][0] in "aeiou" else "a")
    else:
        art = COUNT_WORDS[scene.count]
    return " ".join([art] + words)


def caption(scene: Scene, rng: np.random.Generator, force: Iterable[str] = ()) -> tuple[str, dict]:
    """A natural caption of ``scene`` and the attributes it claims (attribute -> value); count is always claimed."""
    mention = {a for a, p in MENTION_PROBS.items() if rng.random() < p} | set(force)
    claims: dict = {"count": scene.count}
    for a in mention:
        claims[a] = getattr(scene, a)
    body = noun_phrase(scene, mention, rng)
    if "background" in mention:
        body += " " + _choice(rng, W1.BACKGROUND_PHRASES[scene.background])
    if "style" in mention:
        text = _choice(rng, W1.STYLE_TEMPLATES[scene.style]).format(body)
    else:
        text = _choice(rng, W1.NEUTRAL_TEMPLATES).format(body)
    return text + ".", claims


def consistent(claims: dict, scene: Scene) -> bool:
    """Is a caption with these claims true of ``scene``?"""
    return all(getattr(scene, a) == v for a, v in claims.items())
