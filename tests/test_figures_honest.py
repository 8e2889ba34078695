"""Report figures that don't mislead: nothing cut at the edge, every method in its own style, spread shown or stated,
captions counted from what is drawn."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlptune.config import TrainSettings
from rlptune.methods import list_methods as _all_methods
from rlptune.registry import method_entry

from rlptune.report import plots
from rlptune.report.plots import (
    METHOD_STYLES,
    method_styles,
    plot_base_new_bars,
    plot_few_shot_curves,
    plot_id_vs_accuracy,
    plot_singular_spectra,
    plot_training_curves,
)
from rlptune.report.writer import write_report


def list_methods() -> list[str]:
    """The package's own methods (other test modules register plug-ins in the same process; those get the
    plug-in styles, checked separately)."""
    return [n for n in _all_methods() if method_entry(n).method_class.__module__.startswith("rlptune.")]


LONG_DS = "micro-patterned-textures-rendered-in-six-styles-with-a-long-name"
PLUGINS = ["my_method", "rlp (rank=2)", "a-plug-in-method-with-a-rather-long-name"]


def _edge_ink(png: Path) -> int:
    """Non-background pixels in the outermost 3-pixel frame: a legend or label cut at the canvas edge leaves ink."""
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("L")).astype(int)
    frame = np.concatenate([pixels[:3].ravel(), pixels[-3:].ravel(), pixels[:, :3].ravel(), pixels[:, -3:].ravel()])
    return int((frame < 250).sum())


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The matplotlib figures the plot functions save, kept for inspection."""
    kept: list[Any] = []
    save = plots._save

    def keep(fig: Any, stem: Any) -> list[Path]:
        kept.append(fig)
        return save(fig, stem)

    monkeypatch.setattr(plots, "_save", keep)
    return kept


def _methods() -> list[str]:
    return [*list_methods(), *PLUGINS]


def _figure_kinds() -> dict[str, Any]:
    """Each figure kind with the data that used to push ink off the canvas: 15 methods, long names, two legends."""
    methods = _methods()
    b2n = [
        {"protocol": "base2new", "dataset": d, "method": m, "seed": s, "base": 70.0 + i + s, "new": 60.0 + i - s}
        for i, m in enumerate(methods)
        for d in (LONG_DS, "dtd")
        for s in (1, 2)
    ]
    curve = {"shots": [1, 2, 4, 16], "mean": [50.0, 55.0, 60.0, 66.0], "std": [1.0, 2.0, 1.0, 0.5], "n": [2] * 4}
    curves = {"Average": {m: curve for m in methods}, LONG_DS: {m: curve for m in methods}}
    curves["Average"]["zeroshot"] = {"shots": [0], "mean": [52.0], "std": [None], "n": [1]}
    rng = np.random.default_rng(0)
    n = 2 * len(methods)
    ids, acc = rng.uniform(0.3, 0.9, n).tolist(), rng.uniform(30.0, 90.0, n).tolist()
    labels = methods * 2
    sets = [f"ds{i % 7}" for i in range(n)]  # shorter than the method legend, which was the one cut
    spectra = {f"{m} ({LONG_DS}, seed 1)": [4.0, 2.0 / (i + 1), 0.5, 0.01] for i, m in enumerate(methods[:8])}
    records = [
        {
            "epoch": e,
            "loss": 1.0 / e,
            "train_acc": 50.0 + e,
            "val_acc": 45.0 + e,
            "diagnostics": {"P": {"id_k": 0.5, "k": 1}, "delta": {"id_k": 0.9, "k": 1}},
        }
        for e in range(1, 4)
    ]
    runs = {f"{m} ({LONG_DS}, seed 1)": records for m in methods[:6]}
    return {
        "bars": lambda stem: plot_base_new_bars(b2n, stem),
        "few_shot": lambda stem: plot_few_shot_curves(curves, stem),
        "id_vs_accuracy": lambda stem: plot_id_vs_accuracy(ids, acc, stem, labels=labels, markers_by=sets),
        "id_vs_accuracy_one_legend": lambda stem: plot_id_vs_accuracy(ids, acc, stem, labels=labels),
        "spectra": lambda stem: plot_singular_spectra(spectra, stem, methods=methods[:8], markers_by=[LONG_DS] * 8),
        "training_curves": lambda stem: plot_training_curves(
            runs, stem, methods=methods[:6], markers_by=[LONG_DS, "dtd"] * 3
        ),
        "training_curves_one_run": lambda stem: plot_training_curves(records, stem),
    }


@pytest.mark.parametrize("kind", list(_figure_kinds()))
def test_no_figure_has_ink_at_its_edge(tmp_path: Path, kind: str) -> None:
    """The ID-vs-accuracy legend was cut at the right edge: every figure kind, PNG, outermost pixels blank."""
    paths = _figure_kinds()[kind](tmp_path / kind)
    assert _edge_ink(paths[0]) == 0


def test_every_registered_method_has_its_own_colour_marker_dash_and_hatch() -> None:
    names = list_methods()
    assert set(names) <= set(METHOD_STYLES), "a registered method without a style of its own"
    styles = [METHOD_STYLES[n] for n in names]
    for field in ("colour", "marker", "dash", "hatch"):
        values = [str(getattr(s, field)).lower() if field == "colour" else str(getattr(s, field)) for s in styles]
        assert len(set(values)) == len(values), f"two registered methods share a {field}"
    coop, rlp = METHOD_STYLES["coop"], METHOD_STYLES["rlp"]
    assert all(getattr(coop, f) != getattr(rlp, f) for f in ("colour", "marker", "dash", "hatch"))


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.lists(
        st.text(min_size=1, max_size=12).filter(lambda s: s not in METHOD_STYLES), min_size=1, max_size=8, unique=True
    )
)
def test_plug_in_methods_never_look_like_another_method(extra: list[str]) -> None:
    """Any plug-in names beside every registered method: distinct colours, markers and dashes, and the same style
    whatever the drawing order."""
    names = [*list_methods(), *extra]
    styles = method_styles(names)
    assert set(styles) == set(names)
    for field in ("colour", "marker", "dash"):
        values = [str(getattr(styles[n], field)) for n in names]
        assert len(set(values)) == len(values), f"{field} repeats among {names}"
    assert method_styles(list(reversed(names))) == styles


def test_many_plug_ins_still_differ_in_colour_or_marker() -> None:
    names = [f"plugin{i}" for i in range(30)]
    styles = method_styles(names)
    pairs = {(s.colour, str(s.marker)) for s in styles.values()}
    assert len(pairs) == len(names)


def _colour_of(artist: Any) -> str:
    from matplotlib.colors import to_hex

    return to_hex(artist.get_facecolor() if hasattr(artist, "get_height") else artist.get_color()).lower()


def test_bars_and_lines_draw_each_method_in_its_style(tmp_path: Path, figures: list[Any]) -> None:
    """With 12 methods the bar chart's colours no longer repeat (CoOp and RLP were the same green)."""
    methods = _methods()
    rows = [
        {"protocol": "base2new", "dataset": "dtd", "method": m, "seed": 1, "base": 80.0, "new": 60.0} for m in methods
    ]
    plot_base_new_bars(rows, tmp_path / "bars")
    ax = figures[-1].axes[0]
    expected = method_styles(methods)
    from matplotlib.container import BarContainer

    drawn = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
    assert set(drawn) == set(methods)
    for m in methods:
        bar = drawn[m].patches[0]
        assert _colour_of(bar) == expected[m].colour.lower()
        assert (bar.get_hatch() or "") == expected[m].hatch
    assert len({_colour_of(drawn[m].patches[0]) for m in methods}) == len(methods)

    curve = {"shots": [1, 4], "mean": [50.0, 60.0], "std": [1.0, 1.0], "n": [2, 2]}
    plot_few_shot_curves({"dtd": {m: curve for m in methods}}, tmp_path / "fs")
    lines = {ln.get_label(): ln for ln in figures[-1].axes[0].get_lines()}
    for m in methods:
        assert _colour_of(lines[m]) == expected[m].colour.lower()
        assert lines[m].get_marker() == expected[m].marker
    looks = {(_colour_of(lines[m]), str(lines[m].get_marker()), str(lines[m].get_linestyle())) for m in methods}
    assert len(looks) == len(methods)


@pytest.mark.parametrize("seeds", [1, 3])
def test_one_shot_count_shows_its_spread_or_says_there_is_none(tmp_path: Path, figures: list[Any], seeds: int) -> None:
    """A few-shot curve at a single shot count drew bare dots: the band has no width there, so whiskers carry it."""
    curve = {"shots": [16], "mean": [60.0], "std": [None if seeds == 1 else 8.0], "n": [seeds]}
    plot_few_shot_curves({"dtd": {"coop": curve, "rlp": curve}}, tmp_path / "fs")
    fig = figures[-1]
    segments = [seg for c in fig.axes[0].collections if hasattr(c, "get_segments") for seg in c.get_segments()]
    spans = sorted((round(float(np.min(s[:, 1])), 6), round(float(np.max(s[:, 1])), 6)) for s in segments)
    title = fig._suptitle.get_text().replace("\n", " ")
    if seeds == 1:
        assert spans == [] and "n = 1: no spread" in title
    else:
        assert spans.count((52.0, 68.0)) == 2  # one ± std whisker per method
        assert "n = 1" not in title


def _result(method: str, dataset: str, seed: int, rank: int) -> dict[str, Any]:
    sv = [1.0, 0.5 / rank, 0.1, 0.01]
    diag = {"k": 1, "id_k": 0.6, "singular_values": sv, "rank": 4, "effective_rank": 2.0}
    return {
        "protocol": "base2new",
        "dataset": dataset,
        "method": method,
        "seed": seed,
        "shots": 16,
        "base": 80.0 + seed,
        "new": 60.0 + seed + rank,
        "trainable_params": 2048,
        "prompt_diagnostics": {"ctx": {"P": diag, "delta": diag}},
        "settings": {"train": {"aug_views": 0}},
        "history": [{"epoch": e, "loss": 1.0 / e, "train_acc": 50.0 + e} for e in (1, 2)],
    }


def test_captions_count_what_is_drawn_and_read_defaults_from_settings(tmp_path: Path) -> None:
    """Spectra showed 4 of 7 datasets and training curves 3 of 7 under 'one run per method and dataset', and the
    note said train.aug_views defaults to 4 (it is 0)."""
    datasets = [f"ds{i}" for i in range(5)]
    rows = [_result(m, d, s, r) for m, r in (("coop", 4), ("rlp", 1)) for d in datasets for s in (1, 2)]
    write_report(rows, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    spectra = next(line for line in text.splitlines() if line.startswith("*Singular values of P "))
    assert "8 run(s)" in spectra and "on 4 of 5 dataset(s)" in spectra and "seed 1" in spectra
    assert "12 other run(s)" in spectra
    curves = next(line for line in text.splitlines() if line.startswith("*Training loss"))
    assert "6 run(s)" in curves and "on 3 of 5 dataset(s)" in curves
    assert f"train.aug_views is {TrainSettings().aug_views} by default" in text
    assert "4 by default" not in text and "These runs used train.aug_views = 0." in text
    bars = next(line for line in text.splitlines() if line.startswith("*Base / New / H"))
    assert "2 method(s) on 5 dataset(s)" in bars and "mean ± std over 2 seeds" in bars


def test_bars_from_one_seed_say_so(tmp_path: Path, figures: list[Any]) -> None:
    rows = [
        {"protocol": "base2new", "dataset": d, "method": m, "seed": 1, "base": 80.0, "new": 60.0}
        for d in ("dtd", "eurosat")
        for m in ("coop", "rlp")
    ]
    plot_base_new_bars(rows, tmp_path / "bars")
    assert "n = 1: no spread" in figures[-1]._suptitle.get_text()


def test_styles_are_the_same_in_every_figure_of_a_report() -> None:
    """A method's style does not depend on which other registered methods share the figure."""
    names = list_methods()
    for a, b in itertools.combinations(names, 2):
        assert method_styles([a, b])[a] == method_styles(names)[a] == METHOD_STYLES[a]
