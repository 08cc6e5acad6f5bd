"""Tuning on the validation split: each method's main knob, chosen without the test set.

Table 1's methods come with loss weights chosen by their authors for CIFAR
and 240 epochs. At another scale those may not transfer, and a method that
loses with its defaults may win with a weight that suits the scale. So
``reproduce(tune=True)`` first searches each method's main knob (:data:`TUNING`)
on the validation split, with one seed, and then runs the chosen setting with
every seed and evaluates it on test.

The search, per method, is a coordinate search over the knobs listed for it:
the first knob (the weight of its distillation term) takes each value of its
grid with the other knobs at their defaults, the best is kept, then the next
knob (the temperature, for methods that soften logits) takes each of its
values, and so on. Grids are factors of the default on a log scale (by
default 1/3, 1, 3; the temperature 1/2, 1, 2), so the default is always one of
the candidates. The criterion is the validation accuracy at the last epoch
(the epoch the tables report); a tie keeps the value closest to the default.

Nothing here reads a test accuracy: :func:`val_score` is the only number a
choice is made on. The tuning runs use their own seed (:data:`TUNE_SEED`), one
that no reported row uses, so the run that won the search (and so is likely
a lucky one) is not among the runs the table averages.

The tuning runs are ordinary runs of the run cache (cached, resumable, shared
with any chapter that asks for the same config); each is also saved under
``<out>/tuning/`` with its provenance, and ``<out>/tuning.json`` records every
candidate's validation accuracy and the choice.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CorruptArtifact
from ..provenance import git_commit
from ..results import Result, atomic_write_bytes, set_aside
from ..runs import run_dir
from .executors import EXECUTORS, _Task, _task_seconds, _with_stages
from .rows import TableRow

# The seed of every tuning run: none of the reported seeds (0, 1, 2, ...).
TUNE_SEED = 100


@dataclass(frozen=True)
class Knob:
    """One setting the search tunes: the method arguments it scales together
    (each the default times one factor) and its grid of factors. An integer
    argument (a stage's length in epochs) is rounded, at least 1."""

    label: str
    args: tuple[str, ...]
    factors: tuple[float, ...] = (1 / 3, 1.0, 3.0)
    integer: bool = False

    def values(self, defaults: dict[str, Any]) -> list[dict[str, Any]]:
        """The candidate settings, in grid order, each ``{arg: value}``;
        equal candidates (after rounding) appear once."""
        missing = [a for a in self.args if a not in defaults]
        if missing:
            raise ValueError(f"knob {self.label!r}: no default for {missing}")
        out: list[dict[str, Any]] = []
        for f in self.factors:
            cand = {a: self._scale(defaults[a], f) for a in self.args}
            if cand not in out:
                out.append(cand)
        return out

    def _scale(self, value: float, factor: float) -> float | int:
        if self.integer:
            return max(1, round(value * factor))
        # Three significant digits: a value that prints as it is.
        return float(f"{value * factor:.3g}")

    def distance(self, cand: dict[str, Any], defaults: dict[str, Any]) -> float:
        """How far a candidate is from the defaults (log scale): ties go to
        the nearest."""
        return sum(
            abs(math.log(cand[a] / defaults[a])) if defaults[a] else abs(cand[a])
            for a in self.args
        )


_T = (1 / 2, 1.0, 2.0)

# Each method's knobs, searched in this order. The first is the weight of its
# distillation term; the logit methods then their temperature.
TUNING: dict[str, tuple[Knob, ...]] = {
    "kd": (Knob("KD weight", ("kd_weight",)), Knob("T", ("T",), _T)),
    "crd": (Knob("CRD weight", ("crd_weight",)),),
    "fitnet": (Knob("hint weight", ("hint_weight",)),),
    "at": (Knob("AT weight", ("at_weight",)),),
    "afd": (Knob("AFD weight", ("afd_weight",)),),
    # FSP's distillation is its first stage (the FSP-matrix loss alone); the
    # second stage is the task loss alone, so its knob is the first stage's
    # length: the default (scaled to the run's epochs) times 1, 2, 4.
    "fsp": (Knob("FSP stage epochs", ("init_epochs",), (1.0, 2.0, 4.0), True),),
    "rkd": (Knob("RKD weight", ("rkd_weight",)),),
    # IRG's two terms (edges, transformations) scaled together.
    "irg": (Knob("IRG weights", ("edge_weight", "transform_weight")),),
    "sp": (Knob("SP weight", ("sp_weight",)),),
    "dml": (Knob("mutual KL weight", ("kl_weight",)), Knob("T", ("T",), _T)),
    "one": (Knob("ensemble KL weight", ("kl_weight",)), Knob("T", ("T",), _T)),
    "okddip": (Knob("peer KL weight", ("kl_weight",)), Knob("T", ("T",), _T)),
    "amtmlkd": (Knob("KD weight", ("kd_weight",)), Knob("T", ("T",), _T)),
}


def tunable(row: TableRow) -> bool:
    """Whether the search tunes this row (the distillation rows)."""
    return row.family != "direct training" and row.method in TUNING


def val_score(res: Result) -> float:
    """The number a choice is made on: validation accuracy at the last epoch."""
    v = res.final.get("val_acc")
    if v is None or not math.isfinite(v):
        raise ValueError(
            f"run {res.name} has no validation accuracy: tuning needs a "
            "validation split (Config.val_fraction > 0)"
        )
    return float(v)


def choose(
    candidates: Sequence[dict[str, Any]],
    scores: Sequence[float],
    knob: Knob,
    defaults: dict[str, Any],
) -> dict[str, Any]:
    """The candidate with the highest score; a tie keeps the one nearest the
    defaults."""
    if not candidates or len(candidates) != len(scores):
        raise ValueError("need one score per candidate")
    best = max(scores)
    tied = [c for c, s in zip(candidates, scores, strict=True) if s == best]
    return min(tied, key=lambda c: knob.distance(c, defaults))


def _signature(args: dict[str, Any], sep: str = "_") -> str:
    """A candidate's settings, ``T=8_kd_weight=2.7`` (a file-name part), or
    with ``sep=", "`` as printed."""
    return sep.join(f"{k}={v:g}" for k, v in sorted(args.items()))


def tune(
    rows: Sequence[TableRow],
    profile: str,
    out: Path,
    seed: int = TUNE_SEED,
    executor: str = "local",
    overrides: dict[str, Any] | None = None,
    amp: str | None = None,
    **executor_args: Any,
) -> dict[str, dict[str, Any]]:
    """Search the knobs of every tunable row; return ``{row: chosen args}``.

    Rows the search does not tune are left out of the returned mapping.
    Every step runs all rows' candidates through ``executor`` at once (the
    rows are independent), then chooses; a finished candidate is read back
    from ``<out>/tuning/`` or the run cache, so an interrupted search resumes.
    """
    if executor not in EXECUTORS:
        raise ValueError(
            f"unknown executor {executor!r}; choose from: {', '.join(EXECUTORS)}"
        )
    rows = [r for r in rows if tunable(r)]
    runs_dir = out / "tuning"
    runs_dir.mkdir(parents=True, exist_ok=True)
    overrides = dict(overrides or {})
    defaults = {
        r.row: dict(r.config(profile, seed, **overrides).method_args) for r in rows
    }
    chosen = {r.row: {} for r in rows}  # the knobs decided so far
    record: dict[str, Any] = {r.row: {"method": r.method, "steps": []} for r in rows}
    searched: list[tuple[_Task, Result]] = []
    step = 0
    while True:
        step_rows = [r for r in rows if step < len(TUNING[r.method])]
        if not step_rows:
            break
        cands: dict[str, list[dict[str, Any]]] = {}
        tasks: list[_Task] = []
        for r in step_rows:
            knob = TUNING[r.method][step]
            cands[r.row] = knob.values(defaults[r.row])
            for c in cands[r.row]:
                args = {**chosen[r.row], **c}
                row = dataclasses.replace(r, args={**r.args, **args})
                tasks.append(
                    _Task(row, seed, row.config(profile, seed, **overrides), amp=amp)
                )
        ran = _run_step(tasks, runs_dir, executor, **executor_args)
        searched += ran.values()
        for r in step_rows:
            knob = TUNING[r.method][step]
            got = [
                _score(*ran[(r.row, _signature({**chosen[r.row], **c}))])
                for c in cands[r.row]
            ]
            pick = choose(cands[r.row], [s for s, _ in got], knob, defaults[r.row])
            before = dict(chosen[r.row])
            chosen[r.row].update(pick)
            record[r.row]["steps"].append(
                {
                    "knob": knob.label,
                    "args": list(knob.args),
                    "defaults": {a: defaults[r.row][a] for a in knob.args},
                    "candidates": [
                        {"args": {**before, **c}, "val_acc": s, "run": run_id}
                        for c, (s, run_id) in zip(cands[r.row], got, strict=True)
                    ],
                    "chosen": pick,
                }
            )
        step += 1
    for r in rows:
        record[r.row]["chosen"] = chosen[r.row]
        record[r.row]["changed"] = {
            a: v for a, v in chosen[r.row].items() if v != defaults[r.row][a]
        }
    atomic_write_bytes(
        out / "tuning.json",
        json.dumps(
            {
                "profile": profile,
                "seed": seed,
                "amp": amp,
                "criterion": "validation accuracy at the last epoch (seed "
                f"{seed}, not a reported seed); ties keep the value nearest the "
                "default; knobs searched one after another (coordinate search)",
                "grids": {
                    m: [
                        {"knob": k.label, "args": list(k.args), "factors": k.factors}
                        for k in TUNING[m]
                    ]
                    for m in sorted({r.method for r in rows})
                },
                "rows": record,
                **_search_cost(searched),
                "written_by_commit": git_commit(),
                "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            indent=1,
        ).encode(),
    )
    return chosen


def _search_cost(tasks: Sequence[tuple[_Task, Result]]) -> dict[str, Any]:
    """The search's own runs, each once, and their recorded training time:
    every stage of every candidate but the teachers trained alone (``ce``),
    which the search shares with the default table; read from the candidates'
    records (see :func:`~kdutils.reproduce.executors._task_seconds`)."""
    seconds = _task_seconds(tasks, skip_methods=("ce",))
    return {
        "search_runs": len(seconds),
        "train_seconds": round(sum(seconds.values()), 1),
    }


def _score(t: _Task, res: Result) -> tuple[float, str]:
    """A candidate's validation accuracy and its run's id (cache folder)."""
    return val_score(res), run_dir(t.final, amp=t.amp).name


def _run_step(
    tasks: Sequence[_Task], runs_dir: Path, executor: str, **executor_args: Any
) -> dict[tuple[str, str], tuple[_Task, Result]]:
    """Run (or read back) every candidate; ``{(row, args signature): (task,
    result)}``."""
    ran: dict[tuple[str, str], tuple[_Task, Result]] = {}

    def path(t: _Task) -> Path:
        return runs_dir / f"{t.row.slug}-{_signature(t.row.args)}.json"

    def keep(t: _Task, res: Result) -> None:
        ran[(t.row.row, _signature(t.row.args))] = (t, res)

    # A later knob's grid holds the setting an earlier step already ran (the
    # chosen weight at the default temperature): under another file name, the
    # same config, so the same run, read back, not run again.
    recorded = sorted(runs_dir.glob("*.json"))

    def same_run(t: _Task) -> Result | None:
        for q in recorded:
            if q.name.startswith(f"{t.row.slug}-"):
                res = t.recorded_in(q)
                if res is not None:
                    return res
        return None

    todo = []
    for t in tasks:
        p = path(t)
        if p.exists():
            try:
                res = Result.load(p)
            except CorruptArtifact as e:
                moved = set_aside(p, runs_dir.parent / "set-aside")
                print(f"[corrupt] {e}; moved to {moved}")
            else:
                if t.is_done_by(res):
                    keep(t, res)
                    continue
        res = same_run(t)
        if res is not None:
            keep(t, res)
            continue
        todo.append(t)
    n_done = len(tasks) - len(todo)
    if n_done:
        print(f"[tune] {n_done} of {len(tasks)} candidates already done")

    def done(t: _Task, res: Result) -> None:
        _with_stages(t, res).save(path(t))
        keep(t, res)
        print(
            f"[tune] {t.row.row} {_signature(t.row.args, ', ')}: validation "
            f"{100 * val_score(res):.2f}%",
            flush=True,
        )

    run: Callable[..., None] = EXECUTORS[executor]
    run(todo, done, **executor_args)
    return ran
