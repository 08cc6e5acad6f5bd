"""Born-again networks: generations of one architecture, survey section 2.3.2.

A network of the student's own architecture, trained alone, teaches a fresh
copy of itself through KD; that copy teaches the next generation, and so on
(Furlanello et al. 2018). Each generation is a finished run that teaches the
next through ``Config.teacher_runs``, as in :mod:`kdutils.pipelines.assistants`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..config import Config
from ..inference import predict_logits
from ..loop import load_split
from ..results import Result
from ..runs import run_id
from ..train import run
from .registry import pipeline

__all__ = ["born_again", "generation_ensemble_accuracy"]


@pipeline("born_again", section="2.3.4", status="added")
def born_again(
    cfg: Config,
    generations: int = 3,
    *,
    T: float = 1.0,
    ce_weight: float = 0.0,
    run: Callable[..., Result] = run,
    **run_kwargs,
) -> list[Result]:
    """Born-again networks (Furlanello et al. 2018): ``cfg.student`` teaches itself.

    Returns ``[generation 0, ..., generation generations]``. Generation 0 is
    ``cfg`` with ``method="ce"`` (the student trained alone on the labels;
    the same run, and cache entry, as the ``ce`` baseline of ``cfg``'s
    profile and seed); generation k+1 is ``cfg.student`` distilled with
    ``kd`` from generation k (``teacher_runs``), with ``kd_weight`` 1 and,
    by default, ``ce_weight`` 0: the paper's BAN learns from the teacher's
    predictions alone; T = 1 (the paper's outputs are plain softmaxes). Every
    generation has ``cfg``'s data, recipe and seed. Each generation's test
    accuracy is its own; :func:`generation_ensemble_accuracy` is the
    separate, labelled accuracy of the generations' ensemble (the paper's
    BAN ensembles). ``run`` and ``run_kwargs`` are passed to every stage.
    Reference: ``furlanello2018born``.
    """
    if isinstance(generations, bool) or not isinstance(generations, int):
        raise ValueError(f"generations must be an integer >= 1, got {generations!r}")
    if generations < 1:
        raise ValueError(f"generations must be an integer >= 1, got {generations}")
    if cfg.teacher_runs:
        raise ValueError(
            "born_again chooses every generation's teacher; give a config "
            f"without teacher_runs (got {cfg.teacher_runs})"
        )
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if ce_weight < 0:
        raise ValueError(f"ce_weight must be >= 0, got {ce_weight}")
    results = [run(cfg.replace(method="ce", method_args={}), **run_kwargs)]
    args = dict(T=float(T), ce_weight=float(ce_weight), kd_weight=1.0)
    for _ in range(generations):
        stage = cfg.replace(
            method="kd",
            method_args=args,
            teacher=cfg.student,
            teacher_runs=(run_id(results[-1]),),
        )
        results.append(run(stage, **run_kwargs))
    for k, r in enumerate(results):
        how = "from the cache" if r.from_cache else "trained now"
        print(
            f"[born-again] generation {k} ({cfg.student}"
            f"{', teacher: generation ' + str(k - 1) if k else ', alone'}): "
            f"test acc {100 * r.test_acc:.2f}% ({how})"
        )
    return results


@torch.no_grad()
def generation_ensemble_accuracy(
    results: Sequence[Result], generations: Sequence[int] | None = None
) -> float:
    """Test accuracy of the mean softmax of several generations (a BAN ensemble).

    ``results`` as :func:`born_again` returns them; ``generations`` picks
    which (default: every generation after 0, the paper's BAN ensemble).
    This is an ensemble of several networks, not any deployed single
    network's accuracy: label it as such. Reference: ``furlanello2018born``.
    """
    picked = list(range(1, len(results))) if generations is None else list(generations)
    if not picked or any(not 0 <= g < len(results) for g in picked):
        raise ValueError(
            f"generations must pick among 0..{len(results) - 1}, got {picked}"
        )
    cfg = results[picked[0]].cfg
    test = load_split(cfg, train=False)
    probs = sum(
        torch.softmax(predict_logits(results[g].load_model(), test), 1) for g in picked
    )
    return (probs.argmax(1) == test.labels).float().mean().item()
