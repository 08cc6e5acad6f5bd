"""Reproduce the survey's Table 1: every row, every seed, resumable, local or Ray.

``reproduce(profile, seeds)`` runs each row of Table 1 (two direct-training
baselines and the distillation methods; ``kdutils/survey_table1.csv``) for each
seed and writes, under ``out``::

    runs/<row>-s<seed>.json   one Result per run (config, history, provenance)
    table.csv, table.md       mean ± std per row, the survey's number, the gap
    conclusions.json          the survey's three conclusions, tested
    extra.csv, extra.md       with ``extra=True`` (``--extra``): the methods
                              published after the survey, beside Table 1

Two rows are multi-stage pipelines (the file's ``pipeline`` column): TAKD is
``kdutils.pipelines.takd`` (teacher -> assistant -> student, all KD) and ALTKD
is ``kdutils.pipelines.multi_teacher`` (3 teachers trained alone, then an
``amtmlkd`` student); their models per profile are in ``kdutils.profiles.PIPELINE_MODELS``.
Such a row's Result is its pipeline's last stage, the student; the earlier
stages are ordinary runs in the run cache, shared with the chapters that run
the same pipeline.

A run whose JSON exists (with this row's config) is not run again, and a run
interrupted mid-way resumes from its checkpoint in the run cache, so a killed
reproduction restarts where it stopped. Rows whose method is not in this
version of kdutils are listed as missing, never filled in.

Executors: ``local`` runs one after another in this process; ``ray``
dispatches runs to a Ray cluster (``ray.init(address=...)``): first every
teacher, then the pipelines' intermediate stages (TAKD's assistant), each
distinct run once, then the rows, every worker receiving the finished runs'
weights through Ray's object store, so workers need no shared file system.

The package's modules, each with one reason to change:

- ``rows``: Table 1's rows (:class:`TableRow`, ``table1_rows``), their
  settings and pipelines, how a row is planned and run, and when a saved row
  counts as done;
- ``executors``: the tasks (a row at a seed), the ETA, and the executors
  (``EXECUTORS``: ``local`` and ``ray``);
- ``tune``: the search of each method's main knob on the validation split
  (``reproduce(tune=True)``);
- ``report``: the statistics (``aggregate``, ``check_conclusions``) and the
  files written (table.csv, table.md, conclusions.json, with provenance);
- this module: ``reproduce()``, which plans, resumes, runs and reports.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..distillers import METHODS
from ..errors import CorruptArtifact
from ..loop import check_amp
from ..results import Result, set_aside
from .executors import EXECUTORS, _eta_seconds, _Task, _with_stages
from .report import (
    CONCLUSIONS,
    _table_provenance,
    _write_extra,
    _write_table,
    aggregate,
    check_conclusions,
)
from .rows import EXTRA_FAMILY, TableRow, extra_rows, table1_rows
from .tune import TUNE_SEED, TUNING
from .tune import tune as tune_rows

__all__ = [
    "TableRow",
    "extra_rows",
    "table1_rows",
    "reproduce",
    "check_conclusions",
    "aggregate",
    "EXECUTORS",
    "TUNING",
    "TUNE_SEED",
]


def _fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def reproduce(
    profile: str = "quick",
    seeds: Iterable[int] = (0, 1, 2),
    out: str | os.PathLike | None = None,
    executor: str = "local",
    rows: Sequence[str] | None = None,
    overrides: dict[str, Any] | None = None,
    amp: str | None = None,
    extra: bool = False,
    tune: bool = False,
    tune_seed: int = TUNE_SEED,
    **executor_args: Any,
) -> dict[str, Any]:
    """Run Table 1 and write the per-run results, the table and the conclusions.

    ``rows`` restricts the reproduction to some rows (by name, e.g. ``["KD"]``);
    ``overrides`` are config overrides for every run (tests use the digits
    data). ``amp`` (``"bf16"``, or ``"fp16"`` on CUDA) trains every run under
    autocast, as ``kd.run(amp=...)``: other runs than the float32 ones, kept
    by default in ``results/table1/<profile>-<amp>``. ``extra`` adds the
    methods published after the survey (``extra_rows``) as rows of their own,
    written to ``extra.csv``/``extra.md`` beside the table and never mixed
    into it or its conclusions. ``tune`` first searches each method's main
    knob on the validation split with seed ``tune_seed`` (``tune.tune``) and
    runs the rows with the chosen settings, kept by default in
    ``results/table1/<profile>-tuned``; without it every row runs with its
    authors' defaults. A tuned reproduction reads the untuned one beside it
    (``<out>/../<profile>/runs``): a row whose search kept its defaults has
    the same config there, and its recorded runs are copied, not trained
    again. Returns ``{"table": [...], "conclusions": {...},
    "missing": [...], "extra": [...], "tuned": {row: args}}``.
    """
    check_amp(amp)
    if executor not in EXECUTORS:
        raise ValueError(
            f"unknown executor {executor!r}; choose from: {', '.join(EXECUTORS)}"
        )
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("give at least one seed")
    all_rows = table1_rows() + (extra_rows() if extra else [])
    if rows is not None:
        names = {r.row.lower(): r for r in all_rows}
        unknown = [r for r in rows if r.lower() not in names]
        if unknown:
            raise ValueError(
                f"unknown Table-1 row(s) {unknown}; choose from: "
                + ", ".join(r.row for r in all_rows)
            )
        all_rows = [names[r.lower()] for r in rows]
    default = profile if amp is None else f"{profile}-{amp}"
    if tune:
        default += "-tuned"
        if tune_seed in seeds:
            raise ValueError(
                f"the tuning seed {tune_seed} is also a reported seed: choose "
                "another (the run that wins the search must not be averaged)"
            )
    out = Path(out) if out is not None else Path("results") / "table1" / default
    runs_dir = out / "runs"
    # A tuned reproduction reads the untuned one beside it: a row whose chosen
    # setting is its default has the same config, so the same runs.
    untuned = profile if amp is None else f"{profile}-{amp}"
    reuse_dir = out.parent / untuned / "runs" if tune else None

    missing = [r for r in all_rows if not r.available]
    for r in missing:
        what = (
            f"method {r.method!r}"
            if r.method not in METHODS
            else f"pipeline {r.pipeline!r}"
        )
        print(f"[missing] {r.row}: {what} is not in this kdutils yet")
    chosen: dict[str, dict[str, Any]] = {}
    if tune:
        chosen = tune_rows(
            [r for r in all_rows if r.available and r.family != EXTRA_FAMILY],
            profile,
            out,
            seed=tune_seed,
            executor=executor,
            overrides=overrides,
            amp=amp,
            **executor_args,
        )
        all_rows = [
            dataclasses.replace(r, args={**r.args, **chosen[r.row]})
            if r.row in chosen
            else r
            for r in all_rows
        ]
    tasks = [
        _Task(r, s, r.config(profile, s, **(overrides or {})), amp=amp)
        for r in all_rows
        if r.available
        for s in seeds
    ]
    # Only now, with every config checked (a bad profile or value has raised).
    runs_dir.mkdir(parents=True, exist_ok=True)
    results: dict[tuple[str, int], Result] = {}
    todo = []
    reused = 0
    for t in tasks:
        path = runs_dir / t.filename
        if not path.exists() and reuse_dir is not None:
            res = t.recorded_in(reuse_dir / t.filename)
            if res is not None:
                res.save(path)  # the tuned table's folder holds all its runs
                results[(t.row.row, t.seed)] = res
                reused += 1
                continue
        if path.exists():
            try:
                res = Result.load(path)
            except CorruptArtifact as e:
                moved = set_aside(path, out / "set-aside")
                print(f"[corrupt] {e}; moved to {moved}; running {t.label} again")
                todo.append(t)
                continue
            if t.is_done_by(res):
                results[(t.row.row, t.seed)] = res
                continue
            print(f"[stale] {t.label}: {path} has another config; running again")
        todo.append(t)
    if reused:
        print(
            f"[reuse] {reused} runs with the authors' settings, recorded in {reuse_dir}"
        )
    if len(results) > reused:
        print(
            f"[resume] {len(results) - reused} of {len(tasks)} runs already done "
            f"in {out}"
        )

    finished: set[str] = set()

    def done(task: _Task, res: Result) -> None:
        finished.add(task.label)
        _with_stages(task, res).save(runs_dir / task.filename)
        results[(task.row.row, task.seed)] = res
        left = [t for t in todo if t.label not in finished]
        line = f"[{len(results)}/{len(tasks)}] {task.label}: {100 * res.test_acc:.2f}%"
        if left:
            eta, n_train = _eta_seconds(left, results, getattr(done, "parallel", 1))
            line += f"  ({len(left)} more, {n_train} to train" + (
                f", ETA {_fmt_duration(eta)})" if eta is not None else ")"
            )
        print(line, flush=True)

    EXECUTORS[executor](todo, done, **executor_args)

    survey_rows = [r for r in all_rows if r.family != EXTRA_FAMILY]
    table = aggregate(survey_rows, results)
    conclusions = check_conclusions(table)
    conclusions["settings"] = (
        {
            "mode": "tuned on validation",
            "tuning": "tuning.json",
            "seed": tune_seed,
            "args": chosen,
        }
        if tune
        else {"mode": "the authors' default settings"}
    )
    conclusions["at_best_val"] = {
        k: v
        for k, v in check_conclusions(table, field="accs_best_val").items()
        if k in CONCLUSIONS
    }
    conclusions["provenance"] = _table_provenance(
        profile,
        seeds,
        [t for t in tasks if t.row.family != EXTRA_FAMILY],
        results,
        amp,
    )
    _write_table(
        out,
        table,
        conclusions,
        profile,
        missing,
        settings=(
            "each method's main knob tuned on the validation split (tuning.json)"
            if tune
            else "every method with its authors' default settings"
        ),
    )
    extra_table = aggregate([r for r in all_rows if r.family == EXTRA_FAMILY], results)
    if extra_table:
        _write_extra(out, extra_table, table, profile)
    return {
        "table": table,
        "conclusions": conclusions,
        "missing": [r.row for r in missing],
        "extra": extra_table,
        "out": str(out),
        "tuned": chosen,
    }
