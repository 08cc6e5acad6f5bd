"""What a reproduction will run, before it runs: ``reproduce --dry-run``.

``count_runs`` lists the distinct runs (each cache folder once: the teacher,
the pipelines' stages, the rows at every seed) of the reproduction with the
authors' defaults, of the search of ``--tune``, and of the tuned rows (an
upper bound: the rows whose chosen setting differs from the default need new
runs, and which those are is known only after the search). ``per_run_hours``
gives a measured time per run to multiply them by: the profile's committed
reproduction (its runs' recorded training time), or, for ``paper``, the
measured step rate of ``bench/bench_speed.py`` (``results/bench/``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import own_teacher
from ..results import Result
from ..runs import run_dir
from .rows import TableRow
from .tune import TUNE_SEED, TUNING, tunable


def _runs_of(row: TableRow, cfg, amp: str | None) -> set[str]:
    """The cache folders one row at one seed trains (its plan and, for a plain
    row with a teacher, that teacher)."""
    plan = row.plan(cfg, amp)
    teacher = own_teacher(plan[-1])  # a pipeline's last stage has teacher_runs
    return {run_dir(c, amp=amp).name for c in plan + ([teacher] if teacher else [])}


def count_runs(
    rows: Sequence[TableRow],
    profile: str,
    seeds: Sequence[int],
    tune: bool = False,
    tune_seed: int = TUNE_SEED,
    overrides: dict[str, Any] | None = None,
    amp: str | None = None,
) -> dict[str, int]:
    """``{"defaults": n, "tuning": n, "tuned_at_most": n}``: distinct runs of
    the default reproduction, of the search, and the tuned rows' new runs at
    most (0 and 0 without ``tune``). Runs the defaults already make (the
    teachers, the default candidate of each search when its seed is
    reported) are not counted twice."""
    overrides = dict(overrides or {})
    rows = [r for r in rows if r.available]
    default: set[str] = set()
    for r in rows:
        for s in seeds:
            default |= _runs_of(r, r.config(profile, s, **overrides), amp)
    out = {"defaults": len(default), "tuning": 0, "tuned_at_most": 0}
    if not tune:
        return out
    searched: set[str] = set()
    tuned: set[str] = set()
    later_steps = 0
    for r in rows:
        if not tunable(r):
            continue
        base = r.config(profile, tune_seed, **overrides)
        knobs = TUNING[r.method]
        for cand in knobs[0].values(dict(base.method_args)):
            cfg = r.config(profile, tune_seed, **overrides, **{**r.args, **cand})
            searched |= _runs_of(r, cfg, amp)
        # Later knobs: their values depend on the first choice; one of each
        # grid is the setting already run, the others are new, with as many
        # runs as the row's plan trains.
        per_candidate = len(r.plan(base, amp))
        for k in knobs[1:]:
            later_steps += (len(k.values(dict(base.method_args))) - 1) * per_candidate
        # The tuned row at every seed, as if its first knob moved off the
        # default (its stages that do not depend on the knob, the teacher,
        # are the defaults' runs).
        moved = {**r.args, **knobs[0].values(dict(base.method_args))[-1]}
        for s in seeds:
            tuned |= _runs_of(r, r.config(profile, s, **overrides, **moved), amp)
    out["tuning"] = len(searched - default) + later_steps
    out["tuned_at_most"] = len(tuned - default - searched)
    return out


def per_run_hours(
    profile: str, root: Path = Path("results"), amp: str | None = None
) -> tuple[float, str] | None:
    """A measured time per run, in hours, and where it comes from; None when
    nothing is measured for ``profile``.

    The profile's committed reproduction (``results/table1/<profile>/runs``)
    gives the mean recorded training time of its runs on the machine it ran
    on. For ``paper`` without one, the KD step rate that ``bench_speed.py``
    measured (``results/bench/*.json``, in the runs' precision, a GPU's when
    there is one) times 240
    epochs of CIFAR-10's 45,000 training images (50,000 less the validation
    tenth): the logit methods' cost; feature and online methods cost more.
    """
    name = profile if amp is None else f"{profile}-{amp}"
    runs = sorted((root / "table1" / name / "runs").glob("*.json"))
    seconds = []
    machines = set()
    for p in runs:
        res = Result.load(p)
        t = res.final.get("train_seconds")
        if t is not None and math.isfinite(t):
            seconds.append(float(t))
            machines.add(
                str(res.provenance.get("machine") or res.provenance.get("device"))
            )
    if seconds:
        mean = sum(seconds) / len(seconds)
        return mean / 3600, (
            f"mean recorded training time of the {len(seconds)} runs in "
            f"{root / 'table1' / name / 'runs'} ({'; '.join(sorted(machines))})"
        )
    if profile != "paper":
        return None
    best: tuple[int, float, str] | None = None
    for p in sorted((root / "bench").glob("*.json")):
        d = json.loads(p.read_text())
        if bool(d.get("args", {}).get("amp")) != (amp is not None):
            continue  # another precision than the runs'
        rate = d.get("results", {}).get("kd-3x32", {}).get("kdutils", {}).get("img_s")
        if not rate:
            continue
        gpu = int(d.get("args", {}).get("device") == "cuda")
        where = d.get("provenance", {}).get("device", "?")
        cand = (gpu, rate, f"{p} ({where}, {rate:.0f} images/s)")
        if best is None or cand[:2] > best[:2]:
            best = cand
    if best is None:
        return None
    _, rate, where = best
    return 240 * 45_000 / rate / 3600, f"the KD step rate measured in {where}"
