"""Figures researchers ask for: Base/New/H bars, few-shot curves, ID_k vs new-class accuracy, spectra, training curves.

Every function takes data plus an output path *stem* and writes ``<stem>.png`` (150 dpi) and ``<stem>.svg``
atomically, returning both paths. Figures are drawn on a bare :class:`matplotlib.figure.Figure` with the Agg canvas,
so no GUI backend, global pyplot state or display is involved (safe in training processes and on servers).
Colours are the Okabe–Ito palette (distinguishable with the common colour-vision deficiencies), and lines also
differ by marker so a grey-scale print still reads.
"""

from __future__ import annotations

import textwrap

import io
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from rlptune.errors import RlptuneError
from rlptune.analysis.spectrum import primary_diagnostics
from rlptune.analysis.stats import spearman
from rlptune.report.tables import Table, base2new_table
from rlptune.io import write_bytes

__all__ = [
    "OKABE_ITO",
    "plot_base_new_bars",
    "plot_few_shot_curves",
    "plot_id_vs_accuracy",
    "plot_singular_spectra",
    "plot_training_curves",
]

# Okabe & Ito (2008), ordered so the first colours are the most distinct on white; yellow last (low contrast).
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#000000", "#F0E442"]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def _colour(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def _marker(i: int) -> str:
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
        for ext, kwargs in (("png", {"dpi": 150, "metadata": {"Software": None}}), ("svg", {"metadata": {"Date": None}})):
            buffer = io.BytesIO()
            # tight bounding box: titles, outside legends and long tick labels are never cut at the canvas edge
            fig.savefig(buffer, format=ext, facecolor="white", bbox_inches="tight", pad_inches=0.12, **kwargs)
            paths.append(write_bytes(stem.with_name(f"{stem.name}.{ext}"), buffer.getvalue()))
    return paths


def _wrap(text: str, width_inches: float, fontsize: float = 12.0) -> str:
    """Break a title into lines that fit ``width_inches`` (about 0.55 em per character), so none is cut off."""

    chars = max(16, int(width_inches * 72.0 / (0.55 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) for line in text.split("\n"))


def _suptitle(fig: Any, text: str) -> None:
    fig.suptitle(_wrap(text, fig.get_figwidth()))


def _id_label(k: int) -> str:
    return f"ID$_{{{k}}}$"


# ----------------------------------------------------------------------------------------------------------------


def plot_base_new_bars(table_or_rows: Any, stem: str | Path, title: str | None = None) -> list[Path]:
    """Grouped bars (one panel each for Base, New, H): datasets (and Average) on x, one bar per method, ± std."""

    table = table_or_rows if isinstance(table_or_rows, Table) else base2new_table(table_or_rows)
    if not table.rows:
        raise RlptuneError("plot: no base-to-new results to draw")
    groups = list(dict.fromkeys(row.labels["Dataset"] for row in table.rows))
    methods = list(dict.fromkeys(row.labels["Method"] for row in table.rows))
    lookup = {(row.labels["Dataset"], row.labels["Method"]): row for row in table.rows}
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
            ax.bar(x + offset, heights, width, yerr=errs, capsize=2, color=_colour(j), label=method,
                   edgecolor="black", linewidth=0.4, error_kw={"elinewidth": 0.8})
        ax.set_ylabel(f"{metric} accuracy (%)" if metric != "H" else "H (harmonic mean, %)")
        ax.set_ylim(low, min(100.0, max(values) + 5.0) if values else 100.0)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    group_width = fig.get_figwidth() / max(len(groups), 1)
    tick_labels = [_wrap(g, group_width * 0.9, 10.0) for g in groups]
    axes[-1].set_xticks(x, tick_labels, rotation=30 if len(groups) > 4 else 0, ha="right" if len(groups) > 4 else "center")
    axes[-1].set_xlabel("Dataset")
    axes[0].legend(title="Method", ncols=min(len(methods), 4), loc="lower left", bbox_to_anchor=(0.0, 1.02), frameon=False)
    if any(row.average for row in table.rows) and len(groups) > 1:
        for ax in axes:
            ax.axvline(len(groups) - 1.5, color="#999999", linewidth=0.8, linestyle=":")
    _suptitle(fig, title or "Base-to-new generalisation per dataset\n(bars: mean over seeds; whiskers: ± std)")
    return _save(fig, stem)


def plot_few_shot_curves(
    curves: Mapping[str, Mapping[str, Mapping[str, Sequence[Any]]]],
    stem: str | Path,
    datasets: Sequence[str] | None = None,
    title: str | None = None,
) -> list[Path]:
    """One panel per dataset (Average first): accuracy vs shots (log₂ axis), mean line with a ± std band per method.

    Methods with equal accuracies would hide each other's lines, so each method's points are nudged sideways by a
    small fraction of an octave and drawn with its own marker and dash pattern. A curve with only the 0-shot point
    (zero-shot CLIP, which does not depend on shots) is a grey dotted horizontal line across the panel.
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
    fig = _figure(max(panel_width * ncols + 0.4, 6.4), 3.0 * nrows + 1.2)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    dashes = ["-", "--", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (3, 1))]
    for ax, ds in zip(axes, names):
        shots_seen: set[int] = set()
        for j, method in enumerate(methods):
            curve = curves[ds].get(method)
            if not curve or not curve.get("shots"):
                continue
            xs = np.asarray(curve["shots"], dtype=float)
            mean = np.asarray(curve["mean"], dtype=float)
            std = np.asarray([0.0 if s is None else s for s in curve.get("std", [0.0] * len(xs))], dtype=float)
            positive = xs > 0
            if not positive.any():  # zero-shot: one number, independent of the shot count
                ax.axhline(float(mean[0]), color="#666666", linestyle=":", linewidth=1.6, label=f"{method} (0 shots)")
                continue
            xs, mean, std = xs[positive], mean[positive], std[positive]
            slot = trained.index(method) if method in trained else 0
            nudge = 2.0 ** ((slot - (len(trained) - 1) / 2.0) * 0.06)  # ± a few % of an octave
            ax.plot(xs * nudge, mean, marker=_marker(j), color=_colour(j), label=method, linewidth=1.5,
                    linestyle=dashes[slot % len(dashes)], markersize=5, markeredgecolor="black", markeredgewidth=0.4,
                    zorder=3 + slot)
            ax.fill_between(xs * nudge, mean - std, mean + std, color=_colour(j), alpha=0.15, linewidth=0)
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
    for ax in axes[len(names):]:
        ax.set_visible(False)
    handles: dict[str, Any] = {}
    for ax in axes[: len(names)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    fig.legend(list(handles.values()), list(handles), title="Method", loc="outside lower center",
               ncols=min(len(handles), 4), frameon=False)
    _suptitle(fig, title or "Few-shot accuracy vs shots per class (mean ± std over seeds)")
    return _save(fig, stem)


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
    keep = [i for i in range(n_points) if id_k[i] is not None and accuracy[i] is not None
            and math.isfinite(float(id_k[i])) and math.isfinite(float(accuracy[i]))]
    xs = np.asarray([float(id_k[i]) for i in keep])
    ys = np.asarray([float(accuracy[i]) for i in keep])
    groups = [str(labels[i]) for i in keep] if labels is not None else ["runs"] * len(keep)
    shapes = [str(markers_by[i]) for i in keep] if markers_by is not None else [""] * len(keep)
    shape_order = list(dict.fromkeys(shapes))
    fig = _figure(8.5, 5.0)
    ax = fig.subplots()

    def rho_text(sel: list[int]) -> str:
        corr = spearman(xs[sel].tolist(), ys[sel].tolist())
        if math.isnan(corr.rho):
            return f"ρ n/a, n = {corr.n}"
        return f"ρ = {corr.rho:.2f}, p = {corr.p:.2g}, n = {corr.n}"

    for j, group in enumerate(dict.fromkeys(groups)):
        sel = [i for i, g in enumerate(groups) if g == group]
        for shape in shape_order:
            part = [i for i in sel if shapes[i] == shape]
            if part:
                ax.scatter(xs[part], ys[part], color=_colour(j), marker=_marker(shape_order.index(shape)), s=40,
                           edgecolor="black", linewidth=0.4, zorder=3)
        label = f"{group}: {rho_text(sel)}"
        if len(set(xs[sel].tolist())) >= 2:
            slope, intercept = np.polyfit(xs[sel], ys[sel], 1)
            grid = np.linspace(xs[sel].min(), xs[sel].max(), 50)
            ax.plot(grid, slope * grid + intercept, color=_colour(j), linestyle="--", linewidth=1.2, zorder=2, label=label)
        else:
            ax.plot([], [], color=_colour(j), marker="o", linestyle="none", label=label)
    from matplotlib.lines import Line2D

    legend = ax.legend(title="Method (trend line, Spearman within method)", frameon=False, fontsize="small",
                       title_fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if markers_by is not None:
        ax.add_artist(legend)
        shape_handles = [Line2D([], [], color="#444444", marker=_marker(i), linestyle="none", label=shape)
                         for i, shape in enumerate(shape_order)]
        ax.legend(handles=shape_handles, title="Dataset", frameon=False, fontsize="small", title_fontsize="small",
                  loc="lower left", bbox_to_anchor=(1.01, 0.0))
    pooled = rho_text(list(range(len(keep))))
    over = f"{len(set(groups))} method(s)" + (f" × {len(shape_order)} dataset(s)" if markers_by is not None else "")
    ax.set_title(_wrap(title or f"{_id_label(k)} vs accuracy — pooled over {over}: Spearman {pooled}", 5.5, 11.0),
                 fontsize=11)
    ax.set_xlabel(xlabel or f"Information density {_id_label(k)} of the prompt")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _save(fig, stem)


def plot_singular_spectra(
    spectra: Mapping[str, Sequence[float]],
    stem: str | Path,
    normalize: bool = False,
    title: str | None = None,
) -> list[Path]:
    """Several prompts' singular values overlaid (index on x, σ on a log y axis); zeros are not drawn on the log axis."""
    if not spectra:
        raise RlptuneError("plot: no spectra to draw")
    fig = _figure(6.0, 4.5)
    ax = fig.subplots()
    drew = False
    for j, (name, values) in enumerate(spectra.items()):
        s = np.sort(np.asarray(values, dtype=float).reshape(-1))[::-1]
        if normalize and s.size and s[0] > 0:
            s = s / s[0]
        idx = np.arange(1, s.size + 1)
        positive = s > 0
        if positive.any():
            ax.plot(idx[positive], s[positive], marker=_marker(j), color=_colour(j), label=name, linewidth=1.4, markersize=4)
            drew = True
    if drew:
        ax.set_yscale("log")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Index i (singular values in descending order)")
    ax.set_ylabel("σ$_i$ / σ$_1$" if normalize else "Singular value σ$_i$")
    ax.set_title(_wrap(title or ("Normalised singular-value spectra of prompts" if normalize else "Singular-value spectra of prompts"), 5.5))
    ax.grid(alpha=0.3)
    if drew:
        ax.legend(frameon=False, fontsize="small")
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
) -> list[Path]:
    """Loss, accuracy (train solid, val dashed) and ID_k (P solid, ΔP dashed) over epochs from metrics.jsonl records.

    ``records`` is one run's list of epoch records, or ``{run label: records}`` to overlay several runs. Panels with
    no data are left out.
    """
    runs = {"run": list(records)} if not isinstance(records, Mapping) else {str(k): list(v) for k, v in records.items()}
    if not any(runs.values()):
        raise RlptuneError("plot: no training records to draw")

    k = 1
    for recs in runs.values():
        for rec in recs:
            found = primary_diagnostics(rec.get("diagnostics"))
            if found is not None and found[1]["P"].get("k"):
                k = int(found[1]["P"]["k"])
                break
    panels = [
        ("Loss", "Training loss", [(("loss",), "-", "")]),
        ("Accuracy", "Accuracy (%)", [(("train_acc",), "-", "training (epoch mean)"), (("val_acc",), "--", "validation")]),
        (_id_label(k), f"Information density {_id_label(k)}",
         [(("diagnostics", "P", "id_k"), "-", "P"), (("diagnostics", "delta", "id_k"), "--", "ΔP")]),
    ]
    present = [p for p in panels if any(_series(recs, *path)[0] for recs in runs.values() for path, _, _ in p[2])]
    if not present:
        raise RlptuneError("plot: the training records have no loss, accuracy or diagnostics to draw")
    width = 4.0 * len(present) + 0.5
    longest = max(len(run) for run in runs)  # legend columns that fit the width (about 0.6 em per character)
    legend_cols = max(1, min(len(runs), 3, int(width * 72.0 / (0.6 * 10.0 * (longest + 6)))))
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
                ax.plot(xs, ys, linestyle=style, marker=_marker(j), markersize=3, color=_colour(j), label=label)
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
        handles = [Line2D([], [], color=_colour(j), marker=_marker(j), label=run) for j, run in enumerate(runs)]
        fig.legend(handles=handles, title="Run", loc="outside lower center", ncols=legend_cols, frameon=False)
    _suptitle(fig, title or "Training curves (training: mean over each epoch's batches; validation: end of epoch)")
    return _save(fig, stem)
