"""Every figure writes a PNG and an SVG; tiny data so the suite stays fast."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlptune.report.plots import (
    OKABE_ITO,
    plot_base_new_bars,
    plot_few_shot_curves,
    plot_id_vs_accuracy,
    plot_singular_spectra,
    plot_training_curves,
)
from rlptune.errors import RlptuneError


def _check(paths: list[Path], stem: Path) -> None:
    assert paths == [stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".svg")]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = paths[1].read_text(encoding="utf-8")
    assert "<svg" in svg and "</svg>" in svg
    assert not list(stem.parent.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_bars_and_curves(tmp_path: Path) -> None:
    rows = [
        {"protocol": "base2new", "dataset": ds, "method": m, "seed": s, "base": 80.0 + s, "new": 60.0 + s}
        for ds in ("dtd", "eurosat")
        for m in ("coop", "rlp")
        for s in (1, 2)
    ]
    _check(plot_base_new_bars(rows, tmp_path / "bars"), tmp_path / "bars")
    curves = {
        "dtd": {"coop": {"shots": [1, 2, 4], "mean": [50.0, 55.0, 60.0], "std": [1.0, None, 0.5], "n": [2, 2, 2]}}
    }
    _check(plot_few_shot_curves(curves, tmp_path / "sub" / "fs"), tmp_path / "sub" / "fs")
    with pytest.raises(RlptuneError):
        plot_few_shot_curves({}, tmp_path / "empty")


def test_id_scatter_title_has_spearman(tmp_path: Path) -> None:
    paths = plot_id_vs_accuracy(
        [0.5, 0.6, 0.7, 0.9], [60.0, 62.0, 61.0, 70.0], tmp_path / "id", labels=["coop", "coop", "rlp", "rlp"]
    )
    _check(paths, tmp_path / "id")
    # titles are drawn as paths in the SVG; check the metadata-free bytes are deterministic instead
    again = plot_id_vs_accuracy(
        [0.5, 0.6, 0.7, 0.9], [60.0, 62.0, 61.0, 70.0], tmp_path / "id2", labels=["coop", "coop", "rlp", "rlp"]
    )
    assert again[1].read_bytes() == paths[1].read_bytes()
    plot_id_vs_accuracy([0.5], [60.0], tmp_path / "one")  # too few points: drawn, correlation "n/a"


def test_spectra_and_training_curves(tmp_path: Path) -> None:
    _check(
        plot_singular_spectra({"coop": [4.0, 2.0, 1.0], "rlp": [5.0, 0.1, 0.0]}, tmp_path / "spec"), tmp_path / "spec"
    )
    records = [
        {
            "epoch": e,
            "loss": 1.0 / (e + 1),
            "train_acc": 50.0 + e,
            "lr": 0.002,
            "diagnostics": {"P": {"id_k": 0.5 + 0.1 * e, "k": 1}, "delta": {"id_k": 0.9, "k": 1}},
        }
        for e in range(3)
    ]
    _check(plot_training_curves(records, tmp_path / "train"), tmp_path / "train")
    _check(plot_training_curves({"a": records, "b": records[:2]}, tmp_path / "train2"), tmp_path / "train2")
    with pytest.raises(RlptuneError):
        plot_training_curves([{"epoch": 0, "lr": 0.1}], tmp_path / "nothing")
    assert len(OKABE_ITO) == 8


def _edge_ink(png: Path) -> int:
    """Non-white pixels in the outermost 3-pixel frame of a PNG: text cut off at the canvas edge leaves ink there."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L")).astype(int)
    frame = np.concatenate([pixels[:3].ravel(), pixels[-3:].ravel(), pixels[:, :3].ravel(), pixels[:, -3:].ravel()])
    return int((frame < 200).sum())


def test_long_titles_labels_and_legends_are_not_cut_off(tmp_path: Path) -> None:
    """Few-shot panels with long dataset names, one method hidden under another, training runs with long labels."""
    long_ds = "micro-patterned-textures-rendered-in-six-styles-with-a-long-name"
    same = {"shots": [1, 2, 4], "mean": [50.0, 55.0, 60.0], "std": [1.0, 1.0, 1.0], "n": [2, 2, 2]}
    curves = {
        "Average": {"coop": same, "rlp": same, "zeroshot": {"shots": [0], "mean": [52.0], "std": [None], "n": [1]}},
        long_ds: {"coop": same, "rlp": same},
    }
    paths = plot_few_shot_curves(curves, tmp_path / "fs", title="Few-shot accuracy " * 8)
    assert _edge_ink(paths[0]) == 0
    svg = paths[1].read_text(encoding="utf-8")
    assert svg.count("stroke-dasharray") >= 2  # rlp dashed over coop, zero-shot dotted: the equal curves stay apart
    records = [{"epoch": e, "loss": 1.0 / e, "train_acc": 50.0 + e, "val_acc": 45.0 + e} for e in range(1, 4)]
    runs = {f"{m} ({long_ds}, seed 1)": records for m in ("coop", "rlp", "kgcoop", "maple")}
    train = plot_training_curves(runs, tmp_path / "train")
    assert _edge_ink(train[0]) == 0
    rows = [
        {"protocol": "base2new", "dataset": d, "method": "rlp", "seed": 1, "base": 80.0, "new": 60.0}
        for d in (long_ds, "dtd")
    ]
    assert _edge_ink(plot_base_new_bars(rows, tmp_path / "bars")[0]) == 0


def test_training_curves_draw_validation_only_when_logged(tmp_path: Path) -> None:
    with_val = [{"epoch": e, "loss": 1.0 / e, "train_acc": 50.0 + e, "val_acc": 45.0 + e} for e in range(1, 4)]
    without = [{k: v for k, v in r.items() if k != "val_acc"} for r in with_val]
    a = plot_training_curves(with_val, tmp_path / "a")[1].read_text(encoding="utf-8")
    b = plot_training_curves(without, tmp_path / "b")[1].read_text(encoding="utf-8")
    assert a.count("<path") > b.count("<path")  # the dashed validation line (and its legend entry) exist only in a
    assert "stroke-dasharray" in a and "stroke-dasharray" not in b
