"""Progressive distillation through a teacher's training route: survey section 2.3.4.

:func:`route_kd` is route-constrained optimisation (Jin et al. 2019): anchor
teachers at increasing points of a teacher's training teach the student one
after the other (the ``rco`` Distiller).

The approximation. RCO's anchors are checkpoints of *one* teacher run (its
weights after epochs e_1 < e_2 < ... < E). The trainer keeps only a run's
final weights (its per-epoch checkpoint is overwritten and deleted when the
run finishes), and a run's cosine (or step) schedule depends on its length,
so a teacher run of e_k epochs is not the long run stopped at e_k. The
anchors here are therefore separate teacher runs of e_k epochs, each
annealed to the end of its own schedule; the last, of E epochs, is the
ordinary teacher (shared with every other method through the cache). Such
anchors are "a teacher trained for e_k epochs", better converged than a
mid-run checkpoint at a still-high learning rate, so the route is smoother
than the paper's. Exact anchors need a core change: a ``Config`` field
``save_epochs`` with which ``fit`` saves ``student.state_dict()`` to
``model-e{epoch}.pt`` after those epochs, and ``load_run("<run>@e<epoch>")``
to load one as a teacher.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..config import Config, teacher_config
from ..results import Result
from ..train import run, run_id
from .assistants import _report

__all__ = ["route_kd", "anchor_epochs"]


def anchor_epochs(epochs: int, anchors: int = 4) -> tuple[int, ...]:
    """``anchors`` evenly spaced epochs ending at ``epochs`` (RCO's "equal
    epoch interval" choice): ``round(k * epochs / anchors)``, k = 1..anchors."""
    if isinstance(anchors, bool) or not isinstance(anchors, int) or anchors < 1:
        raise ValueError(f"anchors must be an integer >= 1, got {anchors!r}")
    if anchors > epochs:
        raise ValueError(f"{anchors} anchors do not fit in {epochs} teacher epochs")
    return tuple(round(k * epochs / anchors) for k in range(1, anchors + 1))


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
    (:func:`anchor_epochs`). Each anchor is a teacher run of that many epochs
    (see the module docstring for why this approximates checkpoints of one
    run); the student then learns from them in order, an equal share of its
    epochs each. Returns ``[*anchors, student]``. ``run`` and ``run_kwargs``
    are passed to every stage. Reference: ``jin2019knowledge``.
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
    stages: list[tuple[str, Result]] = []
    anchors = []
    for e in epochs:
        # The last anchor is exactly the ordinary teacher run (same config).
        acfg = base if e == total else base.replace(epochs=e, eval_every=e)
        res = run(acfg, **run_kwargs)
        anchors.append(res)
        stages.append((f"anchor {cfg.teacher} after {e}/{total} epochs", res))
    student = run(
        cfg.replace(teacher_runs=tuple(run_id(r) for r in anchors)), **run_kwargs
    )
    stages.append((f"student {cfg.student} along {len(anchors)} anchors", student))
    _report("route_kd", stages)
    return [r for _, r in stages]
