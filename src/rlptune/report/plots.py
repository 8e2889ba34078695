"""Figures researchers ask for: Base/New/H bars, few-shot curves, ID_k vs new-class accuracy, spectra, training curves.

Every function takes data plus an output path *stem* and writes ``<stem>.png`` (150 dpi) and ``<stem>.svg``
atomically, returning both paths. Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas,
so no GUI backend, global pyplot state or display is involved (safe in training processes and on servers).
Colours are the Okabe–Ito palette (distinguishable with the common colour-vision deficiencies), and lines also
differ by marker so a grey-scale print still reads.
"""

from __future__ import annotations

import hashlib
import io
import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rlptune.errors import RlptuneError
from rlptune.analysis.spectrum import primary_diagnostics
from rlptune.analysis.stats import spearman
from rlptune.report.tables import Table, base2new_table
from rlptune.io import write_bytes

__all__ = [
    "METHOD_STYLES",
    "OKABE_ITO",
    "MethodStyle",
    "bars_spread_note",
    "few_shot_spread_note",
    "method_styles",
    "plot_base_new_bars",
    "plot_few_shot_curves",
    "plot_id_vs_accuracy",
    "plot_singular_spectra",
    "plot_training_curves",
]

# Okabe & Ito (2008), ordered so the first colours are the most distinct on white; yellow last (low contrast).
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#000000", "#F0E442"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


@dataclass(frozen=True)
class MethodStyle:
    """How one method is drawn wherever it appears: line colour, marker, line dash and bar hatch."""

    colour: str
    marker: Any  # a matplotlib marker: "o", "s", ... or (sides, style, angle)
    dash: Any  # a matplotlib linestyle: "-", "--", ":", "-." or (offset, (on, off, ...))
    hatch: str


#: One style per registered method, so a method looks the same in every figure and no two methods look alike: each
#: has its own colour, marker, dash and hatch. The eight Okabe-Ito colours go to the most compared methods (CoOp blue
#: and RLP vermillion, the one comparison the charts exist for); four of Paul Tol's muted colours complete twelve.
METHOD_STYLES: dict[str, MethodStyle] = {
    "coop": MethodStyle("#0072B2", "o", "-", ""),
    "rlp": MethodStyle("#D55E00", "s", "--", "//"),
    "kgcoop": MethodStyle("#009E73", "^", "-.", "\\\\"),
    "cocoop": MethodStyle("#E69F00", "D", (0, (5, 1, 1, 1, 1, 1)), "xx"),
    "maple": MethodStyle("#56B4E9", "v", (0, (3, 1)), ".."),
    "ivlp": MethodStyle("#CC79A7", "P", (0, (1, 1)), "--"),
    "zeroshot": MethodStyle("#555555", "X", ":", "oo"),
    "promptsrc": MethodStyle("#882255", "*", (0, (5, 2)), "++"),
    "clip_lora": MethodStyle("#332288", "h", (0, (2, 2)), "||"),
    "linear_probe": MethodStyle("#999933", "p", (0, (8, 2)), "OO"),
    "deep_text": MethodStyle("#44AA99", "<", (0, (4, 1, 1, 1)), "**"),
    "deep_vision": MethodStyle("#CC6677", ">", (0, (6, 1, 2, 1)), "-\\\\"),
}
# Plug-in methods and sweep variants ("rlp (rank=2)") draw from these: colours, markers and dashes no registered
# method uses, so they never look like one.
_EXTRA_COLOURS = ["#F0E442", "#AA4499", "#117733", "#88CCEE", "#661100", "#6699CC", "#DDCC77", "#BBCC33"]
_EXTRA_MARKERS = [
    (6, 1, 0),
    (7, 0, 0),
    (4, 1, 0),
    (8, 1, 0),
    (3, 1, 0),
    "8",
    (9, 0, 0),
    (10, 1, 0),
    (12, 1, 0),
]  # filled
_EXTRA_DASHES = [
    (0, (1, 2)),
    (0, (7, 3, 1, 3)),
    (0, (2, 1, 2, 4)),
    (0, (9, 2, 3, 2)),
    (0, (1, 3, 4, 3)),
    (0, (5, 1, 5, 4)),
    (0, (3, 3, 1, 1)),
    (0, (10, 3)),
]
_EXTRA_HATCHES = ["\\\\..", "//..", "xx..", "++..", "||..", "--..", "**//", "oo\\\\"]


def method_styles(names: Sequence[str]) -> dict[str, MethodStyle]:
    """The style of each name in one figure: a registered method's own (:data:`METHOD_STYLES`), anything else (a
    plug-in method, a sweep variant) a style no registered method has, distinct from the others in the figure.

    Deterministic: the unregistered names are placed in sorted order, each at a slot picked from a hash of its name
    (the next free slot if taken), so a name's style depends on the names drawn with it, not on the drawing order.
    """
    out: dict[str, MethodStyle] = {}
    n_colours, n_markers = len(_EXTRA_COLOURS), len(_EXTRA_MARKERS)
    total = n_colours * n_markers  # slot s: colour s mod 8 and dash/hatch s mod 8, marker s mod 9: all pairs distinct
    used_colours: set[int] = set()
    used_markers: set[int] = set()
    taken: set[int] = set()
    for name in sorted({str(n) for n in names if str(n) not in METHOD_STYLES}):
        start = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big") % total
        order = [(start + i) % total for i in range(total)]
        slot = next(
            (s for s in order if s % n_colours not in used_colours and s % n_markers not in used_markers),
            next((s for s in order if s not in taken), start),
        )  # beyond 72 plug-ins in one figure, styles repeat
        taken.add(slot)
        used_colours.add(slot % n_colours)
        used_markers.add(slot % n_markers)
        out[name] = MethodStyle(
            _EXTRA_COLOURS[slot % n_colours],
            _EXTRA_MARKERS[slot % n_markers],
            _EXTRA_DASHES[slot % n_colours],
            _EXTRA_HATCHES[slot % n_colours],
        )
    return {str(n): METHOD_STYLES.get(str(n)) or out[str(n)] for n in names}


def _marker(i: int) -> str:
    """The i-th marker for a second grouping (the dataset) when colour and dash already say the method."""
    return _MARKERS[i % len(_MARKERS)]


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, stem: str | Path) -> list[Path]:
    """Render to PNG and SVG in memory, then write each atomically (a killed process leaves no half figure)."""
    import matplotlib

    stem = Path(stem)
    paths = []
    with matplotlib.rc_context({"svg.hashsalt": "rlptune", "svg.fonttype": "path"}):
        for ext, kwargs in (
            ("png", {"dpi": 150, "metadata": {"Software": None}}),
            ("svg", {"metadata": {"Date": None}}),
        ):
            buffer = io.BytesIO()
            # tight bounding box: titles, outside legends and long tick labels are never cut at the canvas edge
            fig.savefig(buffer, format=ext, facecolor="white", bbox_inches="tight", pad_inches=0.12, **kwargs)
            paths.append(write_bytes(stem.with_name(f"{stem.name}.{ext}"), buffer.getvalue()))
    return paths


def _wrap(text: str, width_inches: float, fontsize: float = 12.0) -> str:
    """Break a title into lines that fit ``width_inches`` (about 0.55 em per character), so none is cut off."""

    chars = max(16, int(width_inches * 72.0 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _legend_inches(labels: Sequence[str], fontsize: float = 8.5) -> float:
    """About how wide a one-column legend of ``labels`` is (0.6 em per character plus the handle), so a figure with
    its legend beside the axes can be made wide enough that the axes keep their size."""
    return 0.9 + max((len(str(label)) for label in labels), default=0) * 0.6 * fontsize / 72.0


def _legend_columns(labels: Sequence[str], width_inches: float, most: int, fontsize: float = 10.0) -> int:
    """Legend columns that fit ``width_inches`` (about 0.6 em per character plus the handle), at most ``most``."""
    longest = max((len(str(label)) for label in labels), default=1)
    return max(1, min(len(labels), most, int(width_inches * 72.0 / (0.6 * fontsize * (longest + 6)))))


def _suptitle(fig: Any, text: str) -> None:
    fig.suptitle(_wrap(text, fig.get_figwidth()))


def _id_label(k: int) -> str:
    return f"ID$_{{{k}}}$"


# ----------------------------------------------------------------------------------------------------------------


def bars_spread_note(table: Table) -> str:
    """How many seeds stand behind a table's cells, i.e. what a bar's whisker is (absent with one seed)."""
    counts = [cell.n for row in table.rows for cell in row.cells.values() if cell is not None and cell.n]
    if not counts:
        return "mean ± std over seeds"
    if max(counts) <= 1:
        return "one seed per bar, n = 1: no spread to show"
    low, high = min(counts), max(counts)
    seeds = f"{low}" if low == high else f"{low}–{high}"
    return f"mean ± std over {seeds} seeds" + ("; bars from one seed have no whisker" if low <= 1 else "")


def plot_base_new_bars(table_or_rows: Any, stem: str | Path, title: str | None = None) -> list[Path]:
    """Grouped bars (one panel each for Base, New, H): datasets (and Average) on x, one bar per method, ± std."""

    table = table_or_rows if isinstance(table_or_rows, Table) else base2new_table(table_or_rows)
    if not table.rows:
        raise RlptuneError("plot: no base-to-new results to draw")
    groups = list(dict.fromkeys(row.labels["Dataset"] for row in table.rows))
    methods = list(dict.fromkeys(row.labels["Method"] for row in table.rows))
    lookup = {(row.labels["Dataset"], row.labels["Method"]): row for row in table.rows}
    styles = method_styles(methods)
    width = min(0.8 / max(len(methods), 1), 0.3)
    fig = _figure(max(6.0, 0.5 + len(groups) * (0.35 + 0.22 * len(methods))), 8.0)
    axes = fig.subplots(3, 1, sharex=True)
    values = [c.value for row in table.rows for c in row.cells.values() if c is not None]
    low = max(0.0, math.floor((min(values) - 10.0) / 10.0) * 10.0) if values else 0.0
    x = np.arange(len(groups))
    for ax, metric in zip(axes, ("Base", "New", "H")):
        for j, method in enumerate(methods):
            heights, errs = [], []
            for g in groups:
                cell = lookup.get((g, method)).cells.get(metric) if (g, method) in lookup else None  # type: ignore[union-attr]
                heights.append(np.nan if cell is None else cell.value)
                errs.append(0.0 if cell is None or cell.std is None else cell.std)
            offset = (j - (len(methods) - 1) / 2.0) * width
            ax.bar(
                x + offset,
                heights,
                width,
                yerr=errs,
                capsize=2,
                color=styles[method].colour,
                label=method,
                hatch=styles[method].hatch,
                edgecolor="black",
                linewidth=0.4,
                error_kw={"elinewidth": 0.8},
            )
        ax.set_ylabel(f"{metric} accuracy (%)" if metric != "H" else "H (harmonic mean, %)")
        ax.set_ylim(low, min(100.0, max(values) + 5.0) if values else 100.0)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    group_width = fig.get_figwidth() / max(len(groups), 1)
    tick_labels = [_wrap(g, group_width * 0.9, 10.0) for g in groups]
    axes[-1].set_xticks(
        x, tick_labels, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center"
    )
    axes[-1].set_xlabel("Dataset")
    axes[0].legend(
        title="Method",
        ncols=_legend_columns(methods, fig.get_figwidth(), 4),
        loc="lower left",
        bbox_to_anchor=(0.0, 1.02),
        frameon=False,
    )
    if any(row.average for row in table.rows) and len(groups) > 1:
        for ax in axes:
            ax.axvline(len(groups) - 1.5, color="#999999", linewidth=0.8, linestyle=":")
    _suptitle(fig, title or f"Base-to-new generalisation per dataset\n({bars_spread_note(table)})")
    return _save(fig, stem)


def plot_few_shot_curves(
    curves: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    stem: str | Path,
    datasets: Sequence[str] | None = None,
    title: str | None = None,
) -> list[Path]:
    """One panel per dataset (Average first): accuracy vs shots (log₂ axis), mean with ± std whiskers and band.

    Methods with equal accuracies would hide each other's lines, so each method's points are nudged sideways by a
    small fraction of an octave and drawn with its own colour, marker and dash (:func:`method_styles`). A curve with
    only the 0-shot point (zero-shot CLIP, which does not depend on shots) is a horizontal line across the panel.
    The spread is whiskers at every point, so it shows even at a single shot count; when every point comes from one
    seed there is none, and the default title says so.
    """
    names = list(datasets) if datasets is not None else sorted(curves, key=lambda d: (d != "Average",))
    names = [d for d in names if d in curves]
    if not names:
        raise RlptuneError("plot: no few-shot results to draw")
    methods = list(dict.fromkeys(m for d in names for m in curves[d]))
    trained = [m for m in methods if any(s > 0 for d in names for s in (curves[d].get(m) or {}).get("shots", []))]
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    panel_width = 3.6
    width = max(panel_width * ncols + 0.4, 6.4)
    entries = [m if m in trained else f"{m} (0 shots)" for m in methods]
    legend_rows = math.ceil(len(entries) / _legend_columns(entries, width, 4))
    fig = _figure(width, 3.0 * nrows + 1.2 + 0.25 * max(0, legend_rows - 1))  # a long legend below adds height
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    styles = method_styles(methods)
    for ax, ds in zip(axes, names):
        shots_seen: set[int] = set()
        for method in methods:
            curve = curves[ds].get(method)
            if not curve or not curve.get("shots"):
                continue
            xs = np.asarray(curve["shots"], dtype=float)
            mean = np.asarray(curve["mean"], dtype=float)
            std = np.asarray([0.0 if s is None else s for s in curve.get("std", [0.0] * len(xs))], dtype=float)
            positive = xs > 0
            style = styles[method]
            if not positive.any():  # zero-shot: one number, independent of the shot count
                ax.axhline(
                    float(mean[0]), color=style.colour, linestyle=style.dash, linewidth=1.6, label=f"{method} (0 shots)"
                )
                continue
            xs, mean, std = xs[positive], mean[positive], std[positive]
            slot = trained.index(method) if method in trained else 0
            nudge = 2.0 ** ((slot - (len(trained) - 1) / 2.0) * 0.06)  # ± a few % of an octave
            ax.plot(
                xs * nudge,
                mean,
                marker=style.marker,
                color=style.colour,
                label=method,
                linewidth=1.5,
                linestyle=style.dash,
                markersize=5,
                markeredgecolor="black",
                markeredgewidth=0.4,
                zorder=3 + slot,
            )
            # the spread is drawn as whiskers at every point (a band alone is invisible at a single shot count)
            # and as a band between points
            if (std > 0).any():
                ax.errorbar(
                    xs * nudge,
                    mean,
                    yerr=std,
                    fmt="none",
                    ecolor=style.colour,
                    elinewidth=1.0,
                    capsize=3,
                    zorder=2 + slot,
                )
            if len(xs) > 1:
                ax.fill_between(xs * nudge, mean - std, mean + std, color=style.colour, alpha=0.15, linewidth=0)
            shots_seen.update(int(s) for s in xs)
        ax.set_title(_wrap(ds, panel_width, 10.0), fontsize=10)
        ax.set_xscale("log", base=2)
        ticks = sorted(shots_seen)
        if ticks:
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.set_xlim(ticks[0] / 1.35, ticks[-1] * 1.35)
        ax.minorticks_off()
        ax.set_xlabel("Shots per class")
        ax.set_ylabel("Accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes[: len(names)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(
        list(handles.values()),
        list(handles),
        title="Method",
        loc="outside lower center",
        ncols=_legend_columns(list(handles), fig.get_figwidth(), 4),
        frameon=False,
    )
    _suptitle(fig, title or f"Few-shot accuracy vs shots per class ({few_shot_spread_note(curves, names)})")
    return _save(fig, stem)


def few_shot_spread_note(
    curves: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]], datasets: Sequence[str] | None = None
) -> str:
    """What the whiskers of a few-shot figure are, from the seeds behind its trained points (the caption's words)."""
    counts = [
        int(n)
        for d in (datasets if datasets is not None else list(curves))
        for c in curves.get(d, {}).values()
        for s, n in zip(c.get("shots", []), c.get("n") or [])
        if s and s > 0 and n is not None
    ]
    if counts and max(counts) <= 1:
        return "one seed per point, n = 1: no spread to show"
    if counts and min(counts) <= 1:
        return "mean ± std over seeds; points from one seed have no whisker"
    return "mean ± std over seeds"


def plot_id_vs_accuracy(
    id_k: Sequence[float],
    accuracy: Sequence[float],
    stem: str | Path,
    labels: Sequence[str] | None = None,
    k: int = 1,
    xlabel: str | None = None,
    ylabel: str = "New-class accuracy (%)",
    title: str | None = None,
    markers_by: Sequence[str] | None = None,
) -> list[Path]:
    """Scatter of information density vs accuracy, one point per run.

    Colour = ``labels`` (the method), marker = ``markers_by`` (the dataset). Pooled over methods, a correlation
    mostly says which method, so each method gets its own least-squares line and Spearman ρ, p, n in the legend; the
    pooled ρ is in the title together with what it pools over.
    """

    n_points = len(id_k)
    if len(accuracy) != n_points or any(g is not None and len(g) != n_points for g in (labels, markers_by)):
        raise RlptuneError("plot: id_k, accuracy, labels and markers_by must have the same length")
    keep = [
        i
        for i in range(n_points)
        if id_k[i] is not None
        and accuracy[i] is not None
        and math.isfinite(float(id_k[i]))
        and math.isfinite(float(accuracy[i]))
    ]
    xs = np.asarray([float(id_k[i]) for i in keep])
    ys = np.asarray([float(accuracy[i]) for i in keep])
    groups = [str(labels[i]) for i in keep] if labels is not None else ["runs"] * len(keep)
    shapes = [str(markers_by[i]) for i in keep] if markers_by is not None else [""] * len(keep)
    shape_order = list(dict.fromkeys(shapes))
    legend_width = _legend_inches([f"{g}: ρ = -0.00, p = 0.00, n = {len(keep)}" for g in set(groups)] + shape_order)
    fig = _figure(max(8.5, 5.5 + legend_width), 5.0)
    ax = fig.subplots()

    def rho_text(sel: list[int]) -> str:
        corr = spearman(xs[sel].tolist(), ys[sel].tolist())
        if math.isnan(corr.rho):
            return f"ρ n/a, n = {corr.n}"
        return f"ρ = {corr.rho:.2f}, p = {corr.p:.2g}, n = {corr.n}"

    styles = method_styles(list(dict.fromkeys(groups)))
    for group in dict.fromkeys(groups):
        style = styles[group]
        sel = [i for i, g in enumerate(groups) if g == group]
        for shape in shape_order:
            part = [i for i in sel if shapes[i] == shape]
            if part:
                marker = _marker(shape_order.index(shape)) if markers_by is not None else style.marker
                ax.scatter(
                    xs[part],
                    ys[part],
                    color=style.colour,
                    marker=marker,
                    s=40,
                    edgecolor="black",
                    linewidth=0.4,
                    zorder=3,
                )
        label = f"{group}: {rho_text(sel)}"
        if len(set(xs[sel].tolist())) >= 2:
            slope, intercept = np.polyfit(xs[sel], ys[sel], 1)
            grid = np.linspace(xs[sel].min(), xs[sel].max(), 50)
            ax.plot(
                grid,
                slope * grid + intercept,
                color=style.colour,
                linestyle=style.dash,
                linewidth=1.2,
                zorder=2,
                label=label,
            )
        else:
            ax.plot([], [], color=style.colour, marker=style.marker, linestyle="none", label=label)
    from matplotlib.lines import Line2D

    legend = ax.legend(
        title="Method (trend line, Spearman within method)",
        frameon=False,
        fontsize="small",
        title_fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
    )
    if markers_by is not None:
        ax.add_artist(legend)
        legend.set_clip_on(False)  # add_artist clips to the axes, and a clipped legend is left out of the tight box
        shape_handles = [
            Line2D([], [], color="#444444", marker=_marker(i), linestyle="none", label=shape)
            for i, shape in enumerate(shape_order)
        ]
        ax.legend(
            handles=shape_handles,
            title="Dataset",
            frameon=False,
            fontsize="small",
            title_fontsize="small",
            loc="lower left",
            bbox_to_anchor=(1.01, 0.0),
        )
    pooled = rho_text(list(range(len(keep))))
    over = f"{len(set(groups))} method(s)" + (f" × {len(shape_order)} dataset(s)" if markers_by is not None else "")
    ax.set_title(
        _wrap(title or f"{_id_label(k)} vs accuracy — pooled over {over}: Spearman {pooled}", 5.5, 11.0), fontsize=11
    )
    ax.set_xlabel(xlabel or f"Information density {_id_label(k)} of the prompt")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _save(fig, stem)


def plot_singular_spectra(
    spectra: Mapping[str, Sequence[float]],
    stem: str | Path,
    normalize: bool = False,
    title: str | None = None,
    methods: Sequence[str] | None = None,
    markers_by: Sequence[str] | None = None,
) -> list[Path]:
    """Several prompts' singular values overlaid (index on x, σ on a log y axis); zeros are not drawn on the log axis.

    ``methods`` (one per spectrum, default: its name) gives each line its method's colour and dash
    (:func:`method_styles`); ``markers_by`` (e.g. the dataset) picks the marker, else the method's marker does.
    """
    if not spectra:
        raise RlptuneError("plot: no spectra to draw")
    names = list(spectra)
    if any(g is not None and len(g) != len(names) for g in (methods, markers_by)):
        raise RlptuneError("plot: spectra, methods and markers_by must have the same length")
    owners = [str(m) for m in methods] if methods is not None else names
    styles = method_styles(owners)
    shape_order = list(dict.fromkeys(markers_by)) if markers_by is not None else []
    fig = _figure(4.5 + _legend_inches(names), 4.5)
    ax = fig.subplots()
    drew = False
    for j, (name, values) in enumerate(spectra.items()):
        style = styles[owners[j]]
        marker = _marker(shape_order.index(markers_by[j])) if markers_by is not None else style.marker
        s = np.sort(np.asarray(values, dtype=float).reshape(-1))[::-1]
        if normalize and s.size and s[0] > 0:
            s = s / s[0]
        idx = np.arange(1, s.size + 1)
        positive = s > 0
        if positive.any():
            ax.plot(
                idx[positive],
                s[positive],
                marker=marker,
                color=style.colour,
                linestyle=style.dash,
                label=name,
                linewidth=1.4,
                markersize=4,
            )
            drew = True
    if drew:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Index i (singular values in descending order)")
    ax.set_ylabel("σ$_i$ / σ$_1$" if normalize else "Singular value σ$_i$")
    ax.set_title(
        _wrap(
            title
            or ("Normalised singular-value spectra of prompts" if normalize else "Singular-value spectra of prompts"),
            5.5,
        )
    )
    ax.grid(alpha=0.3)
    if drew:  # beside the axes, not over the lines (eight runs fill the plot area)
        ax.legend(frameon=False, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, stem)


def _series(records: Sequence[Mapping[str, Any]], *path: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of ``rec[path[0]][path[1]]...``; a "diagnostics" path reads the first prompt's diagnostics."""

    xs, ys = [], []
    for i, rec in enumerate(records):
        value: Any = rec
        for part in path:
            if part == "diagnostics" and value is rec:
                found = primary_diagnostics(rec.get("diagnostics"))
                value = found[1] if found is not None else None
                continue
            value = value.get(part) if isinstance(value, Mapping) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value)):
            xs.append(float(rec.get("epoch", i)))
            ys.append(float(value))
    return xs, ys


def plot_training_curves(
    records: Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Mapping[str, Any]]],
    stem: str | Path,
    title: str | None = None,
    methods: Sequence[str] | None = None,
    markers_by: Sequence[str] | None = None,
) -> list[Path]:
    """Loss, accuracy (train solid, val dashed) and ID_k (P solid, ΔP dashed) over epochs from metrics.jsonl records.

    ``records`` is one run's list of epoch records, or ``{run label: records}`` to overlay several runs. Panels with
    no data are left out. Several runs: colour = ``methods`` (one per run, default: the label; :func:`method_styles`),
    marker = ``markers_by`` (e.g. the dataset) or else the method's marker; the dash says which series.
    """
    runs = {"run": list(records)} if not isinstance(records, Mapping) else {str(k): list(v) for k, v in records.items()}
    if not any(runs.values()):
        raise RlptuneError("plot: no training records to draw")
    if any(g is not None and len(g) != len(runs) for g in (methods, markers_by)):
        raise RlptuneError("plot: records, methods and markers_by must have the same length")
    owners = [str(m) for m in methods] if methods is not None else list(runs)
    styles = method_styles(owners)
    shape_order = list(dict.fromkeys(markers_by)) if markers_by is not None else []
    run_colour = [styles[o].colour for o in owners]
    run_marker = [
        _marker(shape_order.index(markers_by[j])) if markers_by is not None else styles[o].marker
        for j, o in enumerate(owners)
    ]

    k = 1
    for recs in runs.values():
        for rec in recs:
            found = primary_diagnostics(rec.get("diagnostics"))
            if found is not None and found[1]["P"].get("k"):
                k = int(found[1]["P"]["k"])
                break
    panels = [
        ("Loss", "Training loss", [(("loss",), "-", "")]),
        (
            "Accuracy",
            "Accuracy (%)",
            [(("train_acc",), "-", "training (epoch mean)"), (("val_acc",), "--", "validation")],
        ),
        (
            _id_label(k),
            f"Information density {_id_label(k)}",
            [(("diagnostics", "P", "id_k"), "-", "P"), (("diagnostics", "delta", "id_k"), "--", "ΔP")],
        ),
    ]
    present = [p for p in panels if any(_series(recs, *path)[0] for recs in runs.values() for path, _, _ in p[2])]
    if not present:
        raise RlptuneError("plot: the training records have no loss, accuracy or diagnostics to draw")
    width = 4.0 * len(present) + 0.5
    legend_cols = _legend_columns(list(runs), width, 3)
    fig = _figure(width, 3.8 + (0.3 * math.ceil(len(runs) / legend_cols) + 0.5 if len(runs) > 1 else 0.0))
    axes = np.atleast_1d(fig.subplots(1, len(present), squeeze=False)).ravel()
    multi = len(runs) > 1
    from matplotlib.lines import Line2D

    for ax, (name, ylabel, series) in zip(axes, present):
        styles_used: dict[str, str] = {}
        for j, (run, recs) in enumerate(runs.items()):
            for path, style, suffix in series:
                xs, ys = _series(recs, *path)
                if not xs:
                    continue
                styles_used.setdefault(suffix, style)
                # several runs: colour = run (figure legend), line style = series (axis legend)
                label = None if multi else (suffix or name)
                ax.plot(xs, ys, linestyle=style, marker=run_marker[j], markersize=3, color=run_colour[j], label=label)
        ax.set_title(name)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if multi and len(styles_used) > 1:
            handles = [Line2D([], [], color="#444444", linestyle=st, label=sf) for sf, st in styles_used.items()]
            ax.legend(handles=handles, frameon=False, fontsize="small")
        elif not multi and len(ax.get_legend_handles_labels()[0]) > 1:
            ax.legend(frameon=False, fontsize="small")
    if multi:
        handles = [Line2D([], [], color=run_colour[j], marker=run_marker[j], label=run) for j, run in enumerate(runs)]
        fig.legend(handles=handles, title="Run", loc="outside lower center", ncols=legend_cols, frameon=False)
    _suptitle(fig, title or "Training curves (training: mean over each epoch's batches; validation: end of epoch)")
    return _save(fig, stem)
