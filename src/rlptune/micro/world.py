"""A deterministic procedural image-caption world: the stand-in for web image-text data.

A :class:`Scene` is a set of attributes (shape, colour, pattern, size, count, position, background, style).
:func:`render` turns it into a 64x64 RGB ``uint8`` array with PIL and numpy only; the same scene and the same
``numpy.random.Generator`` state give the same bytes on any machine (integer arithmetic throughout, PIL's own
integer filters, no platform ``sin``/``exp``). :func:`caption` describes a scene with varied natural templates and
returns the attributes it *claims*, so that a contrastive loss can tell which captions in a batch are true of which
images (:func:`consistent`).

Styles (renderings) are named in captions ("a sketch of two red circles", "a pixelated image of a star on a beach");
the downstream micro datasets are each drawn in one style that the generic zero-shot template does not mention.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

WORLD_VERSION = "w1"
IMAGE_SIZE = 64

SHAPES = ["circle", "square", "triangle", "star", "heart", "cross", "diamond", "hexagon", "crescent", "arrow"]
SHAPE_PLURALS = {"cross": "crosses"}
COLORS = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (245, 225, 30),
    "green": (40, 170, 50),
    "cyan": (40, 215, 225),
    "blue": (35, 60, 215),
    "purple": (135, 40, 185),
    "pink": (250, 130, 190),
    "brown": (120, 70, 30),
    "white": (250, 250, 250),
}
COLOR_NAMES = list(COLORS)
PATTERNS = ["plain", "striped", "dotted", "checkered", "grid", "diagonal", "ringed", "wavy", "zigzag", "speckled"]
SIZES = {"small": 14, "medium": 22, "large": 32}
SIZE_NAMES = list(SIZES)
COUNTS = [1, 2, 3, 4, 5]
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
POSITIONS = {
    "center": (32, 32),
    "left": (16, 32),
    "right": (48, 32),
    "top": (32, 16),
    "bottom": (32, 48),
    "top left": (16, 16),
    "top right": (48, 16),
    "bottom left": (16, 48),
    "bottom right": (48, 48),
}
POSITION_NAMES = list(POSITIONS)
POSITION_PHRASES = {
    "center": ["in the center", "in the middle"],
    "left": ["on the left", "on the left side"],
    "right": ["on the right", "on the right side"],
    "top": ["at the top", "near the top"],
    "bottom": ["at the bottom", "near the bottom"],
    "top left": ["in the top left corner", "at the top left"],
    "top right": ["in the top right corner", "at the top right"],
    "bottom left": ["in the bottom left corner", "at the bottom left"],
    "bottom right": ["in the bottom right corner", "at the bottom right"],
}
BACKGROUNDS = [
    "plain",
    "beach",
    "forest",
    "desert",
    "snow",
    "ocean",
    "meadow",
    "city",
    "night sky",
    "sunset",
    "brick wall",
]
BACKGROUND_PHRASES = {
    "plain": ["on a plain background", "on a blank background"],
    "beach": ["on a beach", "at the beach"],
    "forest": ["in a forest", "in the woods"],
    "desert": ["in a desert", "in the desert"],
    "snow": ["in the snow", "on snow"],
    "ocean": ["over the ocean", "on the sea"],
    "meadow": ["in a meadow", "on the grass"],
    "city": ["in a city", "in front of buildings"],
    "night sky": ["against a night sky", "under the stars"],
    "sunset": ["at sunset", "in front of a sunset"],
    "brick wall": ["in front of a brick wall", "against a brick wall"],
}
STYLES = ["photo", "sketch", "pixelated", "foggy", "noisy", "inverted"]
STYLE_TEMPLATES = {
    "photo": ["a photo of {}", "a clean photo of {}", "a photo showing {}"],
    "sketch": ["a sketch of {}", "a drawing of {}", "a pencil sketch of {}"],
    "pixelated": ["a pixelated image of {}", "a pixelated photo of {}", "a low resolution image of {}"],
    "foggy": ["a foggy photo of {}", "a hazy photo of {}", "a photo of {} in fog"],
    "noisy": ["a noisy photo of {}", "a grainy photo of {}", "a photo of {} with noise"],
    "inverted": ["an inverted photo of {}", "a negative photo of {}", "a color inverted image of {}"],
}
# Style-neutral wrappers: true of any rendering.
NEUTRAL_TEMPLATES = ["{}", "an image of {}", "there is {}", "this shows {}"]


@dataclass(frozen=True)
class Scene:
    shape: str = "circle"
    color: str = "red"
    pattern: str = "plain"
    size: str = "medium"
    count: int = 1
    position: str = "center"  # meaningful only when count == 1
    background: str = "plain"
    style: str = "photo"

    def attrs(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- sampling


def _choice(rng: np.random.Generator, values):
    return values[int(rng.integers(len(values)))]


def max_size_for_count(count: int) -> list[str]:
    if count == 1:
        return SIZE_NAMES
    if count <= 3:
        return ["small", "medium"]
    return ["small"]


def sample_scene(rng: np.random.Generator, **fixed) -> Scene:
    """A random scene; keyword arguments pin attributes (a sized count is kept valid)."""
    count = fixed.get("count", _choice(rng, COUNTS))
    size = fixed.get("size", _choice(rng, max_size_for_count(count)))
    if size not in max_size_for_count(count):  # a pinned size wins over a random count
        count = _choice(rng, [c for c in COUNTS if size in max_size_for_count(c)]) if "count" not in fixed else count
    scene = Scene(
        shape=fixed.get("shape", _choice(rng, SHAPES)),
        color=fixed.get("color", _choice(rng, COLOR_NAMES)),
        pattern=fixed.get("pattern", _choice(rng, PATTERNS)),
        size=size,
        count=count,
        position=fixed.get("position", _choice(rng, POSITION_NAMES)),
        background=fixed.get("background", _choice(rng, BACKGROUNDS)),
        style=fixed.get("style", _choice(rng, STYLES)),
    )
    return scene


def vary(scene: Scene, attribute: str, rng: np.random.Generator) -> Scene:
    """The scene with one attribute resampled to a different value (kept valid)."""
    domain = {
        "shape": SHAPES,
        "color": COLOR_NAMES,
        "pattern": PATTERNS,
        "size": max_size_for_count(scene.count),
        "count": [c for c in COUNTS if scene.size in max_size_for_count(c)],
        "position": POSITION_NAMES,
        "background": BACKGROUNDS,
        "style": STYLES,
    }[attribute]
    current = getattr(scene, attribute)
    options = [v for v in domain if v != current] or list(domain)
    new = replace(scene, **{attribute: _choice(rng, options)})
    if attribute == "position" and new.count != 1:
        new = replace(new, count=1)
    return new


# --------------------------------------------------------------------------- rendering

# Unit-square polygons (x, y in [0, 1], y down) for shapes drawn as polygons.
# Rotate the 10 star points so that outer points sit at even indices starting from the top.
_STAR_PTS = []
for _i in range(10):
    _ang_c, _ang_s = [
        (0.0, -1.0),
        (0.5878, -0.809),
        (0.9511, -0.309),
        (0.9511, 0.309),
        (0.5878, 0.809),
        (0.0, 1.0),
        (-0.5878, 0.809),
        (-0.9511, 0.309),
        (-0.9511, -0.309),
        (-0.5878, -0.809),
    ][_i]
    _r = 0.5 if _i % 2 == 0 else 0.21
    _STAR_PTS.append((0.5 + _r * _ang_c, 0.53 + _r * _ang_s))
POLYGONS = {
    "square": [(0.08, 0.08), (0.92, 0.08), (0.92, 0.92), (0.08, 0.92)],
    "triangle": [(0.5, 0.02), (0.98, 0.95), (0.02, 0.95)],
    "star": _STAR_PTS,
    "cross": [
        (0.35, 0.0),
        (0.65, 0.0),
        (0.65, 0.35),
        (1.0, 0.35),
        (1.0, 0.65),
        (0.65, 0.65),
        (0.65, 1.0),
        (0.35, 1.0),
        (0.35, 0.65),
        (0.0, 0.65),
        (0.0, 0.35),
        (0.35, 0.35),
    ],
    "diamond": [(0.5, 0.0), (0.85, 0.5), (0.5, 1.0), (0.15, 0.5)],
    "hexagon": [(0.25, 0.07), (0.75, 0.07), (1.0, 0.5), (0.75, 0.93), (0.25, 0.93), (0.0, 0.5)],
    "arrow": [(0.0, 0.35), (0.55, 0.35), (0.55, 0.08), (1.0, 0.5), (0.55, 0.92), (0.55, 0.65), (0.0, 0.65)],
}


def _shape_mask(shape: str, cx: int, cy: int, side: int) -> np.ndarray:
    """Boolean 64x64 mask of one shape whose bounding box (side px) is centred at (cx, cy)."""
    img = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    d = ImageDraw.Draw(img)
    x0, y0 = cx - side // 2, cy - side // 2
    x1, y1 = x0 + side - 1, y0 + side - 1

    def pt(u, v):
        return (x0 + round(u * (side - 1)), y0 + round(v * (side - 1)))

    if shape == "circle":
        d.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "heart":
        r = side // 4
        d.ellipse([x0, y0 + side // 10, x0 + 2 * r + 1, y0 + side // 10 + 2 * r + 1], fill=255)
        d.ellipse([x1 - 2 * r - 1, y0 + side // 10, x1, y0 + side // 10 + 2 * r + 1], fill=255)
        d.polygon([pt(0.02, 0.42), pt(0.98, 0.42), pt(0.5, 0.98)], fill=255)
    elif shape == "crescent":
        d.ellipse([x0, y0, x1, y1], fill=255)
        off = max(3, side * 3 // 10)
        d.ellipse([x0 + off, y0 - side // 10, x1 + off, y1 - side // 10], fill=0)
    else:
        d.polygon([pt(u, v) for u, v in POLYGONS[shape]], fill=255)
    return np.asarray(img) > 127


_YY, _XX = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE]
# Integer wave table (period 12 px, amplitude 2): stands in for round(2 * sin(2 pi x / 12)).
_WAVE = np.array([0, 1, 2, 2, 2, 1, 0, -1, -2, -2, -2, -1])


def _pattern_mask(pattern: str, x0: int, y0: int, rng: np.random.Generator) -> np.ndarray:
    """Where the secondary (shade) colour goes, in coordinates local to the object's box."""
    y = _YY - y0
    x = _XX - x0
    if pattern == "plain":
        return np.zeros((IMAGE_SIZE, IMAGE_SIZE), bool)
    if pattern == "striped":
        return (y // 3) % 2 == 1
    if pattern == "dotted":
        return ((x % 6) - 2) ** 2 + ((y % 6) - 2) ** 2 <= 2
    if pattern == "checkered":
        return ((x // 4) + (y // 4)) % 2 == 1
    if pattern == "grid":
        return (x % 5 == 0) | (y % 5 == 0)
    if pattern == "diagonal":
        return ((x + y) // 3) % 2 == 1
    if pattern == "ringed":
        return ((np.sqrt(((x - 16) ** 2 + (y - 16) ** 2).astype(np.float64)).astype(np.int64)) // 3) % 2 == 1
    if pattern == "wavy":
        return ((y + _WAVE[x % 12]) // 3) % 2 == 1
    if pattern == "zigzag":
        return ((y + np.abs((x % 8) - 4)) // 3) % 2 == 1
    if pattern == "speckled":
        return rng.integers(0, 100, size=(IMAGE_SIZE, IMAGE_SIZE)) < 30
    raise ValueError(f"unknown pattern {pattern!r}")


def _shade(rgb) -> np.ndarray:
    c = np.array(rgb, dtype=np.int64)
    if c.sum() > 300:  # light colours get a dark shade
        return c * 2 // 5
    return c + (255 - c) * 3 // 5


def _jit(rng, base, amount):
    return np.clip(np.array(base, dtype=np.int64) + rng.integers(-amount, amount + 1, size=3), 0, 255)


def _background(name: str, rng: np.random.Generator) -> np.ndarray:
    img = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.int64)
    h = IMAGE_SIZE
    if name == "plain":
        img[:] = _jit(rng, (215, 215, 210), 12)
    elif name == "beach":
        horizon = int(rng.integers(22, 34))
        img[:horizon] = _jit(rng, (130, 190, 240), 10)
        img[horizon:] = _jit(rng, (225, 200, 140), 10)
        img[horizon : horizon + 3] = (240, 245, 250)
    elif name == "forest":
        img[:] = _jit(rng, (30, 80, 35), 8)
        for _ in range(6):
            tx = int(rng.integers(0, h))
            img[:, tx : tx + 3] = (70, 45, 25)
            top = int(rng.integers(0, 30))
            for k in range(14):
                img[top + k, max(0, tx - k // 2) : tx + 3 + k // 2] = (20, 110, 40)
    elif name == "desert":
        img[:] = _jit(rng, (235, 225, 190), 8)
        base = int(rng.integers(24, 34))
        dune = base + _WAVE[(_XX[0] // 2) % 12] * 2
        img[_YY >= dune[None, :]] = 0
        img += (_YY >= dune[None, :])[..., None] * _jit(rng, (215, 150, 70), 10)[None, None, :]
    elif name == "snow":
        img[:] = _jit(rng, (238, 242, 250), 6)
        flakes = rng.integers(0, 100, size=(h, h)) < 6
        img[flakes] = (170, 185, 215)
    elif name == "ocean":
        img[:] = _jit(rng, (20, 70, 150), 10)
        phase = int(rng.integers(0, 12))
        img[((_YY + _WAVE[(_XX + phase) % 12]) % 8) == 0] = (90, 150, 210)
    elif name == "meadow":
        horizon = int(rng.integers(10, 20))
        img[:horizon] = _jit(rng, (150, 200, 245), 10)
        img[horizon:] = _jit(rng, (80, 170, 60), 10)
        flowers = (rng.integers(0, 100, size=(h, h)) < 4) & (_YY > horizon)
        img[flowers] = (240, 230, 60)
    elif name == "city":
        img[:] = _jit(rng, (175, 185, 200), 8)
        x = 0
        while x < h:
            w = int(rng.integers(8, 16))
            top = int(rng.integers(8, 36))
            img[top:, x : x + w - 1] = _jit(rng, (90, 90, 100), 15)
            win = ((_YY % 5) == 2) & ((_XX % 4) == 1) & (_YY > top + 2) & (_XX >= x) & (_XX < x + w - 2)
            img[win] = (230, 220, 120)
            x += w
    elif name == "night sky":
        img[:] = _jit(rng, (12, 15, 45), 6)
        stars = rng.integers(0, 1000, size=(h, h)) < 25
        img[stars] = (240, 240, 255)
    elif name == "sunset":
        top = _jit(rng, (250, 150, 50), 10)
        bottom = _jit(rng, (110, 40, 120), 10)
        t = _YY[..., None]
        img[:] = (top[None, None, :] * (h - 1 - t) + bottom[None, None, :] * t) // (h - 1)
    elif name == "brick wall":
        img[:] = (200, 195, 185)
        brick = _jit(rng, (165, 70, 45), 10)
        row = _YY // 6
        mortar = ((_YY % 6) == 5) | (((_XX + (row % 2) * 6) % 12) == 11)
        img[~mortar] = brick
    else:
        raise ValueError(f"unknown background {name!r}")
    return img


def _object_centres(scene: Scene, rng: np.random.Generator) -> list[tuple[int, int]]:
    side = SIZES[scene.size]
    if scene.count == 1:
        cx, cy = POSITIONS[scene.position]
        lo, hi = side // 2 + 1, IMAGE_SIZE - side // 2 - 1
        cx = int(np.clip(cx + rng.integers(-3, 4), lo, hi))
        cy = int(np.clip(cy + rng.integers(-3, 4), lo, hi))
        return [(cx, cy)]
    lo, hi = side // 2 + 1, IMAGE_SIZE - side // 2 - 1
    for _attempt in range(200):
        centres: list[tuple[int, int]] = []
        for _ in range(400):
            c = (int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1)))
            if all(max(abs(c[0] - o[0]), abs(c[1] - o[1])) >= side + 2 for o in centres):
                centres.append(c)
                if len(centres) == scene.count:
                    return centres
    raise RuntimeError(f"cannot place {scene.count} {scene.size} objects")


def render_content(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """The scene in the plain photo rendering, as an int64 HxWx3 array."""
    img = _background(scene.background, rng)
    colour = np.array(COLORS[scene.color], dtype=np.int64)
    # small per-image colour jitter keeps colour names about hue, not one exact RGB
    colour = np.clip(colour + rng.integers(-15, 16, size=3), 0, 255)
    shade = _shade(colour)
    side = SIZES[scene.size]
    for cx, cy in _object_centres(scene, rng):
        mask = _shape_mask(scene.shape, cx, cy, side)
        pat = _pattern_mask(scene.pattern, cx - side // 2, cy - side // 2, rng)
        img[mask] = colour
        img[mask & pat] = shade
    return img


def _to_pil(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def apply_style(img: np.ndarray, style: str, rng: np.random.Generator) -> np.ndarray:
    """Re-render a photo-style int64 image in ``style``; returns uint8 HxWx3."""
    img = np.clip(img, 0, 255).astype(np.int64)
    if style == "photo":
        out = img
    elif style == "sketch":
        # coloured pencil outlines on paper: keep pixels on an edge of the photo, darkened, white elsewhere
        grey = img.sum(axis=2)
        edge = np.zeros(grey.shape, bool)
        edge[:, 1:] |= np.abs(grey[:, 1:] - grey[:, :-1]) > 90
        edge[1:, :] |= np.abs(grey[1:, :] - grey[:-1, :]) > 90
        paper = _jit(rng, (245, 242, 232), 5)
        out = np.empty_like(img)
        out[:] = paper
        out[edge] = img[edge] * 3 // 4
    elif style == "pixelated":
        block = 4
        small = img.reshape(IMAGE_SIZE // block, block, IMAGE_SIZE // block, block, 3).mean(axis=(1, 3))
        small = np.floor(small).astype(np.int64) // 32 * 32 + 16  # coarse colour quantisation too
        out = np.repeat(np.repeat(small, block, axis=0), block, axis=1)
    elif style == "foggy":
        fog = np.array((200, 205, 210), dtype=np.int64)
        mixed = (img * 45 + fog * 55) // 100
        out = np.asarray(_to_pil(mixed).filter(ImageFilter.BoxBlur(1))).astype(np.int64)
    elif style == "noisy":
        noise = rng.integers(-60, 61, size=img.shape) + rng.integers(-60, 61, size=img.shape)
        out = img + noise // 2
    elif style == "inverted":
        out = 255 - img
    else:
        raise ValueError(f"unknown style {style!r}")
    return np.clip(out, 0, 255).astype(np.uint8)


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A 64x64x3 uint8 image of ``scene``; deterministic given the generator state."""
    return apply_style(render_content(scene, rng), scene.style, rng)


def render_seeded(scene: Scene, seed: int | Iterable[int]) -> np.ndarray:
    return render(scene, np.random.default_rng(seed))


# --------------------------------------------------------------------------- captions

MENTION_PROBS = {  # how often a caption names each attribute (count is always implied by the noun phrase)
    "shape": 0.9,
    "color": 0.6,
    "pattern": 0.55,
    "size": 0.35,
    "position": 0.45,
    "background": 0.45,
    "style": 0.7,
}


def _plural(shape: str) -> str:
    return SHAPE_PLURALS.get(shape, shape + "s")


def noun_phrase(scene: Scene, mention: set[str], rng: np.random.Generator | None = None) -> str:
    words = []
    if "size" in mention:
        words.append(scene.size)
    if "color" in mention:
        words.append(scene.color)
    if "pattern" in mention:
        words.append(scene.pattern)
    if "shape" in mention:
        words.append(scene.shape if scene.count == 1 else _plural(scene.shape))
    else:
        words.append("shape" if scene.count == 1 else "shapes")
    if scene.count == 1:
        use_one = rng is not None and rng.random() < 0.2
        art = "one" if use_one else ("an" if words[0][0] in "aeiou" else "a")
    else:
        art = COUNT_WORDS[scene.count]
    return " ".join([art] + words)


def caption(
    scene: Scene, rng: np.random.Generator, mention: set[str] | None = None, force: Iterable[str] = ()
) -> tuple[str, dict]:
    """A natural caption of ``scene`` and the attributes it claims (attribute -> value)."""
    if mention is None:
        mention = {a for a, p in MENTION_PROBS.items() if rng.random() < p}
    mention = set(mention) | set(force)
    if scene.count != 1:
        mention.discard("position")
    claims = {"count": scene.count}
    for a in mention:
        claims[a] = getattr(scene, a)
    text = noun_phrase(scene, mention, rng)
    tail = []
    if "position" in mention:
        tail.append(_choice(rng, POSITION_PHRASES[scene.position]))
    if "background" in mention:
        tail.append(_choice(rng, BACKGROUND_PHRASES[scene.background]))
    if len(tail) == 2 and rng.random() < 0.5:
        tail.reverse()
    body = " ".join([text] + tail)
    if "style" in mention:
        out = _choice(rng, STYLE_TEMPLATES[scene.style]).format(body)
    else:
        out = _choice(rng, NEUTRAL_TEMPLATES).format(body)
    return out + ".", claims


def consistent(claims: dict, scene: Scene) -> bool:
    """Is a caption with these claims true of ``scene``?"""
    return all(getattr(scene, a) == v for a, v in claims.items())
