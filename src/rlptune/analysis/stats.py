"""Seed statistics: mean ± std, paired method comparisons and rank correlation.

Prompt-tuning gains are often the size of seed noise, so every aggregated number carries its spread and count,
and a comparison between two methods is paired over (dataset, seed) — the same split and the same few-shot
sample — which removes most of that noise before testing.

Conventions:

* std is the sample standard deviation (ddof = 1). With one value ``MeanStd.std`` is 0.0 so arithmetic stays
  numeric, but it is printed as "–" (``MeanStd.format``), and table cells store None (empty in CSV, null in JSON):
  one seed shows no spread, which is not a spread of zero.
* Paired difference d_j = a_j − b_j for each key present in both; mean d̄, sample std s_d, and the 95% t interval
  d̄ ± t_{0.975, n−1} · s_d / √n. Two-sided Wilcoxon signed-rank test on d (scipy, zero differences dropped,
  exact distribution for small n). With n < 2 the interval and p are undefined (NaN in Python, null in JSON);
  when every difference is 0 the interval is [0, 0] and p = 1. Note that Wilcoxon cannot reach p < 0.05 with
  fewer than 6 non-zero pairs: pair over datasets *and* seeds.
* Spearman's ρ with its two-sided p (scipy); pairs with a NaN/None are dropped first. With n < 3 points or a
  constant input, ρ and p are undefined (NaN / null).
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from rlptune.errors import RlptuneError

__all__ = [
    "MeanStd",
    "PairedComparison",
    "SpearmanResult",
    "jsonable",
    "mean_or_none",
    "mean_std",
    "paired_comparison",
    "row_metric",
    "spearman",
    "std_or_none",
    "wilson_interval",
]


def jsonable(value: Any) -> Any:
    """Replace NaN/inf by None (JSON has no NaN) and numpy scalars by Python ones, recursively."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    return value


@dataclass
class MeanStd:
    """Mean, sample std (ddof=1; 0.0 when n=1) and count of a set of per-seed values."""

    mean: float
    std: float
    n: int
    values: list[float] = field(default_factory=list)

    def format(self, decimals: int = 2) -> str:
        """``"76.47 ± 0.52"``, the literature's cell format; ``"76.47 ± –"`` for one value (no spread observed)."""
        if self.n < 2:
            return f"{self.mean:.{decimals}f} ± –"
        return f"{self.mean:.{decimals}f} ± {self.std:.{decimals}f}"

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def mean_std(values: Iterable[float | None]) -> MeanStd:
    """Mean ± sample std over seeds; None entries (a metric a run did not report) are skipped."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        raise RlptuneError("mean_std: no values to aggregate")
    arr = np.asarray(kept, dtype=np.float64)
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return MeanStd(mean=float(arr.mean()), std=std, n=int(arr.size), values=kept)


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the values present (None entries skipped), None when there are none: a report cell that may be
    empty, where :func:`mean_std` aggregates seeds that must exist."""
    kept = [float(v) for v in values if v is not None]
    return statistics.fmean(kept) if kept else None


def std_or_none(values: Iterable[float | None]) -> float | None:
    """Sample std (ddof = 1) of the values present; None below two values (one value shows no spread)."""
    kept = [float(v) for v in values if v is not None]
    return statistics.stdev(kept) if len(kept) > 1 else None


def row_metric(row: Mapping[str, Any], metric: str) -> float | None:
    """A row's value of ``metric`` (H computed from base and new when the row has no "h"); None when absent."""
    value = row.get(metric)
    if value is None and metric == "h" and row.get("base") is not None and row.get("new") is not None:
        value = harmonic_mean(float(row["base"]), float(row["new"]))
    return None if value is None else float(value)


@dataclass
class PairedComparison:
    """Paired difference a − b of one metric over matching keys, with a t interval and a Wilcoxon test."""

    metric: str
    key: list[str]
    n: int
    mean_diff: float
    std_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    test: str
    mean_a: float
    mean_b: float
    unmatched_a: int
    unmatched_b: int
    pairs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def _keyed(rows: Sequence[Mapping[str, Any]], key: tuple[str, ...], metric: str, side: str) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for row in rows:
        missing = [name for name in key if name not in row]
        if missing:
            raise RlptuneError(f"paired comparison: a row of {side} has no {missing[0]!r} field (key {list(key)})")
        value = row_metric(row, metric)
        if value is None:
            continue
        k = tuple(row[name] for name in key)
        if k in out:
            raise RlptuneError(
                f"paired comparison: two rows of {side} for {dict(zip(key, k))}; filter the rows or add a key field"
            )
        out[k] = value
    return out


def paired_comparison(
    a_rows: Sequence[Mapping[str, Any]],
    b_rows: Sequence[Mapping[str, Any]],
    key: Sequence[str] = ("dataset", "seed"),
    metric: str = "h",
    confidence: float = 0.95,
) -> PairedComparison:
    """Is method a better than method b beyond seed noise? Pairs rows by ``key`` and tests the differences a − b.

    Rows missing the metric are skipped; keys present on one side only are counted in ``unmatched_a/_b``.
    """
    if not 0.0 < confidence < 1.0:
        raise RlptuneError(f"paired comparison: confidence must be in (0, 1), got {confidence}")
    key = tuple(key)
    a = _keyed(a_rows, key, metric, "a")
    b = _keyed(b_rows, key, metric, "b")
    common = [k for k in a if k in b]
    try:
        common.sort()
    except TypeError:
        common.sort(key=repr)
    diffs = np.asarray([a[k] - b[k] for k in common], dtype=np.float64)
    n = int(diffs.size)
    nan = float("nan")
    mean_diff = float(diffs.mean()) if n else nan
    std_diff = float(diffs.std(ddof=1)) if n > 1 else (0.0 if n == 1 else nan)
    ci_low = ci_high = p_value = nan
    if n >= 2:
        from scipy import stats as sps

        if np.all(diffs == 0.0):
            ci_low = ci_high = 0.0
            p_value = 1.0
        else:
            half = float(sps.t.ppf(0.5 + confidence / 2.0, n - 1)) * std_diff / math.sqrt(n)
            ci_low, ci_high = mean_diff - half, mean_diff + half
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                p_value = float(sps.wilcoxon(diffs).pvalue)
    return PairedComparison(
        metric=metric,
        key=list(key),
        n=n,
        mean_diff=mean_diff,
        std_diff=std_diff,
        ci_low=ci_low,
        ci_high=ci_high,
        confidence=float(confidence),
        p_value=p_value,
        test="wilcoxon signed-rank (two-sided)",
        mean_a=float(np.mean([a[k] for k in common])) if n else nan,
        mean_b=float(np.mean([b[k] for k in common])) if n else nan,
        unmatched_a=len([k for k in a if k not in b]),
        unmatched_b=len([k for k in b if k not in a]),
        pairs=[{**dict(zip(key, k)), "a": a[k], "b": b[k], "diff": a[k] - b[k]} for k in common],
    )


@dataclass
class SpearmanResult:
    """Spearman rank correlation ρ, its two-sided p-value and the number of points used."""

    rho: float
    p: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return jsonable(asdict(self))


def spearman(x: Sequence[float | None], y: Sequence[float | None]) -> SpearmanResult:
    """Monotone association between two measurements (e.g. ID_k and new-class accuracy) across runs."""
    if len(x) != len(y):
        raise RlptuneError(f"spearman: x and y differ in length ({len(x)} vs {len(y)})")
    pairs = [
        (float(a), float(b))
        for a, b in zip(x, y)
        if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))
    ]
    n = len(pairs)
    nan = float("nan")
    if n < 3:
        return SpearmanResult(rho=nan, p=nan, n=n)
    xs, ys = np.asarray(pairs).T
    if np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return SpearmanResult(rho=nan, p=nan, n=n)
    from scipy import stats as sps

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = sps.spearmanr(xs, ys)
    return SpearmanResult(rho=float(result.statistic), p=float(result.pvalue), n=n)


def harmonic_mean(b: float, n: float) -> float:
    """H = 2·b·n / (b + n), the base/new trade-off of CoCoOp; 0 when both are 0."""
    b, n = float(b), float(n)
    return 0.0 if b + n == 0.0 else 2.0 * b * n / (b + n)


#: The two-sided 95% normal quantile, z_{0.975}.
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (as fractions in [0, 1]): 95% by default.

    Why Wilson and not p ± z·√(p(1−p)/n): on the small test splits of one's own folder (30 images) the normal
    interval collapses to a point at 0% or 100% and can leave [0, 1]; Wilson's stays inside and keeps its coverage.
    With ``n = 0`` nothing is known: (0, 1).
    """
    if n < 0 or successes < 0 or successes > n:
        raise RlptuneError(f"wilson_interval: expected 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends: rounding must not exclude p itself
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high
