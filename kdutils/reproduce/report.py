"""The reproduction's statistics and report: the table, the conclusions, the files.

``aggregate`` makes one record per row (accuracies per seed, mean, std, the
survey's number); ``check_conclusions`` tests the survey's three conclusions
over seeds (one-sided Welch t-tests); ``_table_provenance`` gathers where the
runs come from; ``_write_table`` writes ``table.csv``, ``table.md`` and
``conclusions.json``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..provenance import git_commit as _git_commit
from ..results import Result, atomic_write_bytes
from ..runs import run_dir
from .executors import _Task
from .rows import TableRow


def aggregate(
    rows: Sequence[TableRow], results: dict[tuple[str, int], Result]
) -> list[dict[str, Any]]:
    """One record per row: accuracies per seed (%), mean, std, the survey's."""
    table = []
    for r in rows:
        accs = [
            100 * res.test_acc
            for (name, _), res in sorted(results.items(), key=lambda kv: kv[0][1])
            if name == r.row
        ]
        mean = float(np.mean(accs)) if accs else math.nan
        std = float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan
        table.append(
            {
                "family": r.family,
                "row": r.row,
                "method": r.method,
                "model": next(
                    (
                        res.config["student"]
                        for (n, _), res in results.items()
                        if n == r.row
                    ),
                    None,
                ),
                "accs": accs,
                "mean": mean,
                "std": std,
                "survey_acc": r.survey_acc,
                "diff": mean - r.survey_acc if accs else math.nan,
            }
        )
    return table


def _welch_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Welch t-test p-value for mean(a) > mean(b)."""
    from scipy import stats

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:
        return 0.0 if a.mean() > b.mean() else 1.0
    return float(stats.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


ONLINE = "online"
STRUCTURAL = "structural"
FEATURE = "knowledge from feature maps"


def check_conclusions(table: Sequence[dict], alpha: float = 0.05) -> dict[str, Any]:
    """The survey's three conclusions, each tested over seeds.

    1. Every KD method beats the student alone (one-sided Welch t-test per
       method, at ``alpha``) and none reaches the teacher (mean below it).
    2. Online methods do best: their pooled accuracies beat those of every
       other KD method (one-sided Welch t-test), and the best row is online.
    3. Structural knowledge beats knowledge extracted from feature maps
       (pooled rows, one-sided Welch t-test).

    Each verdict is ``True``/``False``, or ``None`` when rows or seeds are
    missing; ``detail`` says what was compared.
    """
    by_row = {t["row"]: t for t in table if t["accs"]}
    student = by_row.get("ResNet20")
    teacher = by_row.get("ResNet56")
    methods = [t for t in table if t["family"] != "direct training" and t["accs"]]
    out: dict[str, Any] = {"alpha": alpha, "test": "one-sided Welch t-test over seeds"}

    c1: dict[str, Any] = {"name": "every KD method beats the student alone"}
    if student is None or not methods:
        c1.update(holds=None, detail="needs the ResNet20 row and some methods")
    else:
        ps = {m["row"]: _welch_greater(m["accs"], student["accs"]) for m in methods}
        beats = [r for r, p in ps.items() if p < alpha]
        reaches = (
            [m["row"] for m in methods if m["mean"] >= teacher["mean"]]
            if teacher
            else []
        )
        untestable = any(math.isnan(p) for p in ps.values())
        c1.update(
            holds=None if untestable else (len(beats) == len(ps) and not reaches),
            p_values=ps,
            significantly_better=beats,
            reach_teacher=reaches,
            detail=f"{len(beats)} of {len(ps)} methods significantly above ResNet20"
            + (f"; at or above the teacher: {', '.join(reaches)}" if reaches else ""),
        )
    out["every_method_beats_student"] = c1

    def pooled(rows: list[dict]) -> list[float]:
        return [a for r in rows for a in r["accs"]]

    online = [m for m in methods if m["family"] == ONLINE]
    others = [m for m in methods if m["family"] != ONLINE]
    c2: dict[str, Any] = {"name": "online methods do best"}
    if not online or not others:
        c2.update(holds=None, detail="needs online rows and other methods")
    else:
        p = _welch_greater(pooled(online), pooled(others))
        best = max(methods, key=lambda m: m["mean"])
        c2.update(
            holds=None if math.isnan(p) else bool(p < alpha and best in online),
            p_value=p,
            best_row=best["row"],
            detail=f"online pooled vs other methods pooled, p = {p:.3g}; "
            f"best row: {best['row']}",
        )
    out["online_best"] = c2

    structural = [m for m in methods if m["family"] == STRUCTURAL]
    feature = [m for m in methods if m["family"] == FEATURE]
    c3: dict[str, Any] = {"name": "structural beats feature-map knowledge"}
    if not structural or not feature:
        c3.update(holds=None, detail="needs structural and feature-map rows")
    else:
        p = _welch_greater(pooled(structural), pooled(feature))
        c3.update(
            holds=None if math.isnan(p) else bool(p < alpha),
            p_value=p,
            detail=f"structural pooled vs feature-map pooled, p = {p:.3g}",
        )
    out["structural_beats_feature"] = c3
    return out


def _table_provenance(
    profile: str,
    seeds: list[int],
    tasks: Sequence[_Task],
    results: dict[tuple[str, int], Result],
    amp: str | None = None,
) -> dict[str, Any]:
    """Where the table's runs come from: gathered from their own result files.

    ``train_seconds`` adds the recorded training time of every run the table
    needed: the rows' runs and the pipelines' earlier stages (TAKD's
    assistant, ALTKD's other teachers), each counted once.
    """
    runs = list(results.values())
    # Each run once, by its cache folder (a saved result's path is the table's
    # runs folder, not the run's own).
    seconds: dict[str, float] = {}
    for t in tasks:
        res = results.get((t.row.row, t.seed))
        if res is not None:
            seconds[run_dir(t.final, amp=amp).name] = res.final.get(
                "train_seconds", 0.0
            )
    for t in tasks:
        for c in t.plan[:-1]:
            path = run_dir(c, amp=amp) / "result.json"
            if path.exists() and path.parent.name not in seconds:
                seconds[path.parent.name] = Result.load(path).final.get(
                    "train_seconds", 0.0
                )
    prov = [r.provenance for r in runs]
    dates = sorted(str(p.get("date", ""))[:10] for p in prov if p.get("date"))

    def distinct(key: str) -> list[str]:
        return sorted({str(p.get(key)) for p in prov if p.get(key) is not None})

    return {
        "profile": profile,
        "seeds": seeds,
        "amp": amp,
        "dataset": sorted({r.config.get("dataset", "") for r in runs}),
        "runs": len(runs),
        "runs_with_stages": len(seconds),
        "train_seconds": round(sum(seconds.values()), 1),
        "run_commits": distinct("git_commit"),
        "devices": distinct("device"),
        "machines": distinct("machine"),
        "threads": distinct("threads"),
        "run_dates": [dates[0], dates[-1]] if dates else [],
        "written_by_commit": _git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _write_table(
    out: Path,
    table: list[dict],
    conclusions: dict,
    profile: str,
    missing: list[TableRow],
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["family", "row", "method", "model", "seeds", "mean", "std", "survey", "diff"]
    )
    for t in table:
        w.writerow(
            [
                t["family"],
                t["row"],
                t["method"],
                t["model"] or "",
                len(t["accs"]),
                f"{t['mean']:.2f}",
                f"{t['std']:.2f}",
                f"{t['survey_acc']:.2f}",
                f"{t['diff']:+.2f}",
            ]
        )
    atomic_write_bytes(out / "table.csv", buf.getvalue().encode())
    prov = conclusions.get("provenance", {})
    lines = [
        f"Table 1 reproduced with profile `{profile}` (this run's numbers) beside "
        "the survey's (CIFAR-10, ResNet56 -> ResNet20).",
        "",
    ]
    if prov:
        dates = " to ".join(dict.fromkeys(prov["run_dates"])) or "unknown"
        lines += [
            f"- data: {', '.join(prov['dataset'])}; seeds {prov['seeds']}; "
            f"{prov['runs']} runs ({prov['runs_with_stages']} with the pipelines' "
            f"earlier stages), {prov['train_seconds'] / 3600:.2f} h of recorded training"
            + (f", under {prov['amp']} autocast" if prov.get("amp") else ", float32"),
            f"- computed on: {'; '.join(prov['machines'] or prov['devices'])} "
            f"({', '.join(prov['threads'])} threads), {dates}",
            "- run commits: "
            + ", ".join(
                c[:10] + ("-dirty" if c.endswith("-dirty") else "")
                for c in prov["run_commits"]
            )
            + "; "
            f"table written by {(prov['written_by_commit'] or 'unknown')[:10]} "
            f"at {prov['written']}",
            "",
        ]
    lines += [
        "| family | row | model | this run (%) | seeds | survey (%) | diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in table:
        ours = (
            f"{t['mean']:.2f} ± {t['std']:.2f}"
            if len(t["accs"]) > 1
            else (f"{t['mean']:.2f}" if t["accs"] else "missing")
        )
        diff = f"{t['diff']:+.2f}" if t["accs"] else ""
        lines.append(
            f"| {t['family']} | {t['row']} | {t['model'] or ''} | {ours} | {len(t['accs'])} "
            f"| {t['survey_acc']:.2f} | {diff} |"
        )
    lines.append("")
    for key in (
        "every_method_beats_student",
        "online_best",
        "structural_beats_feature",
    ):
        c = conclusions[key]
        verdict = {True: "holds", False: "does not hold", None: "untested"}[c["holds"]]
        lines.append(f"- {c['name']}: **{verdict}** ({c['detail']})")
    if missing:
        lines.append("")
        lines.append(
            "Rows not in this version of kdutils: "
            + ", ".join(r.row for r in missing)
            + "."
        )
    atomic_write_bytes(out / "table.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(
        out / "conclusions.json",
        json.dumps(conclusions, indent=1, default=str).encode(),
    )


def _write_extra(out: Path, extra: list[dict], table: list[dict], profile: str) -> None:
    """``extra.csv`` and ``extra.md``: the rows beside Table 1 (methods after
    the survey), each against this reproduction's own KD row when it ran."""
    kd = next((t for t in table if t["row"] == "KD" and t["accs"]), None)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["row", "method", "model", "seeds", "mean", "std", "vs_kd"])
    lines = [
        f"Methods published after the survey, profile `{profile}`: beside Table 1, "
        "not part of it (the survey has no number for them).",
        "",
        "| method | seeds | accuracy (%) | vs this run's KD |",
        "|---|---|---|---|",
    ]
    for t in extra:
        vs = t["mean"] - kd["mean"] if kd and t["accs"] else math.nan
        w.writerow(
            [
                t["row"],
                t["method"],
                t["model"] or "",
                len(t["accs"]),
                f"{t['mean']:.2f}",
                f"{t['std']:.2f}",
                f"{vs:+.2f}",
            ]
        )
        std = "" if math.isnan(t["std"]) else f" ± {t['std']:.2f}"
        lines.append(
            f"| {t['method']} | {len(t['accs'])} | {t['mean']:.2f}{std} | "
            + ("n/a (KD not run)" if math.isnan(vs) else f"{vs:+.2f}")
            + " |"
        )
    atomic_write_bytes(out / "extra.csv", buf.getvalue().encode())
    atomic_write_bytes(out / "extra.md", ("\n".join(lines) + "\n").encode())
