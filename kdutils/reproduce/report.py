"""The reproduction's statistics and report: the table, the conclusions, the files.

``aggregate`` makes one record per row (accuracies per seed at the last epoch
and at the epoch chosen on validation, mean, std, the survey's number);
``check_conclusions`` tests the survey's three conclusions over seeds
(one-sided Welch t-tests, Holm-corrected where a conclusion tests many
methods at once, with effect sizes and confidence intervals);
``_table_provenance`` gathers where the runs come from; ``_write_table``
writes ``table.csv``, ``table.md`` and ``conclusions.json``.

Which epoch: every table reports the **last** epoch's test accuracy, the
number a run ends with. Beside it, the test accuracy at the epoch with the
best *validation* accuracy (``Result.test_acc_at_best_val``), an epoch chosen
without looking at the test set. The best *test* epoch
(``Result.best_test_acc``) is kept in the records only to measure how much
choosing on the test set inflates a number; no table reports it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import stats
from ..provenance import git_commit as _git_commit
from ..results import Result, atomic_write_bytes
from .executors import _Task, _task_seconds
from .rows import TableRow


def aggregate(
    rows: Sequence[TableRow], results: dict[tuple[str, int], Result]
) -> list[dict[str, Any]]:
    """One record per row, accuracies in %, one per seed in seed order:

    ``accs`` the test accuracy at the last epoch (what the tables report),
    ``accs_best_val`` the test accuracy at the best validation epoch,
    ``accs_best_test`` the best test accuracy of any evaluated epoch (kept
    to measure its bias, never reported as a result), ``val_accs`` the last
    epoch's validation accuracy, ``evals`` how many epochs each run was
    evaluated at (1: only the last, so the three accuracies coincide);
    ``mean``/``std`` are of ``accs``.
    Runs without a validation split have NaN in the validation fields.
    """
    table = []
    for r in rows:
        mine = [
            res
            for (name, _), res in sorted(results.items(), key=lambda kv: kv[0][1])
            if name == r.row
        ]
        accs = [100 * res.test_acc for res in mine]

        def pct(x: float | None) -> float:
            return math.nan if x is None else 100 * x

        mean = float(np.mean(accs)) if accs else math.nan
        std = float(np.std(accs, ddof=1)) if len(accs) > 1 else math.nan
        best_val = [pct(res.test_acc_at_best_val) for res in mine]
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
                "accs_best_val": best_val,
                "mean_best_val": _mean(best_val),
                "accs_best_test": [pct(res.best_test_acc) for res in mine],
                "val_accs": [pct(res.final.get("val_acc")) for res in mine],
                "evals": [
                    sum(h.get("test_acc") is not None for h in res.history)
                    for res in mine
                ],
                "survey_acc": r.survey_acc,
                "diff": mean - r.survey_acc if accs else math.nan,
            }
        )
    return table


def _mean(values: Sequence[float]) -> float:
    """The mean, NaN when empty or when any value is NaN."""
    return float(np.mean(values)) if len(values) else math.nan


def _welch_greater(a: Sequence[float], b: Sequence[float]) -> float:
    """One-sided Welch t-test p-value for mean(a) > mean(b)."""
    return stats.welch_p(a, b, "greater")


def effect(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """How far ``a`` is above ``b``: the difference of means in points with
    its 95% Welch confidence interval, and Hedges' g."""
    diff, low, high = stats.mean_diff_ci(a, b, 0.95)
    return {"diff": diff, "ci95": [low, high], "hedges_g": stats.hedges_g(a, b)}


# The survey's three conclusions, as ``check_conclusions`` names them.
CONCLUSIONS = ("every_method_beats_student", "online_best", "structural_beats_feature")

ONLINE = "online"
STRUCTURAL = "structural"
FEATURE = "knowledge from feature maps"


def check_conclusions(
    table: Sequence[dict], alpha: float = 0.05, field: str = "accs"
) -> dict[str, Any]:
    """The survey's three conclusions, each tested over seeds.

    1. Every KD method beats the student alone: a one-sided Welch t-test per
       method, the p-values Holm-adjusted over the methods (the conclusion
       tests them all at once, so uncorrected, one of 13 would pass by chance
       about half the time), each significant at ``alpha``; and none reaches
       the teacher (mean below it).
    2. Online methods do best: their pooled accuracies beat those of every
       other KD method (one test), and the best row is online.
    3. Structural knowledge beats knowledge extracted from feature maps
       (pooled rows, one test).

    ``field`` is the accuracies tested: ``accs`` (last epoch) or
    ``accs_best_val`` (at the best validation epoch). Each verdict is
    ``True``/``False``, or ``None`` when rows or seeds are missing;
    ``detail`` says what was compared, ``effects`` how large each difference
    is (points, 95% CI, Hedges' g).
    """
    if field not in ("accs", "accs_best_val"):
        raise ValueError(f"field must be 'accs' or 'accs_best_val', got {field!r}")

    def accs(t: dict) -> list[float]:
        return t.get(field) or []

    by_row = {t["row"]: t for t in table if accs(t)}
    student = by_row.get("ResNet20")
    teacher = by_row.get("ResNet56")
    methods = [t for t in table if t["family"] != "direct training" and accs(t)]
    out: dict[str, Any] = {
        "alpha": alpha,
        "test": "one-sided Welch t-test over seeds",
        "accuracy": {
            "accs": "test accuracy at the last epoch",
            "accs_best_val": "test accuracy at the best validation epoch",
        }[field],
        "correction": "Holm over the methods of conclusion 1 (family-wise "
        f"error at {alpha}); conclusions 2 and 3 are one test each",
    }

    c1: dict[str, Any] = {"name": "every KD method beats the student alone"}
    if student is None or not methods:
        c1.update(holds=None, detail="needs the ResNet20 row and some methods")
    else:
        raw = {m["row"]: _welch_greater(accs(m), accs(student)) for m in methods}
        adjusted = dict(zip(raw, stats.holm(list(raw.values())), strict=True))
        beats = [r for r, p in adjusted.items() if p < alpha]
        beats_raw = [r for r, p in raw.items() if p < alpha]
        teacher_mean = _mean(accs(teacher)) if teacher else math.nan
        reaches = [m["row"] for m in methods if _mean(accs(m)) >= teacher_mean]
        untestable = any(math.isnan(p) for p in raw.values())
        c1.update(
            holds=None if untestable else (len(beats) == len(raw) and not reaches),
            p_values=raw,
            p_values_holm=adjusted,
            significantly_better=beats,
            significantly_better_uncorrected=beats_raw,
            reach_teacher=reaches,
            effects={m["row"]: effect(accs(m), accs(student)) for m in methods},
            detail=f"{len(beats)} of {len(raw)} methods significantly above "
            f"ResNet20 after Holm's correction ({len(beats_raw)} uncorrected)"
            + (f"; at or above the teacher: {', '.join(reaches)}" if reaches else ""),
        )
    out["every_method_beats_student"] = c1

    def pooled(rows: list[dict]) -> list[float]:
        return [a for r in rows for a in accs(r)]

    online = [m for m in methods if m["family"] == ONLINE]
    others = [m for m in methods if m["family"] != ONLINE]
    c2: dict[str, Any] = {"name": "online methods do best"}
    if not online or not others:
        c2.update(holds=None, detail="needs online rows and other methods")
    else:
        p = _welch_greater(pooled(online), pooled(others))
        best = max(methods, key=lambda m: _mean(accs(m)))
        c2.update(
            holds=None if math.isnan(p) else bool(p < alpha and best in online),
            p_value=p,
            best_row=best["row"],
            effect=effect(pooled(online), pooled(others)),
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
            effect=effect(pooled(structural), pooled(feature)),
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
    # runs folder, not the run's own), read from the saved results first.
    seconds = _task_seconds(
        [
            (t, results[(t.row.row, t.seed)])
            for t in tasks
            if (t.row.row, t.seed) in results
        ]
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
        # How many runs ran on each CPU; runs recorded before the machine was
        # (session 17 and earlier) count as "not recorded", not as the others'.
        "machine_runs": dict(
            sorted(
                Counter(
                    str(p.get("machine") or "CPU not recorded") for p in prov
                ).items()
            )
        ),
        "threads": distinct("threads"),
        "run_dates": [dates[0], dates[-1]] if dates else [],
        "written_by_commit": _git_commit(),
        "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _machines_line(prov: dict) -> str:
    """Each CPU with its number of runs (older provenance: the device list)."""
    counts = prov.get("machine_runs")
    if not counts:
        return "; ".join(prov["machines"] or prov["devices"])
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(
        f"{cpu} ({n} run{'' if n == 1 else 's'})" for cpu, n in counts.items()
    )


_VERDICT = {True: "holds", False: "does not hold", None: "untested"}


def _write_table(
    out: Path,
    table: list[dict],
    conclusions: dict,
    profile: str,
    missing: list[TableRow],
    settings: str = "",
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        [
            "family",
            "row",
            "method",
            "model",
            "seeds",
            "mean",
            "std",
            "mean_at_best_val",
            "survey",
            "diff",
        ]
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
                f"{t.get('mean_best_val', math.nan):.2f}",
                f"{t['survey_acc']:.2f}",
                f"{t['diff']:+.2f}",
            ]
        )
    atomic_write_bytes(out / "table.csv", buf.getvalue().encode())
    prov = conclusions.get("provenance", {})
    lines = [
        f"Table 1 reproduced with profile `{profile}` (this run's numbers) beside "
        "the survey's (CIFAR-10, ResNet56 -> ResNet20)"
        + (f", {settings}" if settings else "")
        + ". Test accuracy at the last epoch; beside it, at the epoch with the "
        "best validation accuracy (chosen without the test set).",
        "",
    ]
    if prov:
        dates = " to ".join(dict.fromkeys(prov["run_dates"])) or "unknown"
        lines += [
            f"- data: {', '.join(prov['dataset'])}; seeds {prov['seeds']}; "
            f"{prov['runs']} runs ({prov['runs_with_stages']} with the pipelines' "
            f"earlier stages), {prov['train_seconds'] / 3600:.2f} h of recorded training"
            + (f", under {prov['amp']} autocast" if prov.get("amp") else ", float32"),
            f"- computed on: {_machines_line(prov)}; "
            f"{', '.join(prov['threads'])} "
            f"thread{'' if prov['threads'] == ['1'] else 's'} a run; {dates}",
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
        "| family | row | model | this run, last epoch (%) | at best val. epoch (%) "
        "| seeds | survey (%) | diff |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for t in table:
        ours = (
            f"{t['mean']:.2f} ± {t['std']:.2f}"
            if len(t["accs"]) > 1
            else (f"{t['mean']:.2f}" if t["accs"] else "missing")
        )
        diff = f"{t['diff']:+.2f}" if t["accs"] else ""
        at_val = t.get("mean_best_val", math.nan)
        at_val = "" if math.isnan(at_val) else f"{at_val:.2f}"
        lines.append(
            f"| {t['family']} | {t['row']} | {t['model'] or ''} | {ours} | {at_val} "
            f"| {len(t['accs'])} | {t['survey_acc']:.2f} | {diff} |"
        )
    lines.append("")
    for key in CONCLUSIONS:
        c = conclusions[key]
        lines.append(f"- {c['name']}: **{_VERDICT[c['holds']]}** ({c['detail']})")
        at_val = conclusions.get("at_best_val", {}).get(key)
        if at_val is not None:
            lines.append(
                f"  - at the best validation epoch: **{_VERDICT[at_val['holds']]}** "
                f"({at_val['detail']})"
            )
    lines.append("")
    lines.append(f"Tests: {conclusions['test']}; {conclusions['correction']}.")
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
