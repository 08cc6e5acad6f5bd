"""Several teachers trained alone, then one student from all of them: survey section 2.3.3.

:func:`multi_teacher` trains (or loads) one teacher run per architecture,
each cross-entropy alone with the student's data and recipe (the same run as
``teacher_config`` gives for that architecture, so a teacher is shared with
every chapter and with Table 1's reproduction), then the student with
``teacher_runs`` naming all of them: ``avgkd`` averages their soft targets,
``amtmlkd`` weights them per sample (Table 1's ALTKD row, 3 teachers),
``feed`` matches the student's features with every teacher's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import Config, teacher_config
from ..models import check_model_name
from ..results import Result
from ..runs import run_id
from ..train import run
from .assistants import _report
from .registry import pipeline

__all__ = ["multi_teacher", "teacher_runs_of"]


def teacher_runs_of(cfg: Config, teachers: Sequence[str]) -> list[Config]:
    """The configs of ``teachers`` (architectures) trained alone for ``cfg``."""
    if isinstance(teachers, str):
        raise ValueError(f"teachers is a sequence of model names, e.g. [{teachers!r}]")
    if len(teachers) < 2:
        raise ValueError(f"give at least two teachers, got {list(teachers)}")
    for t in teachers:
        check_model_name(t)
    if cfg.teacher_runs:
        raise ValueError(
            "multi_teacher trains the teachers itself; do not give teacher_runs="
            f"{cfg.teacher_runs}"
        )
    return [teacher_config(cfg.replace(teacher=t)) for t in teachers]


@pipeline("multi_teacher", section="2.3.3")
def multi_teacher(
    cfg: Config,
    teachers: Sequence[str],
    *,
    run: Callable[..., Result] = run,
    **run_kwargs,
) -> list[Result]:
    """Train every teacher alone (once), then ``cfg``'s student from all of them.

    ``cfg.method`` is a multi-teacher method (``avgkd``, ``amtmlkd``, ``feed``);
    ``teachers`` are architectures, in the order their weights are reported.
    Returns ``[*teachers, student]``; the student's ``cfg.teacher`` becomes
    the first teacher's architecture. ``run`` and ``run_kwargs`` go to every run.
    """
    if cfg.method not in ("avgkd", "amtmlkd", "feed"):
        raise ValueError(
            f"multi_teacher() needs a multi-teacher method (avgkd, amtmlkd, feed), "
            f"got {cfg.method!r}"
        )
    t_cfgs = teacher_runs_of(cfg, teachers)
    t_results = [run(c, **run_kwargs) for c in t_cfgs]
    student = run(
        cfg.replace(
            teacher=teachers[0], teacher_runs=tuple(run_id(r) for r in t_results)
        ),
        **run_kwargs,
    )
    stages = [
        (f"teacher {t} alone", r) for t, r in zip(teachers, t_results, strict=True)
    ]
    stages.append((f"student {cfg.student} from {len(teachers)} teachers", student))
    _report("multi_teacher", stages)
    return [*t_results, student]
