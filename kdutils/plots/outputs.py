"""Figures for better output losses (chapter 2)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["per_class_bars", "temperature_distribution", "count_bars"]


def per_class_bars(
    values: Mapping[str, Sequence[float]],
    class_names: Sequence[str],
    ylabel: str,
    title: str = "",
    percent: bool = True,
) -> Figure:
    """Grouped bars, one group per class and one bar per series in ``values``.

    ``values`` maps a series name to one number per class (fractions, shown in
    % when ``percent``).
    """
    fig, ax = plt.subplots(figsize=(8, 3.4))
    x = np.arange(len(class_names))
    width = 0.8 / max(len(values), 1)
    scale = 100.0 if percent else 1.0
    for i, (name, v) in enumerate(values.items()):
        v = scale * np.asarray(v, dtype=float)
        ax.bar(x + (i - (len(values) - 1) / 2) * width, v, width, label=name)
    ax.set_xticks(x, class_names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    if len(values) > 1:
        ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def temperature_distribution(
    temps: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    T: float,
    title: str = "",
) -> Figure:
    """Per-sample temperatures: a histogram, and their spread in each class.

    Classes are sorted by their median temperature (coldest first); the
    dashed line is the base temperature ``T``.
    """
    temps, labels = np.asarray(temps, float), np.asarray(labels)
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1, 1.6]}
    )
    ax1.hist(temps, bins=50, color="C0")
    ax1.axvline(T, ls="--", color="k", label=f"base T = {T:g}")
    ax1.set_xlabel("per-sample temperature")
    ax1.set_ylabel("training samples")
    ax1.legend(fontsize=8)
    per_class = [temps[labels == c] for c in range(len(class_names))]
    order = np.argsort([np.median(v) if len(v) else np.nan for v in per_class])
    ax2.boxplot(
        [per_class[c] for c in order], showfliers=False, medianprops={"color": "C3"}
    )
    ax2.set_xticks(
        np.arange(1, len(order) + 1),
        [class_names[c] for c in order],
        rotation=30,
        ha="right",
        fontsize=8,
    )
    ax2.axhline(T, ls="--", color="k")
    ax2.set_ylabel("temperature")
    ax2.grid(axis="y", alpha=0.3)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def count_bars(counts: Mapping[str, float], xlabel: str, title: str = "") -> Figure:
    """Horizontal bars with their values written at the end (e.g. teacher passes)."""
    names = list(counts)
    v = np.array([counts[n] for n in names], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y, v, color=[f"C{i}" for i in range(len(names))])
    for i, val in enumerate(v):
        ax.text(val, i, f" {val:,.0f}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18 * max(v.max(), 1.0))
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig
