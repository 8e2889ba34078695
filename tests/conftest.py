"""Shared fixtures: a tiny open_clip architecture (random weights) and generated image folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from hypothesis import settings as hypothesis_settings

# Property tests are deterministic: every run (a developer's, CI's) draws the same examples, so a red test is a
# bug to fix, never a draw that passes on the next try. A test's own settings() inherit this profile.
hypothesis_settings.register_profile("rlptune", derandomize=True, deadline=None)
hypothesis_settings.load_profile("rlptune")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# backbone.precision=auto picks bf16 on a CPU with native bf16; the suite's exactness checks are fp32 (1e-7), so it
# keeps auto at fp32 the documented way (tests of the resolver set the capability they need themselves)
os.environ["RLPTUNE_CPU_BF16"] = "0"

TINY_ARCH = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 20),
    "purple": (140, 40, 170),
    "orange": (240, 130, 20),
}


def draw_image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 40) -> Image.Image:
    """A coloured disc or square on a noisy grey background: classes differ by colour only."""
    background = rng.integers(90, 160, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(background)
    draw = ImageDraw.Draw(image)
    r = int(rng.integers(8, 16))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    jitter = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in colour)
    if rng.random() < 0.5:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=jitter)
    else:
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=jitter)
    return image


def one_run_sweep(protocol: str, dataset: str, backbone, results, *extra: str) -> list[str]:
    """``rlptune run`` arguments for one RLP run (seed 1, 1 shot) of ``protocol`` on ``backbone``: the set-up the
    sweep tests share; ``extra`` adds or overrides flags (a flag given twice takes its last value)."""
    return [
        "run",
        protocol,
        "--datasets",
        dataset,
        "--methods",
        "rlp",
        "--seeds",
        "1",
        "--shots",
        "1",
        "--backbone",
        str(backbone),
        "--results",
        str(results),
        *extra,
    ]


def quick_reproduce(results, *extra: str) -> list[str]:
    """``rlptune reproduce rlp --quick`` arguments on the micro backbone with ``results`` as the results folder: the
    set-up the study tests share; ``extra`` adds the invocation's own flags (seeds, parts, outputs)."""
    return ["reproduce", "rlp", "--backbone", "micro", "--quick", "--results", str(results), *extra]


def make_image_folder(root: Path, classes: list[str], per_split: dict[str, int], seed: int = 0) -> Path:
    """root/{train,val,test}/<class>/<i>.png with generated images."""
    rng = np.random.default_rng(seed)
    for split, count in per_split.items():
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw_image(COLOURS[name], rng).save(folder / f"{name}_{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_arch_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arch") / "tiny-clip.json"
    path.write_text(json.dumps(TINY_ARCH))
    return path


@pytest.fixture(scope="session")
def colour_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("colours")
    return make_image_folder(root, ["red", "green", "blue", "yellow"], {"train": 16, "val": 4, "test": 12})


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "cache"
    monkeypatch.setenv("RLPTUNE_CACHE", str(path))
    return path


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models on a shared machine: one thread avoids oversubscription stalls (results are thread-independent)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def backbone_from_arch(tmp_path_factory, arch: dict, name: str):
    """A random-weight backbone from an architecture dict, written as the JSON file users would pass."""
    from rlptune.backbones import load_backbone

    path = tmp_path_factory.mktemp("arch") / f"{name}.json"
    path.write_text(json.dumps(arch))
    return load_backbone(str(path), device="cpu")
