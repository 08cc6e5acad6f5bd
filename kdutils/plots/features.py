"""Figures for fitting feature maps directly (chapter 3), and linear CKA.

What a feature-fitting method transfers is visible in the features, not only
in the accuracy: :func:`linear_cka` measures how similar a student's layer
is to the teacher's on the same images, func:`cka_by_layer` draws it per layer
and method, :func:`loss_terms` follows each loss term over the epochs of a
run, and :func:`feature_grid` puts feature maps of the same images side by
side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor

from ..results import Result

__all__ = ["linear_cka", "cka_by_layer", "loss_terms", "feature_grid"]


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear centered kernel alignment between two representations of N samples.

    ``CKA = <K_c, L_c>_F / (||K_c||_F ||L_c||_F)`` with ``K = X X^T``,
    ``L = Y Y^T`` and ``K_c = H K H`` (H centres the samples); equal to
    ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with the
    features centred. ``x`` ``(N, ...)`` and ``y`` ``(N, ...)`` are flattened
    per sample (feature maps included) and compared through their ``N x N``
    Gram matrices (computed in the input's precision, combined in float64). 1 for representations equal up to rotation and
    isotropic scaling; invariant to neither general linear maps nor
    per-feature scaling. Reference: ``kornblith2019similarity``.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"linear_cka needs the same samples: {x.shape[0]} != {y.shape[0]}"
        )
    n = x.shape[0]
    if n < 2:
        raise ValueError("linear_cka needs at least 2 samples")
    grams = []
    for f in (x, y):
        f = f.detach().reshape(n, -1)
        f = f - f.mean(0, keepdim=True)  # centring the features = H K H
        grams.append((f @ f.T).double())  # (N, N), in the input's precision
    k, l_ = grams
    denom = torch.linalg.norm(k) * torch.linalg.norm(l_)
    if denom == 0:
        raise ValueError("linear_cka is undefined for a constant representation")
    return float((k * l_).sum() / denom)


def cka_by_layer(
    table: Mapping[str, Mapping[str, float]],
    title: str = "",
    spread: Mapping[str, Mapping[str, float]] | None = None,
) -> Figure:
    """Linear CKA with the teacher per layer (x axis), one line of markers per method.

    ``table[method][layer]`` is the CKA; ``spread`` (same keys), if given, is
    drawn as error bars (e.g. the min-max half-range over seeds). The y axis
    is zoomed to the values, so small differences are visible: read it.
    """
    methods = list(table)
    layers = list(next(iter(table.values())))
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(layers), 3.6))
    x = np.arange(len(layers))
    offset = 0.3 / max(1, len(methods) - 1)
    markers = "osD^vP*Xh<>"
    for i, m in enumerate(methods):
        vals = [table[m][layer] for layer in layers]
        err = None if spread is None else [spread[m][layer] for layer in layers]
        ax.errorbar(
            x + (i - (len(methods) - 1) / 2) * offset,
            vals,
            yerr=err,
            marker=markers[i % len(markers)],
            capsize=2,
            lw=1,
            label=m,
            color=f"C{i}",
        )
    ax.set_xticks(x, layers)
    ax.set_xlim(-0.5, len(layers) - 0.5)
    ax.set_ylabel("linear CKA with the teacher")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def loss_terms(
    results: Sequence[Result],
    label: Callable[[Result], str] = lambda r: r.config["method"],
    title: str = "",
) -> Figure:
    """One panel per group of runs: each weighted loss term per epoch (mean over seeds).

    Terms missing in an epoch (a method whose schedule switches terms) are
    gaps. The y axis is logarithmic when every plotted value is positive.
    """
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(label(r), []).append(r)
    fig, axes = plt.subplots(
        1, len(groups), figsize=(3.6 * len(groups), 3.2), squeeze=False
    )
    for ax, (name, rs) in zip(axes[0], groups.items(), strict=True):
        # Every term any epoch logged, in order of first appearance.
        terms = list(
            dict.fromkeys(
                k
                for r in rs
                for h in r.history
                for k in h
                if k.startswith("train_") and k != "train_acc"
            )
        )
        positive = True
        for j, term in enumerate(terms):
            v = np.array(
                [[h.get(term, np.nan) for h in r.history] for r in rs], dtype=float
            )
            mean = v.mean(0)
            ep = np.arange(1, v.shape[1] + 1)
            ax.plot(
                ep, mean, marker="o", ms=3, color=f"C{j}", label=term[len("train_") :]
            )
            positive &= bool(np.all(mean[np.isfinite(mean)] > 0))
        if positive and terms:
            ax.set_yscale("log")
        ax.set_title(f"{name} ({len(rs)} seed{'s' * (len(rs) > 1)})", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("weighted loss term (training mean)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def feature_grid(
    images,
    columns: Mapping[str, np.ndarray | Tensor],
    labels: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """One row per image: the image, then one 2-D map per column (e.g. feature maps).

    ``images``: ``(N, H, W)`` or ``(N, C, H, W)``; ``columns[name]``:
    ``(N, h, w)``. Each map is drawn on its own colour range (its min to max):
    the pictures compare where a map is high, not its units.
    """
    n = len(images)
    names = list(columns)
    fig, axes = plt.subplots(
        n, len(names) + 1, figsize=(1.7 * (len(names) + 1), 1.75 * n), squeeze=False
    )
    for i in range(n):
        img = np.asarray(images[i])
        img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
        if img.ndim == 3:
            img = img.transpose(1, 2, 0)
        axes[i][0].imshow(img, cmap="gray_r" if img.ndim == 2 else None)
        if labels is not None:
            axes[i][0].set_title(labels[i], fontsize=8)
        for j, name in enumerate(names, start=1):
            m = columns[name][i]
            m = m.detach().cpu().numpy() if isinstance(m, Tensor) else np.asarray(m)
            axes[i][j].imshow(m, cmap="magma")
            if i == 0:
                axes[i][j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
