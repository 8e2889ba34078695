"""The micro benchmark: classification datasets drawn from the procedural world.

Eight datasets mirror the spread of the 11 CoOp datasets (coarse objects, fine-grained combinations, textures,
scenes, counts, positions, colours). Each is drawn in its own rendering style that the generic zero-shot template
``"a photo of a {}."`` does not mention, so a learned prompt context has something to find (as EuroSAT's
"centered satellite photo" does for real CLIP). ``micro-shapes`` also has test sets in other renderings for
domain generalisation (:data:`MICRO_SHIFTS`).

:func:`load_micro_dataset` materialises a dataset as PNG files in a cache folder once (atomically) and returns
:class:`~rlptune.data.items.DatasetSplits` over it. Same name, same pixels, on any machine.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.items import DatasetSplits, Item
from ..errors import RlptuneError
from ..io import default_cache_dir, os_error_line
from .world import (
    BACKGROUNDS, COLOR_NAMES, PATTERNS, SHAPES, WORLD_VERSION, Scene, max_size_for_count, render, sample_scene,
    _plural,
)

GENERIC_TEMPLATE = "a photo of a {}."
SPLIT_SIZES = {"train": 32, "val": 8, "test": 40}  # images per class
SHIFT_TEST_PER_CLASS = 30
SUITE_SEED = 20240611


@dataclass(frozen=True)
class MicroSpec:
    """One dataset: classes are (name, pinned attributes); everything else is drawn at random."""

    name: str
    style: str
    classes: tuple[tuple[str, tuple[tuple[str, object], ...]], ...]
    fixed: tuple[tuple[str, object], ...] = ()  # attributes pinned for every class
    choices: tuple[tuple[str, tuple], ...] = ()  # attributes drawn from a restricted set
    analogue: str = ""
    shift_of: str | None = None
    splits: dict = field(default_factory=lambda: dict(SPLIT_SIZES), compare=False, hash=False)

    @property
    def classnames(self) -> list[str]:
        return [c for c, _ in self.classes]


def _cls(name: str, **attrs) -> tuple[str, tuple[tuple[str, object], ...]]:
    return (name, tuple(sorted(attrs.items())))


_POS5 = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
         "center": "in the center"}

_SPECS: list[MicroSpec] = [
    MicroSpec("micro-shapes", "sketch", tuple(_cls(s, shape=s) for s in SHAPES),
              fixed=(("count", 1),),
              choices=(("size", ("medium", "large")), ("background", ("plain", "snow", "sunset", "desert"))),
              analogue="ImageNet / Caltech101"),
    MicroSpec("micro-textures", "noisy", tuple(_cls(p, pattern=p) for p in PATTERNS),
              fixed=(("count", 1), ("size", "large")), analogue="DTD"),
    MicroSpec("micro-scenes", "pixelated", tuple(_cls(b, background=b) for b in BACKGROUNDS if b != "plain"),
              choices=(("size", ("small",)),), analogue="SUN397"),
    MicroSpec("micro-counts", "foggy",
              tuple(_cls(f"{w} {s if n == 1 else _plural(s)}", count=n, shape=s)
                    for s in ("circle", "triangle") for n, w in
                    zip(range(1, 6), ("one", "two", "three", "four", "five"))),
              analogue="counting (CLEVR-like)"),
    MicroSpec("micro-positions", "inverted",
              tuple(_cls(f"{s} {ph}", shape=s, position=p) for s in ("circle", "star") for p, ph in _POS5.items()),
              fixed=(("count", 1),), choices=(("size", ("small", "medium")),), analogue="EuroSAT (layout)"),
    MicroSpec("micro-colors", "pixelated", tuple(_cls(c, color=c) for c in COLOR_NAMES),
              choices=(("pattern", ("plain", "striped", "checkered")),), analogue="Oxford Flowers"),
    MicroSpec("micro-objects", "noisy",
              tuple(_cls(f"{c} {s}", color=c, shape=s) for c in ("red", "blue", "yellow")
                    for s in ("circle", "square", "triangle", "star")),
              fixed=(("count", 1),), choices=(("size", ("medium", "large")),),
              analogue="Stanford Cars / FGVC Aircraft (fine-grained)"),
    MicroSpec("micro-patterned", "sketch",
              tuple(_cls(f"{p} {s}", pattern=p, shape=s) for p in ("striped", "dotted", "checkered")
                    for s in ("square", "heart", "hexagon", "diamond")),
              fixed=(("count", 1), ("size", "large")), analogue="Food-101 / Oxford Pets (fine-grained)"),
]
_BY_NAME = {s.name: s for s in _SPECS}
MICRO_DATASETS: list[str] = [s.name for s in _SPECS]

# Domain-shifted test sets of micro-shapes: the same classes in other renderings.
_SHIFT_STYLES = {"micro-shapes": ("photo", "pixelated", "foggy")}
MICRO_SHIFTS: dict[str, list[str]] = {}
for _src, _styles in _SHIFT_STYLES.items():
    MICRO_SHIFTS[_src] = []
    for _style in _styles:
        _name = f"{_src}-{_style}"
        _BY_NAME[_name] = replace(_BY_NAME[_src], name=_name, style=_style, shift_of=_src,
                                  splits={"train": 0, "val": 0, "test": SHIFT_TEST_PER_CLASS})
        MICRO_SHIFTS[_src].append(_name)


def micro_spec(name: str) -> MicroSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise RlptuneError(f"unknown micro dataset {name!r}: expected one of {known}") from None


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


def dataset_scenes(name: str, split: str) -> list[tuple[Scene, int, np.random.Generator]]:
    """(scene, label, render generator) for each image of a split, in a fixed order."""
    spec = micro_spec(name)
    n = spec.splits[split]
    split_id = {"train": 0, "val": 1, "test": 2}[split]
    # shifted sets reuse the source's content stream under another style
    content_key = spec.shift_of or spec.name
    out = []
    for label, (_cname, attrs) in enumerate(spec.classes):
        for i in range(n):
            rng = np.random.default_rng([SUITE_SEED, _stable(content_key), split_id + 3 * bool(spec.shift_of),
                                         label, i])
            pinned = dict(spec.fixed)
            pinned.update(dict(attrs))
            for attr, values in spec.choices:
                if attr not in pinned:
                    pinned[attr] = values[int(rng.integers(len(values)))]
            if "count" in pinned and "size" not in pinned:
                sizes = max_size_for_count(int(pinned["count"]))
                pinned["size"] = sizes[int(rng.integers(len(sizes)))]
            elif "size" in pinned and "count" not in pinned:
                counts = [c for c in range(1, 6) if pinned["size"] in max_size_for_count(c)]
                pinned["count"] = counts[int(rng.integers(len(counts)))]
            pinned["style"] = spec.style
            scene = sample_scene(rng, **pinned)
            out.append((scene, label, rng))
    return out


def render_split(name: str, split: str) -> tuple[list[np.ndarray], list[int]]:
    """Render a split in memory: (images, labels)."""
    images, labels = [], []
    for scene, label, rng in dataset_scenes(name, split):
        images.append(render(scene, rng))
        labels.append(label)
    return images, labels


def _png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _item_paths(spec: MicroSpec) -> dict:

    splits: dict = {}
    for split, n in spec.splits.items():
        items = []
        for label, cname in enumerate(spec.classnames):
            for i in range(n):
                items.append(Item(f"{split}/{label:02d}/{i:03d}.png", label, cname))
        splits[split] = items
    return splits


def load_micro_dataset(name: str, cache_dir: str | Path | None = None):
    """The micro dataset ``name`` (a suite dataset or a shifted variant) as PNG files in a cache folder.

    Returns :class:`rlptune.data.items.DatasetSplits` rooted at the cache folder.
    """

    spec = micro_spec(name)
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = base / "micro" / WORLD_VERSION / name
    items = _item_paths(spec)
    marker = root / "COMPLETE"
    if not marker.exists():
        try:
            _render_dataset(name, spec, items, root, marker)
        except OSError as exc:  # a cache path that is a file, a read-only or full disk: one line, not a traceback
            raise RlptuneError(os_error_line(exc, exc.filename or base, "write the micro dataset into the cache ($RLPTUNE_CACHE)")) from None
    return DatasetSplits(
        name=name, root=root, classnames=spec.classnames, train=items["train"], val=items["val"],
        test=items["test"], template=GENERIC_TEMPLATE,
    ).validate(root)


def _render_dataset(name: str, spec: MicroSpec, items: dict, root: Path, marker: Path) -> None:
    """Render every image of a micro dataset into a temporary folder, then move it onto ``root`` atomically."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root.parent))
    try:
        for split in spec.splits:
            if spec.splits[split] == 0:
                continue
            for (scene, label, rng), item in zip(dataset_scenes(name, split), items[split]):
                path = tmp / item.path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_png_bytes(render(scene, rng)))
        (tmp / "classnames.txt").write_text("\n".join(spec.classnames) + "\n", encoding="utf-8")
        (tmp / "COMPLETE").write_text(f"{WORLD_VERSION} {name} style={spec.style}\n", encoding="utf-8")
        try:
            os.replace(tmp, root)
        except OSError:
            # another process finished first (the target folder exists and is not empty): use theirs
            if not marker.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
