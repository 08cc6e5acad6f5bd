"""Pipelines through intermediate models: survey section 3.2.

A large teacher and a small student can be too far apart for KD to work well
(Cho & Hariharan 2019; Mirzadeh et al. 2019). Both functions here bridge the
gap with *teacher assistants*, networks of intermediate size, each a finished
run that teaches the next through ``Config.teacher_runs``:

- :func:`takd`: teacher -> assistant(s) -> student, each model distilled from
  the one before it (Mirzadeh et al. 2019);
- :func:`dgkd`: every model distilled from *all* the larger ones, with guides
  dropped at random (Son et al. 2021; the ``dgkd`` Distiller);
- :func:`stepwise_rkd`: TAKD's chain with relational distillation plus KD at
  every step, a stand-in for Liu & Zhang's (2021) stepwise relational
  compression.

All take the student's config (``cfg.teacher`` the teacher, ``cfg.student``
the student, ``cfg.seed`` the student's seed), return every stage's
:class:`~kdutils.results.Result`, largest model first, and print what each
stage cost. Assistants, like teachers, are trained once (seed
``cfg.teacher_seed`` unless ``assistant_seed`` says otherwise) and serve every
student seed; they are evaluated on the test set only after their last epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..config import Config, teacher_config
from ..data import DATASETS
from ..distillers import get_method
from ..models import check_model_name, create_model, num_params
from ..results import Result
from ..runs import run_id
from ..train import run
from .registry import pipeline

__all__ = ["takd", "dgkd", "stepwise_rkd", "chain_sizes"]


def chain_sizes(cfg: Config, assistants: Sequence[str]) -> list[tuple[str, int]]:
    """``(name, parameters)`` of teacher, assistants and student, checked.

    Raises ``ValueError`` unless every model is known, every assistant is
    strictly smaller (in parameters) than the model before it and larger than
    the student, and ``cfg`` names a teacher of its own (not ``teacher_runs``).
    Without assistants the teacher may have any size (born-again networks).
    """
    if cfg.teacher is None:
        raise ValueError("the config names no teacher (teacher=...)")
    if cfg.teacher_runs:
        raise ValueError(
            "the pipeline chooses every stage's teacher; give cfg.teacher, "
            f"not teacher_runs={cfg.teacher_runs}"
        )
    if isinstance(assistants, str):
        raise ValueError(
            f"assistants is a sequence of model names, e.g. [{assistants!r}]"
        )
    if not get_method(cfg.method).needs_teacher:
        raise ValueError(f"method {cfg.method!r} learns from no teacher")
    names = [cfg.teacher, *assistants, cfg.student]
    for n in names:
        check_model_name(n)
    info = DATASETS[cfg.dataset]
    with torch.device("meta"):
        sizes = [
            (n, num_params(create_model(n, info.classes, info.channels))) for n in names
        ]
    for (big, p_big), (small, p_small) in zip(sizes, sizes[1:], strict=False):
        if assistants and p_small >= p_big:
            chain = " > ".join(f"{n} ({p:,})" for n, p in sizes)
            raise ValueError(
                f"each model must be smaller than the one before it: {small} "
                f"({p_small:,} parameters) follows {big} ({p_big:,}); "
                f"got {chain}"
            )
    return sizes


def _report(tag: str, stages: list[tuple[str, Result]]) -> None:
    """One line per stage: accuracy, and training time (now or when cached)."""
    total = now = 0.0
    for i, (what, r) in enumerate(stages, 1):
        secs = r.final.get("train_seconds", 0.0)
        total += secs
        now += 0.0 if r.from_cache else secs
        how = "from the cache, trained in" if r.from_cache else "trained now in"
        print(
            f"[{tag}] stage {i}/{len(stages)} {what}: test acc "
            f"{100 * r.test_acc:.2f}% ({how} {secs:.1f} s)"
        )
    print(f"[{tag}] all stages: {total:.1f} s of training, {now:.1f} s of it now")


def _assistant_cfg(cfg: Config, arch: str, seed: int, **changes) -> Config:
    # Assistants' curves are not part of the experiment: evaluate once.
    return cfg.replace(student=arch, seed=seed, eval_every=cfg.epochs, **changes)


@pipeline("takd", section="3.2")
def takd(
    cfg: Config,
    assistants: Sequence[str],
    *,
    assistant_seed: int | None = None,
    run: Callable[..., Result] = run,
    **run_kwargs,
) -> list[Result]:
    """Teacher -> assistant(s) -> student (Mirzadeh et al. 2019, TAKD).

    Returns ``[teacher, *assistants, student]``. The teacher is
    ``teacher_config(cfg)``, trained alone; the first assistant is ``cfg``
    with the assistant as the student (its teacher is ``cfg.teacher``, so it
    shares the cache with any other run of that pair); every later model is
    ``cfg``'s method with the previous stage's run as its teacher
    (``teacher_runs``). With no assistants this is ``cfg`` itself (plain KD).
    ``cfg.method`` is used at every stage (``kd`` in the paper). ``run`` and
    ``run_kwargs`` are passed to every stage. Reference: ``mirzadeh2019improved``.
    """
    return _chain("takd", cfg, assistants, assistant_seed, run, run_kwargs)


def _chain(
    tag: str,
    cfg: Config,
    assistants: Sequence[str],
    assistant_seed: int | None,
    run: Callable[..., Result],
    run_kwargs: dict,
) -> list[Result]:
    """TAKD's chain with ``cfg.method`` at every step; stage lines tagged ``tag``."""
    chain_sizes(cfg, assistants)
    seed = cfg.teacher_seed if assistant_seed is None else assistant_seed
    teacher = run(teacher_config(cfg), **run_kwargs)
    stages = [(f"teacher {cfg.teacher} alone", teacher)]
    prev_arch, prev = cfg.teacher, teacher
    for i, arch in enumerate(assistants):
        extra = {} if i == 0 else dict(teacher=prev_arch, teacher_runs=(run_id(prev),))
        res = run(_assistant_cfg(cfg, arch, seed, **extra), **run_kwargs)
        stages.append((f"assistant {arch} from {prev_arch}", res))
        prev_arch, prev = arch, res
    student_cfg = (
        cfg.replace(teacher=prev_arch, teacher_runs=(run_id(prev),))
        if assistants
        else cfg
    )
    student = run(student_cfg, **run_kwargs)
    stages.append((f"student {cfg.student} from {prev_arch}", student))
    _report(tag, stages)
    return [r for _, r in stages]


@pipeline("dgkd", section="3.2")
def dgkd(
    cfg: Config,
    assistants: Sequence[str],
    *,
    assistant_seed: int | None = None,
    run: Callable[..., Result] = run,
    **run_kwargs,
) -> list[Result]:
    """Densely guided KD (Son et al. 2021): each model learns from all larger ones.

    ``cfg.method`` must be ``"dgkd"``. Returns ``[teacher, *assistants,
    student]``: the teacher trained alone, then each assistant and finally the
    student distilled from the teacher and every assistant before it (the
    ``dgkd`` Distiller, guides dropped at random). A model with a single guide
    (the first assistant, or the student when there are no assistants) is
    trained with ``kd`` and the same T and weights, which is what DGKD with
    one guide computes; so the first assistant is shared with :func:`takd`'s.
    Reference: ``son2021densely``.
    """
    if cfg.method != "dgkd":
        raise ValueError(
            f"dgkd() needs a config with method='dgkd', got {cfg.method!r}"
        )
    chain_sizes(cfg, assistants)
    seed = cfg.teacher_seed if assistant_seed is None else assistant_seed
    args = cfg.method_args
    kd_args = {k: args[k] for k in ("T", "ce_weight", "kd_weight")}
    teacher = run(teacher_config(cfg), **run_kwargs)
    stages = [(f"teacher {cfg.teacher} alone", teacher)]
    guides, archs = [teacher], [cfg.teacher]

    def stage_cfg(arch: str, seed: int, **changes) -> Config:
        if len(guides) == 1:  # one guide: DGKD is KD
            return cfg.replace(
                method="kd", method_args=kd_args, student=arch, seed=seed, **changes
            )
        return cfg.replace(
            student=arch,
            seed=seed,
            teacher_runs=tuple(run_id(g) for g in guides),
            **changes,
        )

    for arch in assistants:
        res = run(stage_cfg(arch, seed, eval_every=cfg.epochs), **run_kwargs)
        stages.append((f"assistant {arch} from {' + '.join(archs)}", res))
        guides.append(res)
        archs.append(arch)
    student = run(stage_cfg(cfg.student, cfg.seed), **run_kwargs)
    stages.append((f"student {cfg.student} from {' + '.join(archs)}", student))
    _report("dgkd", stages)
    return [r for _, r in stages]


@pipeline(
    "stepwise_rkd",
    section="3.2",
    status="stand-in",
    note=(
        "Liu & Zhang 2021 (stepwise relational distillation): only "
        "its abstract could be read, so the 'individual information' added at "
        "each step is taken to be Hinton's KD and RKD keeps its own weights"
    ),
)
def stepwise_rkd(
    cfg: Config,
    assistants: Sequence[str],
    *,
    assistant_seed: int | None = None,
    run: Callable[..., Result] = run,
    **run_kwargs,
) -> list[Result]:
    """Stepwise relational distillation through an intermediate network.

    Liu & Zhang (2021) put an intermediate network between teacher and
    student and distil relationally step by step, adding "individual"
    (单体) information to every step. Their abstract says no more, and the
    paper could not be read, so this is our reading: TAKD's chain
    (:func:`takd`, the same stages, caching and report) with ``rkd`` at every
    step and its ``kd_weight`` > 0, so that each step adds Hinton's KD on
    each sample's outputs to RKD's distances and angles between samples.
    ``cfg.method`` must be ``"rkd"`` with ``kd_weight`` > 0 (RepDistiller's
    combined form uses ``kd_weight=1``, ``T=4``). Returns ``[teacher,
    *assistants, student]``. Reference: ``liu2021stepwise``; survey 3.2.
    """
    if cfg.method != "rkd" or not cfg.method_args.get("kd_weight", 0) > 0:
        raise ValueError(
            "stepwise_rkd() distils with RKD plus KD at every step: give a config "
            "with method='rkd' and kd_weight > 0 (e.g. kd_weight=1.0), got "
            f"method={cfg.method!r}, kd_weight={cfg.method_args.get('kd_weight')!r}"
        )
    return _chain("stepwise_rkd", cfg, assistants, assistant_seed, run, run_kwargs)
