"""Figures for adjusting the architecture with KD in the loop (chapter 11).

Accuracy against cost: along a channel-planting path, over a searched set of
candidates with its Pareto front, and through the stages of pruning and
recovery. Items are :class:`kdutils.pipelines.Candidate` objects or dicts
with the same keys (``acc``, ``params``, ``macs``, ``latency_ms``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from ..pipelines import pareto_front

__all__ = ["planting_path", "search_front", "pruning_stages", "accuracy_vs_cost"]

# Axis label and scale of each cost.
COSTS = {
    "params": ("parameters (thousands)", 1e-3),
    "macs": ("MACs per image (millions)", 1e-6),
    "latency_ms": ("latency per image (ms, measured on this CPU)", 1.0),
}


def _get(item: Any, key: str):
    return item.get(key) if isinstance(item, Mapping) else getattr(item, key, None)


def _xy(items: Sequence[Any], cost: str, score: str = "acc") -> tuple[np.ndarray, ...]:
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {list(COSTS)}, got {cost!r}")
    scale = COSTS[cost][1]
    x = np.array([_get(it, cost) for it in items], dtype=float) * scale
    y = np.array([_get(it, score) for it in items], dtype=float)
    if np.isnan(x).any():
        raise ValueError(f"some items have no {cost} (measure it first)")
    return x, y


def _short(item: Any) -> str:
    widths = _get(item, "widths")
    depth = _get(item, "depth")
    if widths is None:
        return str(_get(item, "name") or _get(item, "stage") or "")
    return f"{depth}/{'-'.join(map(str, widths[1:]))}"


def planting_path(planting, costs: Sequence[str] = ("params", "macs")) -> Figure:
    """Accuracy against cost along a :class:`~kdutils.pipelines.Planting` path.

    Grey dots: every candidate tried; the line: the students kept, each
    labelled with its widths; the last one is the final student.
    """
    fig, axes = plt.subplots(1, len(costs), figsize=(5.2 * len(costs), 3.8))
    axes = np.atleast_1d(axes)
    tried = planting.candidates
    for ax, cost in zip(axes, costs, strict=True):
        x, y = _xy(tried, cost)
        ax.scatter(x, y, color="0.7", s=18, label="candidates tried", zorder=1)
        px, py = _xy(planting.path, cost)
        ax.plot(px, py, "-o", color="C0", label="kept (the path)", zorder=2)
        ax.plot(px[-1:], py[-1:], "*", color="C3", ms=14, label="final", zorder=3)
        for c, xi, yi in zip(planting.path, px, py, strict=True):
            ax.annotate(
                "-".join(map(str, c.widths)),
                (xi, yi),
                textcoords="offset points",
                xytext=(4, -10),
                fontsize=7,
            )
        ax.set_xlabel(COSTS[cost][0])
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle("Channel planting: widths (stem-s1-s2-s3) grown while KD improves")
    fig.tight_layout()
    return fig


def search_front(
    candidates: Sequence[Any],
    costs: Sequence[str] = ("latency_ms", "macs"),
    title: str = "",
) -> Figure:
    """Short-run KD accuracy of each candidate against its costs, with the front.

    The Pareto front (nothing cheaper is as accurate) is the dashed step line;
    front members are labelled ``depth/s1-s2-s3``. When candidates carry a
    label-only accuracy (``acc_ce``), it is drawn as a hollow marker joined to
    the KD point of the same architecture.
    """

    fig, axes = plt.subplots(1, len(costs), figsize=(5.4 * len(costs), 4.0))
    axes = np.atleast_1d(axes)
    has_ce = all(_get(c, "acc_ce") is not None for c in candidates)
    for ax, cost in zip(axes, costs, strict=True):
        x, y = _xy(candidates, cost)
        if has_ce:
            _, yce = _xy(candidates, cost, "acc_ce")
            ax.vlines(x, np.minimum(y, yce), np.maximum(y, yce), color="0.8", lw=1)
            ax.scatter(
                x, yce, facecolors="none", edgecolors="C1", s=30, label="alone (ce)"
            )
        ax.scatter(x, y, color="C0", s=30, label="with KD", zorder=3)
        front = pareto_front(candidates, cost=cost)
        fx, fy = _xy(front, cost)
        ax.step(fx, fy, "--", where="post", color="C3", label="KD Pareto front")
        for c, xi, yi in zip(front, fx, fy, strict=True):
            ax.annotate(
                _short(c),
                (xi, yi),
                textcoords="offset points",
                xytext=(3, 4),
                fontsize=7,
            )
        ax.set_xlabel(COSTS[cost][0])
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def pruning_stages(rows: Sequence[Mapping[str, Any]], title: str = "") -> Figure:
    """Accuracy at each stage of pruning and recovery, with each stage's cost."""
    fig, ax = plt.subplots(figsize=(1.5 * len(rows) + 2, 3.8))
    x = np.arange(len(rows))
    acc = np.array([r["acc"] for r in rows], dtype=float)
    colors = ["0.5", "C3", *["C0"] * (len(rows) - 2)][: len(rows)]
    ax.bar(x, acc, color=colors)
    for i in range(len(rows)):
        ax.text(i, acc[i] + 0.5, f"{acc[i]:.1f}", ha="center", va="bottom", fontsize=8)
    labels = [
        f"{r['stage']}\n{r['params'] / 1e3:.0f}k params\n{r['macs'] / 1e6:.1f}M MACs"
        for r in rows
    ]
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, min(100, acc.max() + 10))
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def accuracy_vs_cost(
    groups: Mapping[str, Sequence[Any]],
    cost: str = "macs",
    title: str = "",
    logx: bool = True,
) -> Figure:
    """Every model of a chapter on one accuracy-against-cost plane, by group."""
    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    markers = "osD^vP*X"
    for i, (label, items) in enumerate(groups.items()):
        if not items:
            continue
        x, y = _xy(items, cost)
        ax.scatter(x, y, marker=markers[i % len(markers)], s=36, label=label)
    ax.set_xlabel(COSTS[cost][0])
    ax.set_ylabel("test accuracy (%)")
    if logx:
        ax.set_xscale("log")
        # Plain numbers (0.4, 1, 3), not powers of ten, on the log axis.
        plain = FuncFormatter(lambda v, _pos: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.grid(alpha=0.3)
    # Outside the axes, so that no point hides behind it.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
