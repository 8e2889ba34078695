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
from types import ModuleType
from typing import Any, Callable

import numpy as np
from PIL import Image

from ..data.items import DatasetSplits, Item
from ..errors import RlptuneError
from ..io import default_cache_dir, os_error_line
from . import world as _world
from .world import BACKGROUNDS, COLOR_NAMES, PATTERNS, SHAPES, max_size_for_count, _plural

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


_POS5 = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}

_SPECS: list[MicroSpec] = [
    MicroSpec(
        "micro-shapes",
        "sketch",
        tuple(_cls(s, shape=s) for s in SHAPES),
        fixed=(("count", 1),),
        choices=(("size", ("medium", "large")), ("background", ("plain", "snow", "sunset", "desert"))),
        analogue="ImageNet / Caltech101",
    ),
    MicroSpec(
        "micro-textures",
        "noisy",
        tuple(_cls(p, pattern=p) for p in PATTERNS),
        fixed=(("count", 1), ("size", "large")),
        analogue="DTD",
    ),
    MicroSpec(
        "micro-scenes",
        "pixelated",
        tuple(_cls(b, background=b) for b in BACKGROUNDS if b != "plain"),
        choices=(("size", ("small",)),),
        analogue="SUN397",
    ),
    MicroSpec(
        "micro-counts",
        "foggy",
        tuple(
            _cls(f"{w} {s if n == 1 else _plural(s)}", count=n, shape=s)
            for s in ("circle", "triangle")
            for n, w in zip(range(1, 6), ("one", "two", "three", "four", "five"))
        ),
        analogue="counting (CLEVR-like)",
    ),
    MicroSpec(
        "micro-positions",
        "inverted",
        tuple(_cls(f"{s} {ph}", shape=s, position=p) for s in ("circle", "star") for p, ph in _POS5.items()),
        fixed=(("count", 1),),
        choices=(("size", ("small", "medium")),),
        analogue="EuroSAT (layout)",
    ),
    MicroSpec(
        "micro-colors",
        "pixelated",
        tuple(_cls(c, color=c) for c in COLOR_NAMES),
        choices=(("pattern", ("plain", "striped", "checkered")),),
        analogue="Oxford Flowers",
    ),
    MicroSpec(
        "micro-objects",
        "noisy",
        tuple(
            _cls(f"{c} {s}", color=c, shape=s)
            for c in ("red", "blue", "yellow")
            for s in ("circle", "square", "triangle", "star")
        ),
        fixed=(("count", 1),),
        choices=(("size", ("medium", "large")),),
        analogue="Stanford Cars / FGVC Aircraft (fine-grained)",
    ),
    MicroSpec(
        "micro-patterned",
        "sketch",
        tuple(
            _cls(f"{p} {s}", pattern=p, shape=s)
            for p in ("striped", "dotted", "checkered")
            for s in ("square", "heart", "hexagon", "diamond")
        ),
        fixed=(("count", 1), ("size", "large")),
        analogue="Food-101 / Oxford Pets (fine-grained)",
    ),
]


def _stable(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


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


def _retire(root: Path) -> None:
    """Move a stale rendering out of the way in one rename (readers never see it half-deleted), then delete it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.stale.", dir=root.parent))
    try:
        os.replace(root, trash / root.name)
    except FileNotFoundError:  # another process retired it first
        pass
    shutil.rmtree(trash, ignore_errors=True)


class MicroSuite:
    """One version of the micro benchmark, as data: its world, seed, dataset specs and shifted test sets.

    Every version draws, renders and caches its datasets with the same code (this class); what differs between
    versions is data (the world module, the specs) plus ``complete``, a version's rule for attributes a spec leaves
    open. Same name, same pixels, on any machine.
    """

    def __init__(
        self,
        label: str,
        world: ModuleType,
        seed: int,
        specs: list[MicroSpec],
        shift_styles: dict[str, tuple[str, ...]],
        complete: Callable[[dict, np.random.Generator], None] | None = None,
    ) -> None:
        self.label, self.world, self.seed, self.complete = label, world, seed, complete
        self._by_name = {s.name: s for s in specs}
        self.datasets: list[str] = [s.name for s in specs]
        self.shifts: dict[str, list[str]] = {}
        for source, styles in shift_styles.items():
            self.shifts[source] = []
            for style in styles:
                name = f"{source}-{style}"
                self._by_name[name] = replace(
                    self._by_name[source],
                    name=name,
                    style=style,
                    shift_of=source,
                    splits={"train": 0, "val": 0, "test": SHIFT_TEST_PER_CLASS},
                )
                self.shifts[source].append(name)

    def all_names(self) -> list[str]:
        """The suite's datasets, then every shifted test set."""
        return list(self.datasets) + [s for shifts in self.shifts.values() for s in shifts]

    def spec(self, name: str) -> MicroSpec:
        try:
            return self._by_name[name]
        except KeyError:
            raise RlptuneError(
                f"unknown {self.label} dataset {name!r}: expected one of {', '.join(sorted(self._by_name))}"
            ) from None

    def dataset_scenes(self, name: str, split: str) -> list[tuple[Any, int, np.random.Generator]]:
        """(scene, label, render generator) for each image of a split, in a fixed order."""
        spec = self.spec(name)
        n = spec.splits[split]
        split_id = {"train": 0, "val": 1, "test": 2}[split]
        content_key = spec.shift_of or spec.name  # shifted sets reuse the source's content under another style
        out = []
        for label, (_cname, attrs) in enumerate(spec.classes):
            for i in range(n):
                rng = np.random.default_rng(
                    [self.seed, _stable(content_key), split_id + 3 * bool(spec.shift_of), label, i]
                )
                pinned = dict(spec.fixed)
                pinned.update(dict(attrs))
                for attr, values in spec.choices:
                    if attr not in pinned:
                        pinned[attr] = values[int(rng.integers(len(values)))]
                if self.complete is not None:
                    self.complete(pinned, rng)
                pinned["style"] = spec.style
                out.append((self.world.sample_scene(rng, **pinned), label, rng))
        return out

    def render_split(self, name: str, split: str) -> tuple[list[np.ndarray], list[int]]:
        """Render a split in memory: (images, labels)."""
        images, labels = [], []
        for scene, label, rng in self.dataset_scenes(name, split):
            images.append(self.world.render(scene, rng))
            labels.append(label)
        return images, labels

    def load(self, name: str, cache_dir: str | Path | None = None) -> DatasetSplits:
        """The dataset ``name`` as PNG files in a cache folder (written once, atomically), as ``DatasetSplits``.

        A folder stamped by an older definition of the dataset (another style) is retired and drawn afresh.
        """
        spec = self.spec(name)
        base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        root = base / "micro" / self.world.WORLD_VERSION / name
        items = _item_paths(spec)
        marker = root / "COMPLETE"
        stamp = f"{self.world.WORLD_VERSION} {name} style={spec.style}\n"
        try:
            if marker.exists() and marker.read_text(encoding="utf-8") != stamp:
                _retire(root)
            if not marker.exists():
                self._render(name, spec, items, root, marker, stamp)
        except OSError as exc:  # a cache path that is a file, a read-only or full disk: one line, not a traceback
            raise RlptuneError(
                os_error_line(exc, exc.filename or base, "write the micro dataset into the cache ($RLPTUNE_CACHE)")
            ) from None
        return DatasetSplits(
            name=name,
            root=root,
            classnames=spec.classnames,
            train=items["train"],
            val=items["val"],
            test=items["test"],
            template=GENERIC_TEMPLATE,
        ).validate(root)

    def _render(self, name: str, spec: MicroSpec, items: dict, root: Path, marker: Path, stamp: str) -> None:
        """Render every image into a temporary folder, then move it onto ``root`` in one rename."""
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=root.parent))
        try:
            for split, count in spec.splits.items():
                if count == 0:
                    continue
                for (scene, _label, rng), item in zip(self.dataset_scenes(name, split), items[split]):
                    path = tmp / item.path
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(_png_bytes(self.world.render(scene, rng)))
            (tmp / "classnames.txt").write_text("\n".join(spec.classnames) + "\n", encoding="utf-8")
            (tmp / "COMPLETE").write_text(stamp, encoding="utf-8")
            try:
                os.replace(tmp, root)
            except OSError:
                if not marker.exists():  # another process finished first: use theirs
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)


def _complete_v1(pinned: dict, rng: np.random.Generator) -> None:
    """World v1 couples count and size (many objects must be small): draw the one a spec leaves open."""
    if "count" in pinned and "size" not in pinned:
        sizes = max_size_for_count(int(pinned["count"]))
        pinned["size"] = sizes[int(rng.integers(len(sizes)))]
    elif "size" in pinned and "count" not in pinned:
        counts = [c for c in range(1, 6) if pinned["size"] in max_size_for_count(c)]
        pinned["count"] = counts[int(rng.integers(len(counts)))]


# Domain-shifted test sets of micro-shapes: the same classes in other renderings.
SUITE = MicroSuite(
    "micro", _world, SUITE_SEED, _SPECS, {"micro-shapes": ("photo", "pixelated", "foggy")}, complete=_complete_v1
)
MICRO_DATASETS: list[str] = SUITE.datasets
MICRO_SHIFTS: dict[str, list[str]] = SUITE.shifts
micro_spec = SUITE.spec
dataset_scenes = SUITE.dataset_scenes
render_split = SUITE.render_split
load_micro_dataset = SUITE.load
