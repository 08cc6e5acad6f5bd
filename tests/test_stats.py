"""kdutils.stats against independent computations of each definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from kdutils import stats

A = [86.1, 86.9, 85.7, 86.4, 87.0]
B = [85.2, 85.9, 85.0, 86.3]


def test_welch_p_matches_the_statistic_written_out():
    a, b = np.array(A), np.array(B)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    assert stats.welch_p(A, B, "greater") == pytest.approx(sps.t.sf(t, df), rel=1e-9)
    assert stats.welch_p(A, B, "less") == pytest.approx(sps.t.cdf(t, df), rel=1e-9)
    assert stats.welch_p(A, B) == pytest.approx(2 * sps.t.sf(abs(t), df), rel=1e-9)


def test_welch_p_edge_cases():
    assert math.isnan(stats.welch_p([1.0], [2.0, 3.0]))
    assert stats.welch_p([2.0, 2.0], [1.0, 1.0], "greater") == 0.0
    assert stats.welch_p([2.0, 2.0], [1.0, 1.0], "less") == 1.0
    assert stats.welch_p([1.0, 1.0], [1.0, 1.0]) == 1.0
    with pytest.raises(ValueError, match="alternative"):
        stats.welch_p(A, B, "bigger")
    with pytest.raises(ValueError, match="not finite"):
        stats.welch_p([1.0, math.nan], B)


def test_holm_by_hand():
    # Sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04
    # -> running max keeps 0.06 for the last.
    got = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert got == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Capped at 1; NaN stays NaN and is not counted in m.
    got = stats.holm([0.6, math.nan, 0.2])
    assert got[0] == pytest.approx(0.6) and got[2] == pytest.approx(0.4)
    assert math.isnan(got[1])
    assert stats.holm([0.7, 0.8]) == pytest.approx([1.0, 1.0])
    assert stats.holm([]) == []
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        stats.holm([1.5])


def test_holm_never_below_raw_and_one_test_is_unchanged():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=12)
    adj = np.array(stats.holm(p))
    assert np.all(adj >= p - 1e-15)
    assert stats.holm([0.013]) == [0.013]


def test_mean_diff_ci_matches_scipy():
    diff, lo, hi = stats.mean_diff_ci(A, B, 0.95)
    ci = sps.ttest_ind(A, B, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(np.mean(A) - np.mean(B))
    assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-9)
    _, lo90, hi90 = stats.mean_diff_ci(A, B, 0.90)
    assert lo < lo90 < hi90 < hi


def test_mean_diff_ci_edge_cases():
    d, lo, hi = stats.mean_diff_ci([2.0], [1.0, 1.5])
    assert d == pytest.approx(0.75) and math.isnan(lo) and math.isnan(hi)
    assert stats.mean_diff_ci([2.0, 2.0], [1.0, 1.0]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="level"):
        stats.mean_diff_ci(A, B, 95)


def test_hedges_g_by_hand():
    a, b = np.array(A), np.array(B)
    sp = math.sqrt((4 * a.var(ddof=1) + 3 * b.var(ddof=1)) / 7)
    j = 1 - 3 / (4 * 9 - 9)
    assert stats.hedges_g(A, B) == pytest.approx((a.mean() - b.mean()) / sp * j)
    assert math.isnan(stats.hedges_g([1.0], B))
    assert math.isnan(stats.hedges_g([1.0, 1.0], [1.0, 1.0]))


def test_power_agrees_with_simulation():
    rng = np.random.default_rng(1)
    n, delta, sd, sims = 5, 1.0, 1.0, 20000
    a = rng.normal(delta, sd, (sims, n))
    b = rng.normal(0.0, sd, (sims, n))
    p = sps.ttest_ind(a, b, axis=1, alternative="greater").pvalue
    assert stats.power(n, delta, sd) == pytest.approx((p < 0.05).mean(), abs=0.012)
    p2 = sps.ttest_ind(a, b, axis=1).pvalue
    assert stats.power(n, delta, sd, alternative="two-sided") == pytest.approx(
        (p2 < 0.05).mean(), abs=0.012
    )


def test_power_limits():
    # No gap: the test rejects at its level.
    assert stats.power(10, 0.0, 1.0) == pytest.approx(0.05, abs=1e-12)
    # Large n: the normal approximation.
    n, delta, sd = 4000, 0.1, 1.0
    z = delta / (sd * math.sqrt(2 / n)) - sps.norm.ppf(0.95)
    assert stats.power(n, delta, sd) == pytest.approx(sps.norm.cdf(z), abs=2e-3)
    assert stats.power(5, -1.0, 1.0, alternative="less") == pytest.approx(
        stats.power(5, 1.0, 1.0)
    )
    for bad in (dict(n=1), dict(sd=0.0), dict(alpha=1.0)):
        args = dict(n=5, delta=1.0, sd=1.0) | bad
        with pytest.raises(ValueError):
            stats.power(**args)


def test_seeds_needed_cohens_table_and_minimality():
    # Cohen's classic: d = 0.5, two-sided 5%, 80% power -> 64 a side.
    assert stats.seeds_needed(0.5, 1.0, alternative="two-sided") == 64
    for delta, sd in ((0.3, 0.4), (0.9, 0.4), (0.07, 0.4)):
        n = stats.seeds_needed(delta, sd)
        assert stats.power(n, delta, sd) >= 0.8
        assert n == 2 or stats.power(n - 1, delta, sd) < 0.8
    assert stats.seeds_needed(0.0, 1.0) is None
    assert stats.seeds_needed(-1.0, 1.0) is None
    assert stats.seeds_needed(5.0, 0.1) == 2
