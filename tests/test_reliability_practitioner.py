"""The practitioner's path: the README's Python example runs as written, and `rlptune predict` on a folder."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import COLOURS, draw_image
from rlptune.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_example() -> str:
    """The first ```python block under the README's "## Python API" heading."""
    text = README.read_text(encoding="utf-8")
    section = re.search(r"^## Python API\s*$(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    assert section, 'README.md has no "## Python API" section'
    block = re.search(r"^```python\s*\n(.*?)^```", section.group(1), flags=re.M | re.S)
    assert block, 'the "## Python API" section of README.md has no ```python block'
    return block.group(1)


def images_the_example_names(code: str, where: Path) -> None:
    """Create what the example refers to: an image folder (one sub-folder per class) and any single image files."""
    rng = np.random.default_rng(0)
    for folder in re.findall(r'"root":\s*"([^"]+)"', code):
        for name in ("red", "green", "blue"):
            target = where / folder / name
            target.mkdir(parents=True, exist_ok=True)
            for i in range(8):
                draw_image(COLOURS[name], rng).save(target / f"{name}_{i}.png")
    for image in re.findall(r'"([^"/]+\.(?:jpg|jpeg|png))"', code):
        draw_image(COLOURS["red"], rng).save(where / image)


def run_example(code: str, where: Path, monkeypatch) -> dict:
    images_the_example_names(code, where)
    monkeypatch.chdir(where)
    namespace: dict = {"__name__": "readme_example"}
    exec(compile(code, str(README) + ":Python API", "exec"), namespace)  # noqa: S102 - our own README
    return namespace


def test_readme_example_with_the_shipped_micro_backbone(tmp_path, monkeypatch, cache_dir, capsys):
    """Exactly as written (the example uses only what ships with the package)."""
    from rlptune.micro.shipped import WEIGHTS_PATH

    code = readme_python_example()
    if '"micro"' in code and not WEIGHTS_PATH.is_file():
        pytest.skip(f"the micro CLIP weights ({WEIGHTS_PATH}) are not built yet; `rlptune pretrain-micro` creates them")
    namespace = run_example(code, tmp_path, monkeypatch)
    assert (tmp_path / "runs" / "mine" / "adapter" / "rlptune_adapter.safetensors").is_file()
    assert capsys.readouterr().out.strip()
    assert namespace["model"].registered_name == "rlp"
    assert tuple(namespace["logits"].shape) == (1, len(namespace["model"].classnames))


def test_readme_example_runs_with_a_tiny_backbone(tmp_path, monkeypatch, cache_dir, capsys, tiny_arch_path):
    """The same lines with one substitution, the backbone spec, so they run before the micro weights exist."""
    code = readme_python_example()
    assert code.count('load_backbone("micro")') == 1, "the example is expected to load the shipped micro backbone"
    code = code.replace('load_backbone("micro")', f"load_backbone({str(tiny_arch_path)!r})")
    namespace = run_example(code, tmp_path, monkeypatch)
    adapter = tmp_path / "runs" / "mine" / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md",
        "rlptune_adapter.json",
        "rlptune_adapter.safetensors",
        "training_config.yaml",
    ]
    assert adapter.joinpath("rlptune_adapter.safetensors").stat().st_size < 4096
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) >= 2  # the result line, then one line per predicted image
    assert namespace["model"].registered_name == "rlp"
    assert tuple(namespace["logits"].shape) == (1, len(namespace["model"].classnames))


# -- rlptune predict on a folder ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_arch_path, colour_folder) -> Path:
    run = tmp_path_factory.mktemp("predict-run")
    code = main(
        [
            "train",
            "--backbone",
            str(tiny_arch_path),
            "--device",
            "cpu",
            "--dataset",
            "folder",
            "--data-root",
            str(colour_folder),
            "--method",
            "rlp",
            "--epochs",
            "1",
            "--shots",
            "2",
            "--aug-views",
            "0",
            "--cache-dir",
            str(tmp_path_factory.mktemp("predict-cache")),
            "--no-progress",
            "-o",
            str(run),
        ]
    )  # the cache beside the run: a run folder never holds an input
    assert code == 0
    return run / "adapter"


def test_predict_folder_shows_progress_on_a_terminal_only_and_writes_every_image(
    adapter, colour_folder, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "pred.csv"
    nested = colour_folder / "test"  # class sub-folders: images are found recursively
    code = main(["predict", str(adapter), str(nested), "--top-k", "2", "-o", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    assert "48/48" not in captured.err  # redirected (not a terminal): no bar frames in the log
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    code = main(["predict", str(adapter), str(nested), "--top-k", "2", "-o", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    assert "predict" in captured.err and "48/48" in captured.err  # the progress bar on a terminal (stderr)
    assert f"wrote 48 predictions to {out}" in captured.out
    rows = list(csv.DictReader(out.open()))
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows) and len(rows) == 48
    assert list(rows[0]) == ["path", "label_1", "prob_1", "label_2", "prob_2"]
    for row in rows:
        assert 0.0 <= float(row["prob_2"]) <= float(row["prob_1"]) <= 1.0
        assert {row["label_1"], row["label_2"]} <= {"red", "green", "blue", "yellow"}


def test_predict_top_k_above_class_count_is_clamped(adapter, colour_folder, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    assert (
        main(
            [
                "predict",
                str(adapter),
                str(colour_folder / "test" / "red"),
                "--top-k",
                "10",
                "-o",
                str(out),
                "--no-progress",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out.open()))
    assert len(rows[0]) == 1 + 2 * 4
    assert {rows[0][f"label_{i}"] for i in range(1, 5)} == {"red", "green", "blue", "yellow"}
    assert abs(sum(float(rows[0][f"prob_{i}"]) for i in range(1, 5)) - 1.0) < 1e-4


def test_predict_classes_from_a_file_and_printing_without_output(adapter, colour_folder, tmp_path, capsys):
    names = tmp_path / "classes.txt"
    names.write_text("a photo of nothing\n\ncat\ndog\n", encoding="utf-8")
    single = colour_folder / "test" / "blue" / "blue_000.png"
    code = main(
        [
            "predict",
            str(adapter),
            str(single),
            str(colour_folder / "test" / "red"),
            "--classes",
            str(names),
            "--top-k",
            "3",
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 1 + 12
    path, best = out[0].split("\t")
    assert path == str(single)
    labels = [part.rsplit(" ", 1)[0] for part in best.split(", ")]
    assert sorted(labels) == ["a photo of nothing", "cat", "dog"]
