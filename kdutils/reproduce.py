"""Reproduce the survey's Table 1: every row, every seed, resumable, local or Ray.

``reproduce(profile, seeds)`` runs each row of Table 1 (two direct-training
baselines and the distillation methods; ``kdutils/survey_table1.csv``) for each
seed and writes, under ``out``::

    runs/<row>-s<seed>.json   one Result per run (config, history, provenance)
    table.csv, table.md       mean ± std per row, the survey's number, the gap
    conclusions.json          the survey's three conclusions, tested

Two rows are multi-stage pipelines (the file's ``pipeline`` column): TAKD is
``kdutils.pipelines.takd`` (teacher -> assistant -> student, all KD) and ALTKD
is ``kdutils.pipelines.multi_teacher`` (3 teachers trained alone, then an
``amtmlkd`` student); their models per profile are in ``_PIPELINES``. Such a
row's Result is its pipeline's last stage, the student; the earlier stages are
ordinary runs in the run cache, shared with the chapters that run the same
pipeline.

A run whose JSON exists (with this row's config) is not run again, and a run
interrupted mid-way resumes from its checkpoint in the run cache, so a killed
reproduction restarts where it stopped. Rows whose method is not in this
version of kdutils are listed as missing, never filled in.

Executors: ``local`` runs one after another in this process; ``ray``
dispatches runs to a Ray cluster (``ray.init(address=...)``): first every
teacher, then the pipelines' intermediate stages (TAKD's assistant), each
distinct run once, then the rows, every worker receiving the finished runs'
weights through Ray's object store, so workers need no shared file system.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import os
import re
import tarfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import pipelines
from .config import Config, make_config, teacher_config
from .distillers import METHODS, get_method
from .errors import CorruptArtifact
from .results import Result, atomic_write_bytes, set_aside, survey_table1
from .runs import MEASURED_ONLY
from .train import _git_commit, check_amp, run, run_dir

__all__ = [
    "TableRow",
    "table1_rows",
    "reproduce",
    "check_conclusions",
    "aggregate",
    "EXECUTORS",
]

# Row-specific settings beyond the profile (Table 1's peers, branches, teachers).
# The online rows learn without a pre-trained teacher: their 3 students or
# branches (the methods' defaults) train together, and one of them is scored.
_ROW_ARGS: dict[str, dict[str, Any]] = {
    "dml": {"teacher": None},
    "one": {"teacher": None},
    "okddip": {"teacher": None},
}

# Row settings that are lengths of a schedule, given for the paper's 240
# epochs and scaled to the profile's (at least 1 epoch), as the chapters scale
# them: FSP's first stage (Yim et al.'s 30 epochs of FSP matching), which the
# 8-epoch quick profile would otherwise run in full, training its student 38
# epochs where every other row trains 8.
_SCHEDULED_ARGS: dict[str, dict[str, int]] = {
    "fsp": {"init_epochs": 30},
}
_PAPER_EPOCHS = 240


def scaled_row_args(method: str, epochs: int) -> dict[str, int]:
    """``method``'s schedule-length settings for an ``epochs``-epoch run."""
    return {
        k: max(1, round(v * epochs / _PAPER_EPOCHS))
        for k, v in _SCHEDULED_ARGS.get(method, {}).items()
    }


# The rows that are pipelines (functions of ``kdutils.pipelines``, called as
# ``fn(cfg, models)``): the models each profile passes them.
_PIPELINES: dict[str, dict[str, list[str]]] = {
    # TAKD's assistants: the survey's ResNet32 between ResNet56 and ResNet20;
    # quick and smoke bridge their own teacher and student (chapter 12's).
    "takd": {
        "paper": ["resnet32"],
        "quick": ["resnet20"],
        "smoke": ["resnet8_w16-20-40-80"],
    },
    # ALTKD's teachers, the profile's own teacher first: the survey's 3.
    "multi_teacher": {
        "paper": ["resnet56", "resnet44", "resnet32"],
        "quick": ["resnet32", "resnet20", "resnet14"],
        "smoke": ["resnet14", "resnet8_w16-20-40-80"],
    },
}
# Pipelines whose student is evaluated only after its last epoch, as the
# chapter that runs the same pipeline does (so the two share their runs).
_EVAL_ONCE = {"takd"}
# Rows whose method's chapter (3, 4, 5) evaluates it only after the last
# epoch: the table needs no more (only final accuracies enter it), and the
# same config shares the chapter's runs. The baselines and the online rows
# keep per-epoch evaluation, as chapters 1 and 6, which plot their curves.
_EVAL_ONCE_METHODS = {"crd", "fitnet", "at", "afd", "fsp", "rkd", "irg", "sp"}


def _pipeline_fn(name: str) -> Callable[..., list[Result]]:
    return getattr(pipelines, name)


def _execute(
    cfg: Config, pipeline: str, models: Sequence[str], run: Callable[..., Result]
) -> Result:
    """One row's run: ``cfg`` itself, or its pipeline's last stage (the student)."""
    if not pipeline:
        return run(cfg, progress=False)
    return _pipeline_fn(pipeline)(cfg, list(models), run=run, progress=False)[-1]


@dataclass(frozen=True)
class TableRow:
    """One row of Table 1 and how to run it.

    ``method`` is what the row's student runs; ``pipeline`` names the
    ``kdutils.pipelines`` function that produces it when the row is a chain
    of runs (TAKD, ALTKD), else "".
    """

    family: str
    row: str
    method: str
    survey_acc: float
    note: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    pipeline: str = ""

    @property
    def slug(self) -> str:
        return self.row.lower().replace(" ", "-")

    @property
    def available(self) -> bool:
        return self.method in METHODS and (
            not self.pipeline or self.pipeline in _PIPELINES
        )

    @property
    def is_teacher_row(self) -> bool:
        return self.family == "direct training" and self.row != "ResNet20"

    def pipeline_models(self, profile: str) -> list[str]:
        """The models this pipeline row passes its pipeline in ``profile``."""
        if not self.pipeline:
            return []
        by_profile = _PIPELINES[self.pipeline]
        if profile not in by_profile:
            raise ValueError(
                f"row {self.row}: no {self.pipeline} models for profile "
                f"{profile!r}; known: {', '.join(by_profile)}"
            )
        return list(by_profile[profile])

    def config(self, profile: str, seed: int, **overrides: Any) -> Config:
        """This row's run at ``seed`` in ``profile`` (a pipeline row: its input)."""
        if self.is_teacher_row:
            # The teacher trained alone, one run per seed (Table 1's ResNet56).
            # Seed 0 is the very run that teaches every student.
            base = make_config(profile, method="kd", **overrides)
            return teacher_config(base).replace(seed=seed)
        args = {**self.args, **overrides}
        epochs = make_config(profile, method=self.method, **args).epochs
        args = {**scaled_row_args(self.method, epochs), **args}
        cfg = make_config(profile, method=self.method, seed=seed, **args)
        if (
            self.pipeline in _EVAL_ONCE or self.method in _EVAL_ONCE_METHODS
        ) and "eval_every" not in overrides:
            cfg = cfg.replace(eval_every=cfg.epochs)
        return cfg

    def plan(self, cfg: Config, amp: str | None = None) -> list[Config]:
        """Every run this row makes from ``cfg``, in order; the last is its Result's.

        A plain row: ``[cfg]`` (its teacher, if any, is trained by ``kd.run``).
        A pipeline row: the pipeline's stages, found by calling it with a
        ``run`` that trains nothing (each stage's run id is its cache folder's
        name, which ``run_dir`` computes without training; under ``amp`` the
        stages are other runs, in other folders).
        """
        if not self.pipeline:
            return [cfg]
        planned: list[Config] = []

        def dry_run(c: Config, **_: Any) -> Result:
            planned.append(c)
            return Result(
                name=c.name,
                key="",
                config=c.to_dict(),
                history=[],
                final={"test_acc": math.nan, "train_seconds": 0.0},
                provenance={},
                path=str(run_dir(c, amp=amp)),
            )

        models = self.pipeline_models(cfg.profile)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                _pipeline_fn(self.pipeline)(cfg, models, run=dry_run)
        except ValueError as e:
            raise ValueError(
                f"Table-1 row {self.row} ({self.pipeline} with {models}): {e}"
            ) from None
        return planned

    def execute(self, cfg: Config, run: Callable[..., Result] | None = None) -> Result:
        """Run this row from ``cfg`` (finished stages come from the run cache)."""
        if run is None:
            run = _kd_run()
        return _execute(cfg, self.pipeline, self.pipeline_models(cfg.profile), run)


def _kd_run() -> Callable[..., Result]:
    """``kd.run``, looked up when called (tests replace it to count runs)."""
    return run


def table1_rows() -> list[TableRow]:
    """Table 1's rows, in the survey's order."""
    return [
        TableRow(
            r["family"],
            r["row"],
            r["method"],
            r["survey_acc"],
            r["note"],
            _ROW_ARGS.get(r["method"], {}),
            r.get("pipeline") or "",
        )
        for r in survey_table1()
    ]


# A run id's cache key (``run_id``: "<name>-<12 hex>", maybe "@e<N>" after).
_RUN_KEY = re.compile(r"-[0-9a-f]{12}(?=(@e\d+)?$)")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config with its ``teacher_runs`` named without their cache keys,
    and without what only decides what is measured (``runs.MEASURED_ONLY``).

    A saved row counts as done when its config is the one the row would run
    now. The keys in ``teacher_runs`` (a pipeline's earlier stages) also hash
    the training code, which a plain row's config does not; compared without
    them, a pipeline row goes stale when its stages' configs change, and not
    when only the code does, like a plain row.
    """
    runs = config.get("teacher_runs") or []
    kept = {k: v for k, v in config.items() if k not in MEASURED_ONLY}
    return {**kept, "teacher_runs": [_RUN_KEY.sub("", r) for r in runs]}


@dataclass
class _Task:
    row: TableRow
    seed: int
    cfg: Config  # the row's config (a pipeline row: the pipeline's input)
    plan: list[Config] = field(default_factory=list)  # TableRow.plan(cfg, amp)
    amp: str | None = None  # kd.run's mixed precision for every run of the task

    def __post_init__(self) -> None:
        if not self.plan:
            self.plan = self.row.plan(self.cfg, self.amp)

    @property
    def final(self) -> Config:
        """The config of the run whose Result is this task's."""
        return self.plan[-1]

    @property
    def label(self) -> str:
        return f"{self.row.row} s{self.seed}"

    @property
    def filename(self) -> str:
        return f"{self.row.slug}-s{self.seed}.json"

    def is_done_by(self, res: Result) -> bool:
        """Whether a saved Result is this task's run (see :func:`_comparable`),
        trained in this task's precision."""
        return (res.provenance.get("amp") or None) == self.amp and _comparable(
            res.config
        ) == _comparable(self.final.to_dict())

    def runner(self) -> Callable[..., Result]:
        """``kd.run`` in this task's precision."""
        return functools.partial(run, amp=self.amp) if self.amp else run


def _in_cache(task: _Task) -> bool:
    """Whether every run of ``task`` is already in the run cache (no training)."""
    return all((run_dir(c, amp=task.amp) / "result.json").exists() for c in task.plan)


def _eta_seconds(
    left: Sequence[_Task], known: dict[tuple[str, int], Result], parallel: int = 1
) -> tuple[float | None, int]:
    """Seconds the runs in ``left`` will take, from the runs already in hand,
    and how many of them must train.

    A run found in the run cache costs nothing; any other costs what its row's
    finished runs took to train (their recorded ``train_seconds``), or, for a
    row with none yet, the mean over all finished runs. The seconds are
    ``None`` while no run has a recorded time. ``parallel`` runs go at once
    (Ray's slots).
    """
    times: dict[str, list[float]] = {}
    for (row, _), res in known.items():
        t = res.final.get("train_seconds")
        if t is not None and math.isfinite(t):
            times.setdefault(row, []).append(float(t))
    to_train = [t for t in left if not _in_cache(t)]
    if not to_train:
        return 0.0, 0
    if not times:
        return None, len(to_train)
    overall = [x for v in times.values() for x in v]
    mean_all = sum(overall) / len(overall)
    total = sum(
        (sum(times[t.row.row]) / len(times[t.row.row]))
        if t.row.row in times
        else mean_all
        for t in to_train
    )
    return total / max(1, min(parallel, len(to_train))), len(to_train)


# Executors: each takes the tasks still to run and calls ``done(task, result)``
# as runs finish (in any order). An executor that runs several at once sets
# ``done.parallel`` to how many, for the ETA.


def _run_local(tasks: Sequence[_Task], done: Callable, **_: Any) -> None:
    for task in tasks:
        done(task, task.row.execute(task.cfg, run=task.runner()))


def _export_run(res: Result) -> bytes:
    """A finished run's folder (result.json, model.pt) as tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("result.json", "model.pt", *sorted(res.files or {})):
            if name not in tar.getnames():
                tar.add(Path(res.path) / name, arcname=name)
    return buf.getvalue()


def _import_run(cfg_dict: dict, blob: bytes, amp: str | None = None) -> None:
    """Unpack an exported run into this machine's cache, unless it is there."""
    folder = run_dir(Config.from_dict(cfg_dict), amp=amp)
    if (folder / "result.json").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member).read()
            atomic_write_bytes(folder / member.name, data)


def _ray_worker(
    cfg_dict: dict,
    teachers: list[tuple[dict, bytes]],
    export: bool,
    pipeline: str = "",
    models: Sequence[str] = (),
    amp: str | None = None,
) -> tuple[str, bytes | None]:
    """Runs on a Ray worker: import the finished runs, run, return the Result JSON.

    ``teachers`` are exported runs (teachers, assistants) as ``(config,
    tar bytes)``; with ``pipeline``, ``cfg_dict`` is a pipeline row's input
    and the pipeline runs here, its earlier stages loaded from those runs
    (any stage not among them is trained here, in this worker's cache).
    """
    for t_cfg, blob in teachers:
        _import_run(t_cfg, blob, amp)
    runner = functools.partial(run, amp=amp) if amp else run
    res = _execute(Config.from_dict(cfg_dict), pipeline, models, runner)
    return res.to_json(), (_export_run(res) if export else None)


def _prerequisites(tasks: Sequence[_Task]) -> list[list[Config]]:
    """The runs that ``tasks`` need finished first, by level, each run once.

    Level 0: runs that learn from no other run (teachers trained alone);
    level n: runs whose teacher(s) are at levels below n (TAKD's assistant,
    taught by the teacher). A run's teachers are ``teacher_config`` of it, or
    the planned stages its ``teacher_runs`` name.
    """
    planned = {run_dir(c, amp=t.amp).name: c for t in tasks for c in t.plan[:-1]}

    def deps(c: Config) -> list[Config]:
        if not get_method(c.method).needs_teacher:
            return []
        if c.teacher_runs:  # runs not planned here must be in the workers' caches
            return [planned[r] for r in c.teacher_runs if r in planned]
        return [teacher_config(c)] if c.teacher is not None else []

    level: dict[str, int] = {}
    cfgs: dict[str, Config] = {}

    def visit(c: Config) -> int:
        k = c.key_json()
        if k not in level:
            level[k] = 1 + max((visit(d) for d in deps(c)), default=-1)
            cfgs[k] = c
        return level[k]

    for t in tasks:
        for c in t.plan[:-1]:
            visit(c)
        for d in deps(t.final):
            visit(d)
    levels: list[list[Config]] = [
        [] for _ in range(1 + max(level.values(), default=-1))
    ]
    for k, c in cfgs.items():
        levels[level[k]].append(c)
    return levels


def _run_ray(
    tasks: Sequence[_Task],
    done: Callable,
    address: str | None = None,
    gpus_per_run: float = 0.0,
    cpus_per_run: float = 1.0,
    **_: Any,
) -> None:
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "the ray executor needs Ray: pip install 'ray>=2.9'"
        ) from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    resources = ray.cluster_resources()
    slots = (
        resources.get("GPU", 0) / gpus_per_run
        if gpus_per_run > 0
        else resources.get("CPU", 1) / max(cpus_per_run, 1e-9)
    )
    done.parallel = max(1, int(slots))
    worker = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run)(_ray_worker)
    amp = tasks[0].amp if tasks else None  # one precision per reproduction

    # Phase 1: every distinct teacher, once, in parallel; then the pipelines'
    # intermediate stages (TAKD's assistant: one run serves every seed), level
    # by level; last, the rows. Each worker receives the weights of every run
    # finished before its phase.
    blobs: list[tuple[dict, bytes]] = []
    for stage in _prerequisites(tasks):
        shared = ray.put(list(blobs))
        pending = {
            worker.remote(c.to_dict(), shared, True, "", (), amp): c for c in stage
        }
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            c = pending.pop(ready[0])
            _, blob = ray.get(ready[0])
            blobs.append((c.to_dict(), blob))
            what = "teacher" if c.method == "ce" else "assistant"
            print(f"[{what}] {c.name}: trained, shipped to the workers")
    shared = ray.put(blobs)
    pending = {
        worker.remote(
            t.cfg.to_dict(),
            shared,
            False,
            t.row.pipeline,
            t.row.pipeline_models(t.cfg.profile),
            amp,
        ): t
        for t in tasks
    }
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        task = pending.pop(ready[0])
        text, _ = ray.get(ready[0])
        res = Result(**json.loads(text))
        done(task, res)


EXECUTORS: dict[str, Callable] = {"local": _run_local, "ray": _run_ray}


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
    **executor_args: Any,
) -> dict[str, Any]:
    """Run Table 1 and write the per-run results, the table and the conclusions.

    ``rows`` restricts the reproduction to some rows (by name, e.g. ``["KD"]``);
    ``overrides`` are config overrides for every run (tests use the digits
    data). ``amp`` (``"bf16"``, or ``"fp16"`` on CUDA) trains every run under
    autocast, as ``kd.run(amp=...)``: other runs than the float32 ones, kept
    by default in ``results/table1/<profile>-<amp>``. Returns ``{"table":
    [...], "conclusions": {...}, "missing": [...]}``.
    """
    check_amp(amp)
    if executor not in EXECUTORS:
        raise ValueError(
            f"unknown executor {executor!r}; choose from: {', '.join(EXECUTORS)}"
        )
    seeds = list(dict.fromkeys(int(s) for s in seeds))
    if not seeds:
        raise ValueError("give at least one seed")
    all_rows = table1_rows()
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
    out = Path(out) if out is not None else Path("results") / "table1" / default
    runs_dir = out / "runs"

    missing = [r for r in all_rows if not r.available]
    for r in missing:
        what = (
            f"method {r.method!r}"
            if r.method not in METHODS
            else f"pipeline {r.pipeline!r}"
        )
        print(f"[missing] {r.row}: {what} is not in this kdutils yet")
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
    for t in tasks:
        path = runs_dir / t.filename
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
    if results:
        print(f"[resume] {len(results)} of {len(tasks)} runs already done in {out}")

    finished: set[str] = set()

    def done(task: _Task, res: Result) -> None:
        finished.add(task.label)
        res.save(runs_dir / task.filename)
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

    table = aggregate(all_rows, results)
    conclusions = check_conclusions(table)
    conclusions["provenance"] = _table_provenance(profile, seeds, tasks, results, amp)
    _write_table(out, table, conclusions, profile, missing)
    return {
        "table": table,
        "conclusions": conclusions,
        "missing": [r.row for r in missing],
        "out": str(out),
    }


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
    import csv

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
