"""Seed statistics against hand-computed values and scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as sps

from rlptune.analysis.stats import mean_std, paired_comparison, spearman
from rlptune.errors import RlptuneError


def test_mean_std_sample_std() -> None:
    r = mean_std([1.0, 2.0, 3.0, 4.0])
    assert (r.mean, r.n) == (2.5, 4)
    assert r.std == pytest.approx(math.sqrt(5.0 / 3.0))  # ddof = 1
    assert r.format() == "2.50 ± 1.29"
    one = mean_std([70.0, None])
    assert (one.mean, one.std, one.n) == (70.0, 0.0, 1)
    assert one.format() == "70.00 ± –"  # one seed: no spread observed, not a spread of 0.00
    with pytest.raises(RlptuneError):
        mean_std([])


def _rows(values: list[float], metric: str = "h") -> list[dict]:
    return [{"dataset": "dtd", "seed": i + 1, metric: v} for i, v in enumerate(values)]


def test_paired_comparison_hand_computed() -> None:
    a, b = _rows([71.0, 72.0, 73.0]), _rows([70.0, 70.0, 70.0])  # differences 1, 2, 3
    r = paired_comparison(a, b)
    assert (r.n, r.mean_diff, r.std_diff) == (3, 2.0, 1.0)
    half = 4.302652729911275 / math.sqrt(3)  # t_{0.975, 2}
    assert (r.ci_low, r.ci_high) == pytest.approx((2.0 - half, 2.0 + half))
    assert r.p_value == pytest.approx(0.25)  # exact Wilcoxon, n = 3, all positive: 2 / 2**3
    assert r.p_value == pytest.approx(sps.wilcoxon([1.0, 2.0, 3.0]).pvalue)
    assert (r.mean_a, r.mean_b) == (72.0, 70.0)
    assert [p["diff"] for p in r.pairs] == [1.0, 2.0, 3.0]


def test_paired_comparison_matches_scipy_on_mixed_signs() -> None:
    diffs = [0.5, -1.2, 2.0, 3.1, 0.7, 1.9, -0.3]
    r = paired_comparison(_rows([70 + d for d in diffs]), _rows([70.0] * 7))
    lo, hi = sps.t.interval(0.95, 6, loc=sum(diffs) / 7, scale=sps.sem(diffs))
    assert (r.ci_low, r.ci_high) == pytest.approx((lo, hi), abs=1e-9)
    assert r.p_value == pytest.approx(sps.wilcoxon(diffs).pvalue)


def test_paired_comparison_degenerate_cases() -> None:
    zero = paired_comparison(_rows([70.0, 71.0]), _rows([70.0, 71.0]))
    assert (zero.mean_diff, zero.ci_low, zero.ci_high, zero.p_value) == (0.0, 0.0, 0.0, 1.0)
    single = paired_comparison(_rows([71.0]), _rows([70.0]))
    assert single.n == 1 and single.mean_diff == 1.0
    d = single.to_dict()
    assert d["ci_low"] is None and d["p_value"] is None  # JSON has no NaN
    none = paired_comparison(_rows([71.0]), [{"dataset": "eurosat", "seed": 1, "h": 1.0}])
    assert none.n == 0 and none.unmatched_a == 1 and none.unmatched_b == 1


def test_paired_comparison_h_from_base_new_and_duplicates() -> None:
    a = [
        {"dataset": "dtd", "seed": 1, "base": 80.0, "new": 60.0},
        {"dataset": "dtd", "seed": 2, "base": 80.0, "new": 60.0},
    ]
    b = _rows([68.0, 68.0])
    r = paired_comparison(a, b, metric="h")
    assert r.mean_diff == pytest.approx(2 * 80 * 60 / 140 - 68.0)
    with pytest.raises(RlptuneError, match="two rows"):
        paired_comparison(a + a, b)
    with pytest.raises(RlptuneError, match="'seed'"):
        paired_comparison([{"dataset": "dtd", "h": 1.0}], b)


def test_spearman_hand_computed_and_edges() -> None:
    x, y = [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]
    r = spearman(x, y)
    assert r.rho == pytest.approx(1 - 6 * 4 / (5 * (25 - 1)))  # Σd² = 4 → ρ = 0.8
    assert r.p == pytest.approx(sps.spearmanr(x, y).pvalue)
    assert r.n == 5
    assert spearman([1, 2, None, 4], [1, 2, 3, float("nan")]).n == 2
    short = spearman([1, 2], [2, 1])
    assert math.isnan(short.rho) and math.isnan(short.p) and short.to_dict()["rho"] is None
    assert math.isnan(spearman([1, 2, 3], [5, 5, 5]).rho)
    with pytest.raises(RlptuneError):
        spearman([1, 2], [1])
