"""Figures for knowledge extracted from feature maps (chapter 4)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["attention_maps", "fsp_matrices", "context_pyramid"]


def _show_image(ax, img) -> None:
    img = np.asarray(img)
    img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
    if img.ndim == 3:
        img = img.transpose(1, 2, 0)
    ax.imshow(img, cmap="gray_r" if img.ndim == 2 else None)
    ax.set_xticks([]), ax.set_yticks([])


def attention_maps(
    images,
    maps: dict[str, np.ndarray],
    captions: Sequence[str] | None = None,
    title: str = "",
) -> Figure:
    """One row per image: the image, then each network's attention map of it.

    ``images``: (N, H, W) or (N, C, H, W); ``maps[name]``: (N, h, w), e.g.
    :func:`kdutils.losses.attention_map` reshaped. Each map is drawn on its own
    scale (the maps are L2-normalised, so their shapes are what compares).
    """
    names = list(maps)
    n = len(images)
    fig, axes = plt.subplots(
        n, len(names) + 1, figsize=(1.9 * (len(names) + 1), 1.95 * n), squeeze=False
    )
    for i in range(n):
        _show_image(axes[i][0], images[i])
        if captions is not None:
            axes[i][0].set_ylabel(captions[i], fontsize=8)
        for j, name in enumerate(names, start=1):
            ax = axes[i][j]
            ax.imshow(
                np.asarray(maps[name][i]), cmap="inferno", interpolation="bilinear"
            )
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def fsp_matrices(
    mats: dict[str, np.ndarray], first: str = "", second: str = "", title: str = ""
) -> Figure:
    """Heat maps of FSP matrices ``(C1, C2)`` side by side, on one colour scale.

    Rows are the channels of the ``first`` layer, columns those of the
    ``second``; entry (i, j) is the mean over positions of their product.
    """
    names = list(mats)
    vals = np.concatenate([np.asarray(m).ravel() for m in mats.values()])
    vmin, vmax = float(vals.min()), float(vals.max())
    fig, axes = plt.subplots(
        1,
        len(names),
        figsize=(3.3 * len(names) + 0.8, 2.6),
        squeeze=False,
        layout="constrained",
    )
    for ax, name in zip(axes[0], names, strict=True):
        im = ax.imshow(np.asarray(mats[name]), cmap="viridis", vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(
            f"{second} channel" if second else "second layer channel", fontsize=8
        )
        ax.tick_params(labelsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel(
        f"{first} channel" if first else "first layer channel", fontsize=8
    )
    fig.colorbar(im, ax=list(axes[0]), fraction=0.03)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def context_pyramid(
    fmap: np.ndarray, levels: Sequence[int] = (4, 2, 1), title: str = ""
) -> Figure:
    """A map ``(H, W)`` and its average pools to ``levels``: what ReviewKD's HCL compares.

    The levels smaller than the map are drawn with the weights 1, 1/2, 1/4, ...
    that the hierarchical context loss gives them.
    """
    fmap = np.asarray(fmap, dtype=np.float64)
    t = torch.as_tensor(fmap)[None, None]
    panels = [("full map, weight 1", fmap)]
    weight = 1.0
    for level in levels:
        if level >= fmap.shape[0]:
            continue
        weight /= 2
        pooled = F.adaptive_avg_pool2d(t, level)[0, 0].numpy()
        panels.append((f"{level}x{level} pool, weight {weight:g}", pooled))
    vmin, vmax = float(fmap.min()), float(fmap.max())
    fig, axes = plt.subplots(
        1, len(panels), figsize=(2.3 * len(panels), 2.5), squeeze=False
    )
    for ax, (name, m) in zip(axes[0], panels, strict=True):
        ax.imshow(m, cmap="magma", vmin=vmin, vmax=vmax)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
