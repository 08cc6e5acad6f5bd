"""The statistics the book reads its comparisons with: tests over seeds, the
correction for testing many methods at once, effect sizes, and power.

Every comparison in the book is between two small samples of accuracies, one
per seed. The functions here are the ones chapter 13 and ``reproduce`` use:

- :func:`welch_p`: Welch's t-test (unequal variances), one- or two-sided;
- :func:`holm`: Holm's step-down adjustment of p-values, for a conclusion that
  tests many methods at once (it controls the chance of any false "better"
  at ``alpha``, with no assumption about how the tests depend on each other);
- :func:`mean_diff_ci`: the difference of means with its Welch confidence
  interval, and :func:`hedges_g`, the difference in units of the pooled
  standard deviation, corrected for small samples;
- :func:`power` and :func:`seeds_needed`: how likely a two-sample t-test with
  ``n`` seeds a side detects a true gap ``delta`` at seed-to-seed standard
  deviation ``sd``, and the fewest seeds that reach a target power.

It imports nothing of kdutils (SciPy is imported where it is used, so that
``import kdutils`` stays fast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "welch_p",
    "holm",
    "mean_diff_ci",
    "hedges_g",
    "power",
    "seeds_needed",
]

ALTERNATIVES = ("two-sided", "greater", "less")


def _sample(x: Sequence[float], name: str) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds a value that is not finite: {list(a)}")
    return a


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(
            f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}"
        )


def welch_p(
    a: Sequence[float], b: Sequence[float], alternative: str = "two-sided"
) -> float:
    """Welch's t-test p-value for mean(a) vs mean(b) (``greater``: a > b).

    NaN when a side has fewer than two values. When both sides have no spread
    at all the t statistic is undefined; the p-value is then 0 if the means
    differ in the tested direction and 1 otherwise.
    """
    _check_alternative(alternative)
    a, b = _sample(a, "a"), _sample(b, "b")
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        d = a.mean() - b.mean()
        hit = {"two-sided": d != 0, "greater": d > 0, "less": d < 0}[alternative]
        return 0.0 if hit else 1.0
    from scipy import stats

    return float(stats.ttest_ind(a, b, equal_var=False, alternative=alternative).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's adjusted p-values, in the order given.

    Sorted ascending, the i-th smallest (from 0) is multiplied by ``m - i``,
    the running maximum is taken so the adjusted values keep the order, and
    each is capped at 1. A hypothesis is rejected at ``alpha`` when its
    adjusted p-value is below ``alpha``. NaN entries (untestable comparisons)
    stay NaN and do not count in ``m``.
    """
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if len(idx) == 0:
        return out.tolist()
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {list(p)}")
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    running = 0.0
    for i, j in enumerate(order):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out.tolist()


def mean_diff_ci(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> tuple[float, float, float]:
    """``(mean(a) - mean(b), low, high)``: the two-sided Welch confidence
    interval at ``level`` (Welch-Satterthwaite degrees of freedom). The
    interval is NaN when a side has fewer than two values; it is the point
    itself when neither side has any spread."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    a, b = _sample(a, "a"), _sample(b, "b")
    if len(a) == 0 or len(b) == 0:
        raise ValueError("each side needs at least one value")
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    from scipy import stats

    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    return diff, diff - half, diff + half


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Hedges' g: (mean(a) - mean(b)) / pooled standard deviation, times the
    small-sample correction 1 - 3 / (4 (n_a + n_b) - 9). NaN with fewer than
    two values a side or no spread at all."""
    a, b = _sample(a, "a"), _sample(b, "b")
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return math.nan
    pooled = math.sqrt(
        ((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2)
    )
    if pooled == 0:
        return math.nan
    return float((a.mean() - b.mean()) / pooled * (1 - 3 / (4 * (na + nb) - 9)))


def power(
    n: int,
    delta: float,
    sd: float,
    alpha: float = 0.05,
    alternative: str = "greater",
) -> float:
    """The power of a two-sample t-test (equal variances) with ``n`` values a
    side to detect a true difference ``delta`` when each value has standard
    deviation ``sd``: the probability that the test rejects at ``alpha``.

    Exact, from the noncentral t distribution with 2n - 2 degrees of freedom
    and noncentrality ``delta / (sd * sqrt(2 / n))``. ``greater`` is the
    one-sided test in the direction of ``delta``.
    """
    _check_alternative(alternative)
    if n < 2:
        raise ValueError(f"n must be at least 2 a side, got {n}")
    if not sd > 0 or not math.isfinite(sd):
        raise ValueError(f"sd must be a positive number, got {sd}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    from scipy import stats

    df = 2 * n - 2
    ncp = delta / (sd * math.sqrt(2 / n))
    if alternative == "two-sided":
        crit = stats.t.ppf(1 - alpha / 2, df)
        return float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
    if alternative == "less":
        ncp = -ncp
    crit = stats.t.ppf(1 - alpha, df)
    return float(stats.nct.sf(crit, df, ncp))


def seeds_needed(
    delta: float,
    sd: float,
    target: float = 0.8,
    alpha: float = 0.05,
    alternative: str = "greater",
    limit: int = 1_000_000,
) -> int | None:
    """The fewest seeds a side for :func:`power` to reach ``target``, or None
    when even ``limit`` seeds do not (e.g. ``delta`` of zero or of the wrong
    sign for a one-sided test). Power grows with ``n``, so this bisects."""
    if not 0 < target < 1:
        raise ValueError(f"target power must lie in (0, 1), got {target}")
    if power(limit, delta, sd, alpha, alternative) < target:
        return None
    lo, hi = 2, 2
    while power(hi, delta, sd, alpha, alternative) < target:
        lo, hi = hi, min(limit, hi * 2)
    if power(lo, delta, sd, alpha, alternative) >= target:
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if power(mid, delta, sd, alpha, alternative) >= target:
            hi = mid
        else:
            lo = mid
    return hi
