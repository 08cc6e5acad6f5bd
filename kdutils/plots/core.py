"""Figures shared by the book: curves, bars, sweeps, the taxonomy, chapter 1's."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from ..results import Result

__all__ = [
    "training_curves",
    "soft_targets",
    "accuracy_bars",
    "sweep",
    "TAXONOMY",
    "taxonomy",
    "dark_knowledge",
    "class_similarity",
]


def _group(results: Sequence[Result], label) -> dict[str, list[Result]]:
    groups: dict[str, list[Result]] = {}
    for r in results:
        groups.setdefault(label(r), []).append(r)
    return groups


def training_curves(
    results: Sequence[Result],
    label=lambda r: r.config["method"],
    metrics: Sequence[str] = ("test_acc", "train_loss"),
    title: str | None = None,
) -> Figure:
    """Per-epoch curves, mean over seeds with a min-max band, one line per group.

    ``train_loss`` is the sum of the run's weighted loss terms.
    """
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False
    )
    for ax, metric in zip(axes[0], metrics, strict=True):
        for name, rs in _group(results, label).items():
            vals = []
            for r in rs:
                if metric == "train_loss":
                    vals.append(
                        [
                            sum(
                                v
                                for k, v in h.items()
                                if k.startswith("train_") and k != "train_acc"
                            )
                            for h in r.history
                        ]
                    )
                else:
                    vals.append([h[metric] for h in r.history])
            # Epochs without a test evaluation (``eval_every``) are gaps (NaN).
            v = np.array(vals, dtype=float) * (100 if metric.endswith("acc") else 1)
            ep = np.arange(1, v.shape[1] + 1)
            (line,) = ax.plot(
                ep,
                v.mean(0),
                marker="o" if np.isfinite(v).sum() < 3 * len(rs) else None,
                label=f"{name} ({len(rs)} seed{'s' * (len(rs) > 1)})",
            )
            if len(rs) > 1:
                ax.fill_between(
                    ep, v.min(0), v.max(0), color=line.get_color(), alpha=0.2
                )
        ax.set_xlabel("epoch")
        ax.set_ylabel(
            {
                "test_acc": "test accuracy (%)",
                "train_loss": "training loss",
                "train_acc": "training accuracy (%)",
            }.get(metric, metric)
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def soft_targets(
    probs: dict[float, np.ndarray], class_names: Sequence[str], title: str = ""
) -> Figure:
    """Bar charts of one sample's class probabilities at several temperatures."""
    temps = list(probs)
    fig, axes = plt.subplots(
        1, len(temps), figsize=(3.2 * len(temps), 3.2), sharey=True
    )
    axes = np.atleast_1d(axes)
    x = np.arange(len(class_names))
    for ax, T in zip(axes, temps, strict=True):
        p = np.asarray(probs[T])
        ax.bar(x, p, color=["C3" if i == p.argmax() else "C0" for i in x])
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 1.5)
        ax.set_xticks(x, class_names, rotation=70, fontsize=7)
        ax.set_title(f"T = {T:g}")
    axes[0].set_ylabel("probability (log scale)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_bars(
    summary, label: str = "method", title: str = "", reference=None
) -> Figure:
    """Mean accuracy with seed std as error bars, from :func:`kdutils.summarize`.

    ``reference``: optional ``{name: accuracy}`` drawn as dashed lines.
    """
    fig, ax = plt.subplots(figsize=(1.3 * len(summary) + 2, 3.6))
    x = np.arange(len(summary))
    std = summary["acc_std"].to_numpy(dtype=float)
    ax.bar(x, summary["acc_mean"], color="C0")
    has_std = np.isfinite(std)  # one seed has no std: no error bar, not a 0 one
    ax.errorbar(
        x[has_std],
        summary["acc_mean"].to_numpy()[has_std],
        yerr=std[has_std],
        fmt="none",
        ecolor="k",
        capsize=4,
    )
    for i, (m, s) in enumerate(zip(summary["acc_mean"], std, strict=True)):
        ax.text(
            i,
            m + (0 if np.isnan(s) else s) + 0.05,
            f"{m:.2f}",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    names = summary[label].astype(str).tolist()
    if "seeds" in summary and summary["seeds"].nunique() > 1:
        names = [
            f"{n}\n({k} seed{'s' if k != 1 else ''})"
            for n, k in zip(names, summary["seeds"], strict=True)
        ]
    ax.set_xticks(x, names)
    lo = float(np.nanmin(summary["acc_mean"] - np.nan_to_num(std)))
    hi = float(np.nanmax(summary["acc_mean"] + np.nan_to_num(std)))
    for i, (name, acc) in enumerate((reference or {}).items()):
        ax.axhline(acc, ls="--", color=f"C{i + 1}", label=name)
        lo, hi = min(lo, acc), max(hi, acc)
    ax.set_ylim(lo - 1.0, hi + 0.8)
    ax.set_ylabel("test accuracy (%)")
    if reference:
        ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def sweep(
    summary, param: str, title: str = "", reference=None, logx: bool = True
) -> Figure:
    """Accuracy against a hyperparameter (e.g. the temperature), with seed std."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.errorbar(
        summary[param],
        summary["acc_mean"],
        yerr=summary["acc_std"].fillna(0),
        marker="o",
        capsize=4,
        label="student with KD",
    )
    for i, (name, acc) in enumerate((reference or {}).items()):
        ax.axhline(acc, ls="--", color=f"C{i + 1}", label=name)
    if logx:
        ax.set_xscale("log", base=2)
        ax.set_xticks(summary[param], [f"{v:g}" for v in summary[param]])
    ax.set_xlabel(param)
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


# The survey's taxonomy (its Fig. 1), redrawn: (label, survey section, children,
# representative methods for leaves).
TAXONOMY = (
    "Knowledge distillation",
    "",
    [
        (
            "Traditional KD",
            "§1",
            [],
            "soft targets with a temperature\n(Hinton et al.)",
        ),
        (
            "Performance-oriented",
            "§2",
            [
                (
                    "Output-based loss",
                    "§2.1",
                    [],
                    "conditional teacher-student,\nadaptive temperature, CRD",
                ),
                (
                    "Forms of knowledge",
                    "§2.2",
                    [
                        (
                            "Fitting feature maps",
                            "§2.2.1",
                            [],
                            "FitNet, progressive hints",
                        ),
                        (
                            "Feature-map knowledge",
                            "§2.2.2",
                            [],
                            "AT, FSP, AFD, ReviewKD",
                        ),
                        ("Structural knowledge", "§2.2.3", [], "RKD, SP, IRG, CRD"),
                    ],
                ),
                (
                    "Ways of learning",
                    "§2.3",
                    [
                        ("Online", "§2.3.1", [], "DML, ONE, OKDDip"),
                        ("Self", "§2.3.2", [], "BYOT, BAKE, FRSKD"),
                        (
                            "Multi-teacher",
                            "§2.3.3",
                            [],
                            "averaged soft targets,\nAMTML-KD",
                        ),
                        ("Progressive", "§2.3.4", [], "snapshot distillation, ProKT"),
                        (
                            "Adversarial (GAN)",
                            "§2.3.5",
                            [],
                            "discriminators on\nlogits or features",
                        ),
                    ],
                ),
            ],
        ),
        (
            "Compression-oriented",
            "§3",
            [
                (
                    "Architecture (NAS + KD)",
                    "§3.1",
                    [],
                    "channel planting, search to\ndistil, few-sample KD",
                ),
                (
                    "Small networks",
                    "§3.2",
                    [],
                    "TAKD, DGKD, early-stopped KD",
                ),
            ],
        ),
        ("Applications", "§5", [], "detection, segmentation,\nfaces, generation, NLP"),
    ],
)


def taxonomy(tree=TAXONOMY) -> Figure:
    """The survey's taxonomy of KD methods as a left-to-right tree."""
    leaves: list = []
    depth_of: dict[int, int] = {}

    def count(node, depth):
        depth_of[id(node)] = depth
        if not node[2]:
            leaves.append(node)
        for c in node[2]:
            count(c, depth + 1)

    count(tree, 0)
    max_depth = max(depth_of.values())
    width = max_depth + 1.85  # room for the examples right of the deepest leaves
    fig, ax = plt.subplots(figsize=(2.2 * width, 0.62 * len(leaves) + 0.6))
    ax.set_xlim(-0.05, width)
    ax.set_ylim(-0.7, len(leaves) - 0.3)
    ax.axis("off")
    pos: dict[int, tuple[float, float]] = {}
    colors = ["#2b5d8a", "#3f7fb5", "#6ea4d2", "#a9cbe8"]

    def place(node):
        if not node[2]:
            y = len(leaves) - 1 - leaves.index(node)
        else:
            y = float(np.mean([place(c) for c in node[2]]))
        pos[id(node)] = (depth_of[id(node)], y)
        return y

    place(tree)

    def draw(node):
        x, y = pos[id(node)]
        d = depth_of[id(node)]
        text = node[0] + (f"\n{node[1]}" if node[1] else "")
        ax.add_patch(
            FancyBboxPatch(
                (x, y - 0.36),
                0.88,
                0.72,
                boxstyle="round,pad=0.02",
                fc=colors[min(d, 3)],
                ec="none",
            )
        )
        ax.text(
            x + 0.44,
            y,
            text,
            ha="center",
            va="center",
            fontsize=10,
            color="white" if d < 2 else "black",
        )
        if not node[2] and len(node) > 3:
            ax.text(
                x + 0.93,
                y,
                node[3],
                ha="left",
                va="center",
                fontsize=9.5,
                color="0.3",
                style="italic",
            )
        for c in node[2]:
            cx, cy = pos[id(c)]
            ax.plot(
                [x + 0.9, x + 0.95, x + 0.95, cx - 0.02],
                [y, y, cy, cy],
                color="0.5",
                lw=1,
            )
            draw(c)

    draw(tree)
    fig.tight_layout()
    return fig


def dark_knowledge(
    images, probs: dict[float, np.ndarray], class_names: Sequence[str], labels=None
) -> Figure:
    """One row per image: the image, then the teacher's probabilities at each T.

    ``images``: (N, H, W) or (N, C, H, W) arrays; ``probs[T]``: (N, K).
    """
    temps = list(probs)
    n = len(images)
    fig, axes = plt.subplots(
        n,
        len(temps) + 1,
        figsize=(2.2 + 3.0 * len(temps), 2.3 * n),
        gridspec_kw={"width_ratios": [0.7] + [1] * len(temps)},
        squeeze=False,
    )
    x = np.arange(len(class_names))
    for i in range(n):
        img = np.asarray(images[i])
        img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
        if img.ndim == 3:
            img = img.transpose(1, 2, 0)
        axes[i][0].imshow(img, cmap="gray_r" if img.ndim == 2 else None)
        axes[i][0].set_xticks([]), axes[i][0].set_yticks([])
        if labels is not None:
            axes[i][0].set_title(f"label: {class_names[labels[i]]}", fontsize=9)
        for j, T in enumerate(temps, start=1):
            p = np.asarray(probs[T][i])
            ax = axes[i][j]
            ax.bar(x, p, color=["C3" if k == p.argmax() else "C0" for k in x])
            ax.set_yscale("log")
            ax.set_ylim(1e-7, 2)
            ax.set_xticks(x, class_names if i == n - 1 else [], rotation=70, fontsize=7)
            if i == 0:
                ax.set_title(f"teacher, T = {T:g}", fontsize=10)
            if j == 1:
                ax.set_ylabel("probability", fontsize=8)
    fig.tight_layout()
    return fig


def class_similarity(
    matrix: np.ndarray, class_names: Sequence[str], title: str = ""
) -> Figure:
    """Heat map of a (K, K) matrix: row = true class, column = where mass goes."""
    fig, ax = plt.subplots(figsize=(5.6, 4.8))
    im = ax.imshow(matrix, cmap="viridis")
    ax.set_xticks(range(len(class_names)), class_names, rotation=70, fontsize=8)
    ax.set_yticks(range(len(class_names)), class_names, fontsize=8)
    ax.set_xlabel("class the teacher gives probability to")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, fraction=0.046)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
