"""One pipeline: the same settings through `rlptune train`, the Python API and `rlptune run` give the same item lists,
few-shot draws and metrics — on a plain folder, a split-JSON file and a CoOp-layout dataset, with a non-default split
seed and the skip image policy (a broken image in every dataset)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import rlptune
from rlptune.cli import main

from conftest import COLOURS, draw_image

CLASSES = ["red", "green", "blue"]


def _images(root: Path, per_class: int, seed: int = 0) -> list[tuple[str, int, str]]:
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            draw_image(COLOURS[name], rng).save(folder / f"{name}_{i:02d}.png")
            rows.append((f"{name}/{name}_{i:02d}.png", label, name))
    (root / "red" / "red_broken.png").write_bytes(b"not an image")
    rows.append(("red/red_broken.png", 0, "red"))
    return rows


def _split_rows(rows):
    return {"train": rows[0::3] + [rows[-1]], "val": rows[1::3], "test": rows[2::3]}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    base = tmp_path_factory.mktemp("equality")
    folder = base / "folder"
    _images(folder, 12)
    json_root = base / "json"
    rows = _images(json_root / "images", 12, seed=1)
    (json_root / "split.json").write_text(json.dumps(_split_rows([[f"images/{p}", ln, c] for p, ln, c in rows])))
    dtd = base / "coop" / "dtd"
    rows = _images(dtd / "images", 12, seed=2)
    (dtd / "split_zhou_DescribableTextures.json").write_text(json.dumps(_split_rows([list(r) for r in rows])))
    return {
        "folder": ("folder", str(folder)),
        "split-json": ("split-json", str(json_root / "split.json")),
        "coop": ("dtd", str(base / "coop")),
    }


@pytest.mark.parametrize("kind", ["folder", "split-json", "coop"])
def test_train_api_and_run_agree(kind, datasets, tiny_arch_path, tmp_path):
    name, root = datasets[kind]
    settings = {
        "backbone": {"name": str(tiny_arch_path), "device": "cpu"},
        "data": {"dataset": name, "root": root, "shots": 2, "split_seed": 3, "image_policy": "skip"},
        "method": {"name": "coop"},
        "prompt": {"n_ctx": 2},
        "train": {"epochs": 2, "batch_size": 4, "seed": 1, "cache_dir": str(tmp_path / "cache")},
    }
    flags = [
        "--backbone",
        str(tiny_arch_path),
        "--device",
        "cpu",
        "--data-root",
        root,
        "--n-ctx",
        "2",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--set",
        "data.split_seed=3",
        "--set",
        "data.image_policy=skip",
    ]
    assert (
        main(
            [
                "train",
                "--method",
                "coop",
                "--dataset",
                name,
                "--shots",
                "2",
                "--seed",
                "1",
                "-o",
                str(tmp_path / "cli"),
                *flags,
            ]
        )
        == 0
    )
    api = rlptune.train(rlptune.resolve_config(overrides=settings), tmp_path / "api", progress=False)
    assert (
        main(
            [
                "run",
                "few-shot",
                "--datasets",
                name,
                "--methods",
                "coop",
                "--seeds",
                "1",
                "--shots",
                "2",
                "--results",
                str(tmp_path / "runs"),
                *[f for f in flags if f not in ("--device", "cpu")],
            ]
        )
        == 0
    )
    (run_result,) = list((tmp_path / "runs").rglob("result.json"))
    run_dir = run_result.parent

    draws = [json.loads((d / "few_shot.json").read_text()) for d in (tmp_path / "cli", tmp_path / "api", run_dir)]
    assert draws[0]["train"] == draws[1]["train"] == draws[2]["train"]
    assert draws[0]["val"] == draws[1]["val"] == draws[2]["val"]
    assert not any("broken" in str(item) for item in draws[0]["train"])  # the skip policy applied in every door
    cli = json.loads((tmp_path / "cli" / "result.json").read_text())
    run = json.loads(run_result.read_text())
    assert cli["metrics"]["test"] == api["metrics"]["test"] == run["metrics"]["test"]
    assert (tmp_path / "cli" / "adapter" / "rlptune_adapter.safetensors").read_bytes() == (
        run_dir / "adapter" / "rlptune_adapter.safetensors"
    ).read_bytes()

    # the API's load_dataset and evaluate see the same test split as the CLI (one default split seed everywhere)
    default = rlptune.resolve_config(overrides={**settings, "data": {**settings["data"], "split_seed": 1}})
    assert default.data.split_seed == rlptune.RunConfig().data.split_seed == 1
