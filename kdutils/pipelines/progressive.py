"""Progressive distillation through a teacher's training route: survey section 2.3.4.

:func:`route_kd` is route-constrained optimisation (Jin et al. 2019): anchor
teachers at increasing points of a teacher's training teach the student one
after the other (the ``rco`` Distiller).

The anchors are checkpoints of *one* teacher run, as in the paper: the
teacher is trained once with ``save_epochs`` set to the anchors' epochs, so
its weights after each of them are kept (``model-e<N>.pt``), and each anchor
is that run at that epoch (``run_id(teacher, epoch)``, ``"<run>@e<N>"``). The
last anchor is the teacher's final weights. Mid-run anchors are taken at the
learning rate the schedule had then, not annealed, which is the route the
paper constrains the student to.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import Config, teacher_config
from ..results import Result
from ..runs import load_run, run_id
from ..train import run
from .assistants import _report
from .registry import pipeline

__all__ = ["route_kd", "anchor_epochs"]


def anchor_epochs(epochs: int, anchors: int = 4) -> tuple[int, ...]:
    """``anchors`` evenly spaced epochs ending at ``epochs`` (RCO's "equal
    epoch interval" choice): ``round(k * epochs / anchors)``, k = 1..anchors."""
    if isinstance(anchors, bool) or not isinstance(anchors, int) or anchors < 1:
        raise ValueError(f"anchors must be an integer >= 1, got {anchors!r}")
    if anchors > epochs:
        raise ValueError(f"{anchors} anchors do not fit in {epochs} teacher epochs")
    return tuple(round(k * epochs / anchors) for k in range(1, anchors + 1))


@pipeline("route_kd", section="2.3.4", status="added")
def route_kd(
    cfg: Config,
    checkpoints: Sequence[int] | None = None,
    *,
    run: Callable[..., Result] = run,
    **run_kwargs,
) -> list[Result]:
    """Route-constrained KD: anchor teachers, then the student along their route.

    ``cfg`` is the student's config with ``method="rco"`` and a teacher
    architecture ``cfg.teacher``. ``checkpoints`` are the anchors' epochs,
    strictly increasing, the last equal to the teacher's epochs
    (``cfg.teacher_epochs or cfg.epochs``); default: four evenly spaced
    (:func:`anchor_epochs`). One teacher run keeps its weights after each
    (``save_epochs``); the student then learns from those anchors in order,
    an equal share of its epochs each. Returns ``[*anchors, student]``, each
    anchor the teacher's :class:`Result` at that epoch (``.epoch`` set; the
    last is the finished teacher). ``run`` and ``run_kwargs`` are passed to
    both runs. Reference: ``jin2019knowledge``.
    """
    if cfg.method != "rco":
        raise ValueError(
            f"route_kd() needs a config with method='rco', got {cfg.method!r}"
        )
    if cfg.teacher_runs:
        raise ValueError(
            "route_kd trains the anchors itself; give cfg.teacher, not "
            f"teacher_runs={cfg.teacher_runs}"
        )
    base = teacher_config(cfg)  # raises if cfg has no teacher
    total = base.epochs
    epochs = anchor_epochs(total) if checkpoints is None else tuple(checkpoints)
    if not epochs or any(
        isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in epochs
    ):
        raise ValueError(f"checkpoints must be positive integers, got {epochs}")
    if any(b <= a for a, b in zip(epochs, epochs[1:], strict=False)):
        raise ValueError(f"checkpoints must increase strictly, got {epochs}")
    if epochs[-1] != total:
        raise ValueError(
            f"the last checkpoint must be the teacher's last epoch ({total}), "
            f"got {epochs}"
        )
    if len(epochs) > cfg.epochs:
        raise ValueError(
            f"{len(epochs)} anchors do not fit in the student's {cfg.epochs} epochs"
        )
    # The trainer evaluates every kept epoch, so each anchor has its test_acc.
    teacher = run(base.replace(save_epochs=epochs[:-1]), **run_kwargs)
    ids = [run_id(teacher, e) for e in epochs[:-1]] + [run_id(teacher)]
    anchors = [load_run(i) for i in ids[:-1]] + [teacher]
    for e, a in zip(epochs, anchors, strict=True):
        print(
            f"[route_kd] anchor after {e}/{total} epochs: test acc {100 * a.test_acc:.2f}%"
        )
    student = run(cfg.replace(teacher_runs=tuple(ids)), **run_kwargs)
    stages = [
        (f"teacher {cfg.teacher}, kept after epochs {list(epochs)}", teacher),
        (f"student {cfg.student} along {len(anchors)} anchors", student),
    ]
    _report("route_kd", stages)
    return [*anchors, student]
