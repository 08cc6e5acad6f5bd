"""Figures for distilling into small networks (chapter 12)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["gap_curve", "stop_sweep", "guide_drops", "ladder_costs"]


def gap_curve(summary, student_alone: float | None = None, title: str = "") -> Figure:
    """Student accuracy against the teacher-student gap, one line per route.

    ``summary``: a DataFrame with columns ``route`` (e.g. "KD from the
    teacher", "TAKD"), ``teacher``, ``gap`` (teacher / student parameters),
    ``acc_mean``, ``acc_std`` and, optionally, ``teacher_acc`` (drawn as grey
    squares). ``student_alone``: the student trained alone, a dashed line.
    """
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for i, (route, g) in enumerate(summary.groupby("route", sort=False)):
        g = g.sort_values("gap")
        ax.errorbar(
            g["gap"],
            g["acc_mean"],
            yerr=g["acc_std"].fillna(0),
            marker="os^Dv"[i % 5],
            capsize=4,
            color=f"C{i}",
            label=route,
            ls="-" if len(g) > 1 else "none",
        )
    if "teacher_acc" in summary:
        t = summary.drop_duplicates("teacher").sort_values("gap")
        ax.scatter(
            t["gap"], t["teacher_acc"], marker="s", color="0.5", label="teacher alone"
        )
        for _, row in t.iterrows():
            ax.annotate(
                row["teacher"],
                (row["gap"], row["teacher_acc"]),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
                color="0.3",
            )
    if student_alone is not None:
        ax.axhline(student_alone, ls="--", color="0.4", label="student alone")
    gaps = sorted(set(summary["gap"]))
    ax.set_xscale("log")
    ax.set_xticks(gaps, [f"{g:.1f}x" for g in gaps])
    ax.minorticks_off()
    lo, hi = ax.get_xlim()
    ax.set_xlim(lo / 1.15, hi * 1.15)
    ax.set_xlabel("teacher size / student size (parameters)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def stop_sweep(summary, reference=None, title: str = "") -> Figure:
    """Accuracy against the fraction of training with the teacher (ESKD).

    ``summary``: columns ``stop``, ``acc_mean``, ``acc_std`` and ``seeds``
    (the number of seeds behind each point, written next to it).
    ``reference``: optional ``{name: accuracy}`` drawn as dashed lines.
    """
    fig, ax = plt.subplots(figsize=(7, 3.6))
    s = summary.sort_values("stop")
    ax.errorbar(
        s["stop"],
        s["acc_mean"],
        yerr=s["acc_std"].fillna(0),
        marker="o",
        capsize=4,
        label="student, KD stopped early",
    )
    for _, row in s.iterrows():
        ax.annotate(
            f"n={int(row['seeds'])}",
            (row["stop"], row["acc_mean"]),
            textcoords="offset points",
            xytext=(6, -12),
            fontsize=7,
            color="0.35",
        )
    for i, (name, acc) in enumerate((reference or {}).items()):
        ax.axhline(acc, ls="--", color=f"C{i + 1}", label=name)
    names = {0.0: "\n(alone)", 1.0: "\n(KD)"}
    ax.set_xticks(s["stop"], [f"{v:g}{names.get(float(v), '')}" for v in s["stop"]])
    ax.margins(y=0.12)
    ax.set_xlabel("fraction of the epochs with the teacher's KD term (stop)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def guide_drops(kept: Sequence[Sequence[int]], names: Sequence[str]) -> Figure:
    """Which guides each batch used (DGKD's random dropping), batches left to right.

    ``kept``: for each batch, the indices of the guides it kept.
    """
    grid = np.zeros((len(names), len(kept)))
    for b, k in enumerate(kept):
        grid[list(k), b] = 1
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    ax.imshow(grid, aspect="auto", cmap="Blues", vmin=0, vmax=1.3)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("batch")
    ax.set_title("guides kept (dark) and dropped (light) per batch", fontsize=10)
    ax.set_xticks(np.arange(-0.5, len(kept)), minor=True)
    ax.set_yticks(np.arange(-0.5, len(names)), minor=True)
    ax.grid(which="minor", color="white", lw=1)
    ax.tick_params(which="minor", length=0)
    fig.tight_layout()
    return fig


def ladder_costs(table, title: str = "") -> Figure:
    """Test accuracy against MACs and, if measured, latency: one point per model.

        ``table``: columns ``label``, ``macs``, ``acc_mean``, optional ``acc_std``
        and ``latency_ms``. Points of one architecture (same MACs) are spread
    slightly sideways so that their error bars stay readable.
    """
    panels = ["macs"] + (["latency_ms"] if "latency_ms" in table else [])
    fig, axes = plt.subplots(
        1, len(panels), figsize=(5.2 * len(panels), 4.2), squeeze=False
    )
    # Points of one architecture are spread a little sideways (log axis).
    rank = table.groupby("macs").cumcount().to_numpy()
    size = table.groupby("macs")["macs"].transform("size").to_numpy()
    shift = 1.03 ** (rank - (size - 1) / 2)
    for ax, col in zip(axes[0], panels, strict=True):
        for i, (_, row) in enumerate(table.iterrows()):
            std = row["acc_std"] if "acc_std" in table else 0.0
            ax.errorbar(
                row[col] * shift[i],
                row["acc_mean"],
                yerr=0.0 if std != std else std,  # NaN: one seed
                marker="os^Dv<>p"[i % 8],
                color=f"C{i % 10}",
                capsize=3,
                ls="none",
                label=row["label"],
            )
        ax.set_xscale("log")
        # Ticks at the models' own costs, in readable units.
        ticks = sorted(set(table[col]))
        fmt = (lambda v: f"{v / 1e6:.3g}M") if col == "macs" else (lambda v: f"{v:.2g}")
        ax.set_xticks(ticks, [fmt(v) for v in ticks])
        ax.minorticks_off()
        ax.set_xlabel(
            "multiply-accumulates per image"
            if col == "macs"
            else "measured latency per image (ms, this machine)"
        )
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
