"""Figures for structural knowledge (chapter 5): relation matrices, memory banks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..results import Result

__all__ = ["relation_matrices", "class_matrices", "nce_curves"]


def _class_ticks(ax, labels: np.ndarray, class_names: Sequence[str]) -> None:
    """Lines between the class blocks of a class-sorted batch, names at block centres."""
    edges = np.flatnonzero(np.diff(labels)) + 0.5
    for e in edges:
        ax.axhline(e, color="white", lw=0.6)
        ax.axvline(e, color="white", lw=0.6)
    bounds = np.concatenate([[-0.5], edges, [len(labels) - 0.5]])
    centres = (bounds[:-1] + bounds[1:]) / 2
    names = [class_names[c] for c in labels[np.r_[0, (edges + 0.5).astype(int)]]]
    ax.set_xticks(centres, names, rotation=70, fontsize=7)
    ax.set_yticks(centres, names, fontsize=7)


def relation_matrices(
    grid: Mapping[str, Mapping[str, np.ndarray]],
    labels: Sequence[int],
    class_names: Sequence[str],
    title: str = "",
) -> Figure:
    """Heat maps of ``(B, B)`` relation matrices of one class-sorted batch.

    ``grid[row][column]``: rows are networks (teacher, students), columns are
    kinds of relation (normalised distances, similarities); each column shares
    one colour scale so the rows can be compared.
    """
    rows, cols = list(grid), list(next(iter(grid.values())))
    labels = np.asarray(labels)
    fig, axes = plt.subplots(
        len(rows),
        len(cols),
        figsize=(3.3 * len(cols) + 0.8, 3.0 * len(rows) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for j, col in enumerate(cols):
        stack = np.stack([grid[r][col] for r in rows])
        lo, hi = np.nanpercentile(stack, 1), np.nanpercentile(stack, 99)
        for i, row in enumerate(rows):
            ax = axes[i][j]
            im = ax.imshow(grid[row][col], cmap="viridis", vmin=lo, vmax=hi)
            _class_ticks(ax, labels, class_names)
            if i < len(rows) - 1:
                ax.set_xticklabels([])
            if j > 0:
                ax.set_yticklabels([])
            ax.set_title(f"{row}: {col}", fontsize=9)
        fig.colorbar(im, ax=list(axes[:, j]), shrink=0.5, aspect=30)
    if title:
        fig.suptitle(title)
    return fig


def class_matrices(
    grid: Mapping[str, Mapping[str, np.ndarray]],
    class_names: Sequence[str],
    title: str = "",
    vmin: float = -1.0,
    vmax: float = 1.0,
) -> Figure:
    """Heat maps of ``(K, K)`` class-by-class matrices, ``grid[row][column]``.

    Used for CRD's memory banks: the mean cosine similarity between the bank
    entries of two classes, per bank (rows) and moment of training (columns).
    """
    rows, cols = list(grid), list(next(iter(grid.values())))
    fig, axes = plt.subplots(
        len(rows),
        len(cols),
        figsize=(3.0 * len(cols) + 0.8, 3.0 * len(rows) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    k = len(class_names)
    for i, row in enumerate(rows):
        for j, col in enumerate(cols):
            ax = axes[i][j]
            im = ax.imshow(grid[row][col], cmap="RdBu_r", vmin=vmin, vmax=vmax)
            ax.set_xticks(
                range(k),
                class_names if i == len(rows) - 1 else [],
                rotation=70,
                fontsize=7,
            )
            ax.set_yticks(range(k), class_names if j == 0 else [], fontsize=7)
            ax.set_title(f"{row}: {col}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, aspect=30)
    if title:
        fig.suptitle(title)
    return fig


def nce_curves(
    results: Sequence[Result],
    weight_key: str = "crd_weight",
    chance: float | None = None,
    title: str = "",
) -> Figure:
    """CRD's training loss per epoch, one line per run, divided by its weight.

    ``chance``: the loss of embeddings that carry no information (scores all
    equal), drawn as a dashed line.
    """
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for r in results:
        w = r.config["method_args"].get(weight_key, 1.0) or 1.0
        ep = [h["epoch"] for h in r.history]
        ax.plot(
            ep,
            [h["train_crd"] / w for h in r.history],
            marker="o",
            label=f"seed {r.config['seed']}",
        )
    if chance is not None:
        ax.axhline(chance, ls="--", color="gray", label="no information")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NCE loss (student + teacher anchors)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
