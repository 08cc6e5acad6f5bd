"""The Distiller interface (the registry it is listed in is ``kdutils.registry``).

A Distiller wraps a student and its teacher(s). ``forward(x, y)`` returns the
student's logits and a dict of named, already-weighted loss terms; the trainer
sums the terms and steps. Teachers are frozen and stay in eval mode whatever
``train()`` is called with.

Life cycle, as the trainer drives it (every hook but ``forward`` is optional):

1. ``build(name, student, teacher, **hparams)``: the paper's hyperparameters.
2. ``setup(data)``: state that depends on the training data (feature shapes
   for connectors, a memory bank with one slot per sample). Called on every
   run, fresh or resumed, before the optimizer is made and a checkpoint loaded.
3. ``prepare(loader)``: a stage before the main training (FitNet's hint
   stage, FT's paraphraser); called once, on a fresh run only; whatever it
   trains is saved in the checkpoints.
4. ``on_epoch(epoch, epochs)``: at the start of every epoch (schedules).
5. ``forward(x, y, teacher_out=None, idx=None)`` on every batch.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_weights  # noqa: F401 - kdutils.distillers exports it
from ..models import capture
from ..registry import (  # noqa: F401 - kdutils.distillers exports them
    METHODS,
    STATUSES,
    check_status,
    describe_status,
    get_method,
    register,
)

__all__ = [
    "pretrain",
    "Distiller",
    "register",
    "describe_status",
    "check_status",
    "STATUSES",
    "get_method",
    "METHODS",
    "check_weights",
    "feature_shapes",
]


@torch.no_grad()
def feature_shapes(
    model: nn.Module, layers: Sequence[str], sample: Tensor
) -> dict[str, tuple[int, ...]]:
    """Shapes (without the batch dimension) of ``layers``' outputs for ``sample``.

    ``sample`` is one input ``(1, C, H, W)``; the model is run in eval mode on
    it and restored to its mode afterwards.
    """
    was_training = model.training
    model.eval()
    with capture(model, layers) as feats:
        model(sample)
    model.train(was_training)
    return {k: tuple(v.shape[1:]) for k, v in feats.items()}


class Distiller(nn.Module):
    """Base class. Subclasses set ``needs_teacher`` and implement ``forward``.

    ``teacher_layers`` names the teacher's submodules whose outputs the method
    reads (set it in ``__init__``; empty for methods that use only logits).
    :meth:`teacher_outputs` returns ``{"logits": ..., <layer>: ...}``. Because
    the teacher is frozen, these depend on the input alone: without
    augmentation the trainer computes them once for the training set and passes
    each batch's slice as ``teacher_out``. A method whose teacher changes during
    training sets ``cache_teacher = False``.
    """

    method_name: str = ""
    # The version of what this method computes: part of every run's key (see
    # ``kdutils.runs``). Bump it when the method's arithmetic changes (its
    # loss, its modules, its schedule), and rewrite its golden fingerprint.
    version: int = 1
    survey_section: str = ""
    status: str = "survey"
    status_note: str = ""
    status_year: int | None = None  # the year of publication, for status "after"
    needs_teacher: bool = True
    cache_teacher: bool = True
    teacher_layers: tuple[str, ...] = ()
    # Several teachers (an ``nn.ModuleList``): the trainer precomputes
    # ``teacher_outputs`` once for the training set, as for one teacher, only
    # for a method that sets this, whose ``teacher_outputs`` are sample-first.
    precompute_teachers: bool = False
    # Constructor arguments counted in epochs of the reference recipe
    # (``kdutils.config.REFERENCE_EPOCHS``, RepDistiller's 240): a pre-training
    # stage, a warm-up. ``make_config`` scales their defaults to the run's
    # length (``scale_epochs``), so every profile runs the method's schedule in
    # proportion and no table outside the method rescales it. A value the user
    # gives is used as given.
    epoch_args: tuple[str, ...] = ()

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher")
        self.student = student
        self.teacher = teacher
        # Per-step measurements that are not losses (detached scalars, e.g. the
        # discriminator's accuracy): ``forward`` may fill this dict; the trainer
        # averages each entry over the epoch into ``metric_<name>`` and clears it.
        self.step_metrics: dict[str, Tensor] = {}
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def student_modules(self) -> nn.Module:
        """What gets deployed and evaluated: the student alone."""
        return self.student

    @torch.no_grad()
    def teacher_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """The frozen teacher's logits and ``teacher_layers`` outputs for ``x``."""
        with capture(self.teacher, self.teacher_layers) as feats:
            logits = self.teacher(x)
        return {"logits": logits, **feats}

    def teacher_logits(self, x: Tensor, teacher_out=None) -> Tensor:
        """The teacher's logits for ``x``: from ``teacher_out`` (the trainer's
        precomputed outputs) when given, else from the teacher itself."""
        if teacher_out is None:
            teacher_out = self.teacher_outputs(x)
        return teacher_out["logits"]

    def setup(self, data) -> None:
        """Data-dependent state; ``data`` is the training :class:`TensorData`."""

    def prepare(self, loader, cfg=None) -> None:
        """A stage before the main training (fresh runs only); ``cfg`` is the
        run's :class:`~kdutils.config.Config` (its optimiser settings), for
        :func:`pretrain`."""

    def on_epoch(self, epoch: int, epochs: int) -> None:
        """Called at the start of epoch ``epoch`` (0-based) of ``epochs``."""

    def lr_factor(self, epoch: int, epochs: int) -> float:
        """Multiplier of the run's learning rate during epoch ``epoch`` (0-based).

        1 by default; a method with its own schedule on top of the run's (the
        cycles of snapshot distillation) overrides it. It depends on the epoch
        only, so a resumed run gets the same rates.
        """
        return 1.0

    def epoch_metrics(self, test) -> dict[str, float]:
        """Measurements after each epoch, recorded as ``metric_<name>``.

        ``test`` is the test :class:`TensorData`; called in eval mode without
        gradients (e.g. the accuracy of every exit or every peer).
        """
        return {}

    def forward(
        self,
        x: Tensor,
        y: Tensor,
        teacher_out: dict[str, Tensor] | None = None,
        idx: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    def hparams(self) -> dict:
        """The method's hyperparameters and their values: every argument of
        the constructor (its signature is the one list of them), read back
        from the attribute of the same name."""
        names = inspect.signature(type(self).__init__).parameters
        return {
            k: getattr(self, k)
            for k in names
            if k not in ("self", "student", "teacher")
        }


def pretrain(
    name: str,
    loader,
    params: Iterable[nn.Parameter],
    loss_fn: Callable[[Tensor], Tensor],
    epochs: int,
    lr: float,
    cosine: bool = False,
    cfg=None,
) -> list[float]:
    """SGD on ``loss_fn(x)`` over ``epochs`` passes of ``loader``; the mean loss of each epoch.

    The learning rate is ``lr`` throughout, or with ``cosine`` a per-step
    cosine from ``lr`` to 0 over the stage: ``lr (1 + cos(pi t / T)) / 2``
    at step ``t`` of ``T``. The optimiser is the run's: SGD with ``cfg``'s
    momentum and weight decay (without ``cfg``, the defaults of
    :class:`kdutils.config.Config`, 0.9 and 5e-4, as RepDistiller). Prints
    the last epoch's mean. The one pre-training loop of every method with a
    stage before the main training (FitNet, AB, FT, SSKD, FSP).
    """
    momentum = 0.9 if cfg is None else cfg.momentum
    weight_decay = 5e-4 if cfg is None else cfg.weight_decay
    opt = torch.optim.SGD(
        list(params), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    total_steps, step = epochs * len(loader), 0
    means: list[float] = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        total = seen = 0.0
        for x, _, _ in loader:
            if cosine:
                for group in opt.param_groups:
                    group["lr"] = lr * (1 + math.cos(math.pi * step / total_steps)) / 2
            loss = loss_fn(x)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{name}: the loss became {loss.item()} in epoch {epoch + 1} of "
                    "the pre-training stage; lower init_lr"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(x)
            seen += len(x)
            step += 1
        means.append(total / seen)
    opt.zero_grad(set_to_none=True)  # no stale gradients for what comes next
    if epochs:
        schedule = f", cosine lr {lr:g} -> 0" if cosine else ""
        print(
            f"[prepare] {name}: {epochs} epoch(s){schedule}, mean loss in the last "
            f"{means[-1]:.4f}"
        )
    return means
