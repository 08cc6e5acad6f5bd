"""A unified score of task performance and compression (the survey's §6, open problem 3).

The survey observes that distillation papers report accuracy and compression
separately, so a method that loses a little accuracy for a much smaller model
cannot be compared with one that gains a little at no saving. The score here
puts both on one scale, in accuracy points:

    U(m) = (A(m) - A(ref)) + lam * sum_k w_k * log2(C_k(ref) / C_k(m))

with A the top-1 accuracy in percent, C_k the costs (parameters, MACs,
measured latency), w_k their weights (summing to 1; equal by default) and
``ref`` the uncompressed reference (the teacher). ``lam`` is an exchange rate
the user states: how many accuracy points one halving of the (weighted
geometric mean) cost is worth. The reference scores 0; a model as accurate
at half of every cost scores +lam; a model of the same cost one point less
accurate scores -1. Because the rate is a choice, :func:`rank_agreement`
reports how much a ranking depends on it.

:func:`book_runs` gathers every finished run in the cache that the current
code would load (its key is the current key for its config), so a ranking
covers exactly the runs the book shows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .distillers import METHODS
from .results import Result
from .runs import cache_dir, run_dir

__all__ = [
    "COSTS",
    "unified_score",
    "score_table",
    "rank_agreement",
    "book_runs",
    "mean_by",
]

COSTS = ("params", "macs", "latency_ms")


def _weights(weights: Mapping[str, float] | None) -> dict[str, float]:
    w = dict.fromkeys(COSTS, 1 / len(COSTS)) if weights is None else dict(weights)
    unknown = [k for k in w if k not in COSTS]
    if unknown:
        raise ValueError(f"unknown cost {unknown[0]!r}; costs are {', '.join(COSTS)}")
    if any(v < 0 for v in w.values()) or not math.isclose(sum(w.values()), 1.0):
        raise ValueError(f"cost weights must be >= 0 and sum to 1, got {w}")
    return w


def unified_score(
    acc: float,
    cost: Mapping[str, float],
    ref_acc: float,
    ref_cost: Mapping[str, float],
    lam: float = 1.0,
    weights: Mapping[str, float] | None = None,
) -> float:
    """``U = (acc - ref_acc) + lam * sum_k w_k log2(ref_cost_k / cost_k)``.

    Accuracies in percent; ``cost`` and ``ref_cost`` map each weighted cost
    (``params``, ``macs``, ``latency_ms``) to a positive number.
    """
    if lam < 0:
        raise ValueError(
            f"lam (accuracy points per halving of cost) must be >= 0, got {lam}"
        )
    w = _weights(weights)
    saving = 0.0
    for k, wk in w.items():
        if wk == 0:
            continue
        c, r = cost.get(k), ref_cost.get(k)
        if c is None or r is None or not c > 0 or not r > 0:
            raise ValueError(f"cost {k!r} must be given and > 0 (got {c} and ref {r})")
        saving += wk * math.log2(r / c)
    return (acc - ref_acc) + lam * saving


def score_table(
    rows: Sequence[Mapping[str, Any]],
    ref: str,
    lam: float = 1.0,
    weights: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Score and rank ``rows`` (dicts with ``name``, ``acc`` in percent and
    the costs) against the row named ``ref``; best first, with ``rank`` (1 =
    best) and ``score``. Ties keep the input order."""
    by_name = {r["name"]: r for r in rows}
    if len(by_name) != len(rows):
        raise ValueError("row names must be unique")
    if ref not in by_name:
        raise ValueError(f"reference {ref!r} is not among the rows")
    r0 = by_name[ref]
    scored = [
        {**r, "score": unified_score(r["acc"], r, r0["acc"], r0, lam, weights)}
        for r in rows
    ]
    scored.sort(key=lambda r: -r["score"])
    for i, r in enumerate(scored, 1):
        r["rank"] = i
    return scored


def rank_agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Kendall's tau between two rankings of the same names (1: identical order)."""
    if sorted(a) != sorted(b):
        raise ValueError("the rankings must hold the same names")
    pos = {n: i for i, n in enumerate(b)}
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += 1 if pos[a[i]] < pos[a[j]] else -1
    return s / (n * (n - 1) / 2) if n > 1 else 1.0


def book_runs(profile: str, cache: str | Path | None = None) -> list:
    """Every finished run of ``profile`` in the cache that the current code
    would load (its folder is the current ``run_dir`` of its config): the runs
    the book shows. Runs of older code, or of methods no longer registered,
    are left out."""
    root = Path(cache) if cache is not None else cache_dir()
    out = []
    for path in sorted((root / "runs").glob("*/result.json")):
        res = Result.load(path)
        if res.config.get("profile") != profile or res.config["method"] not in METHODS:
            continue
        prov = res.provenance
        try:
            current = run_dir(res.cfg, prov.get("channels_last", True), prov.get("amp"))
        except (ValueError, TypeError):
            continue
        if current.name == path.parent.name:
            out.append(res)
    return out


def mean_by(results: Iterable, key) -> dict[Any, list]:
    """Group ``results`` by ``key(result)``."""
    groups: dict[Any, list] = {}
    for r in results:
        groups.setdefault(key(r), []).append(r)
    return groups
