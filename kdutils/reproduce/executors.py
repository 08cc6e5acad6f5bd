"""Executors: run the reproduction's tasks here, one after another, or on Ray.

A :class:`_Task` is one row at one seed, with the runs it makes. Each
executor in ``EXECUTORS`` takes the tasks still to run and calls ``done(task,
result)`` as runs finish; ``_eta_seconds`` estimates what is left from the
runs in hand. The Ray executor ships finished runs (teachers, assistants) to
its workers as tar bytes through Ray's object store.
"""

from __future__ import annotations

import functools
import io
import json
import math
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, teacher_config
from ..distillers import get_method
from ..errors import CorruptArtifact
from ..results import Result, atomic_write_bytes
from ..runs import run_dir
from .rows import TableRow, _comparable, _execute, _kd_run


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

    def recorded_in(self, path: Path) -> Result | None:
        """The run saved at ``path`` if it is this task's (see
        :meth:`is_done_by`); None if there is none there, or it is unreadable
        or another run's."""
        if not path.exists():
            return None
        try:
            res = Result.load(path)
        except CorruptArtifact:
            return None
        return res if self.is_done_by(res) else None

    def runner(self) -> Callable[..., Result]:
        """``kd.run`` in this task's precision."""
        run = _kd_run()
        return functools.partial(run, amp=self.amp) if self.amp else run


def _recorded_seconds(
    configs: Sequence[Config], amp: str | None, seconds: dict[str, float]
) -> dict[str, float]:
    """``seconds`` with the recorded training time of each run of ``configs``
    found in the run cache, by cache folder, each folder counted once (one
    already in ``seconds`` is kept)."""
    for c in configs:
        path = run_dir(c, amp=amp) / "result.json"
        if path.parent.name not in seconds and path.exists():
            seconds[path.parent.name] = float(
                Result.load(path).final.get("train_seconds") or 0.0
            )
    return seconds


# The provenance key under which a saved task result records the runs its
# pipeline trained before it (TAKD's assistant, ALTKD's other teachers), by
# cache folder, with their recorded training seconds: a table's or a search's
# cost is then read from its own files, whatever the run cache holds.
EARLIER_STAGES = "earlier_stages"


def _with_stages(task: _Task, res: Result) -> Result:
    """``res`` with the training seconds of ``task``'s earlier stages (found in
    the run cache, where they have just run) in its provenance."""
    stages = _recorded_seconds(task.plan[:-1], task.amp, {})
    if stages:
        res.provenance[EARLIER_STAGES] = stages
    return res


def _task_seconds(
    tasks: Sequence[tuple[_Task, Result]], skip_methods: tuple[str, ...] = ()
) -> dict[str, float]:
    """The recorded training seconds of every run of ``tasks``, by cache
    folder, each once: the final run's from its result, the earlier stages'
    from the result's :data:`EARLIER_STAGES`, or, for a result saved before
    it recorded them, from the run cache. Stages of ``skip_methods`` (a
    search's teachers trained alone) are left out."""
    seconds: dict[str, float] = {}
    for task, res in tasks:
        recorded = res.provenance.get(EARLIER_STAGES) or {}
        for c in task.plan[:-1]:
            if c.method in skip_methods:
                continue
            name = run_dir(c, amp=task.amp).name
            if name in recorded:
                seconds.setdefault(name, float(recorded[name]))
            else:
                _recorded_seconds([c], task.amp, seconds)
        if task.final.method not in skip_methods:
            seconds.setdefault(
                run_dir(task.final, amp=task.amp).name,
                float(res.final.get("train_seconds") or 0.0),
            )
    return seconds


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
    run = _kd_run()
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
