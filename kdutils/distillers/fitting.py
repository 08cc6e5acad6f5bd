"""Distillers that fit feature maps directly, survey section 2.2.1, Eq. (2).

``L_KD = DF(f_S, f_T)``: the student's intermediate feature maps are pulled
towards the teacher's, through a small learned connector where the shapes
differ. The family is split in two modules: this one holds the methods the
survey's section 2.2.1 describes, FitNet (one hint layer) and SSKD (the stages
one after another); :mod:`~kdutils.distillers.fitting_added` holds the three
this book adds beside it (AB, FT, VID). Both draw on the losses of
:mod:`kdutils.losses.fitting` and on :mod:`~kdutils.distillers.features`
(:func:`forward_until`, :func:`conv_regressor`). Connectors are built in
``setup`` from the feature shapes; shapes no connector can bridge raise a
``ValueError`` naming layers and shapes.

Both methods have a stage before the main training, run by ``prepare`` on a
fresh run (its weights are part of the checkpoints): FitNet's two-stage form
trains the student's lower layers first; SSKD trains the student's stages one
after another. Those stages use their own SGD (the shared
:func:`~kdutils.distillers.base.pretrain`, with the run's momentum and weight
decay): FitNet's a constant ``init_lr``, as RepDistiller's ``init`` stage
does; SSKD's give each stage its own cosine schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..losses import hint_loss
from ..models import capture
from .base import Distiller, check_weights, pretrain, register
from .features import (
    ce_kd_terms,
    check_init,
    conv_regressor,
    forward_until,
    layer_shapes,
)

__all__ = ["FitNet", "SSKD", "conv_regressor", "forward_until"]


@register("fitnet", section="2.2.1")
class FitNet(Distiller):
    """FitNets: a hint layer of the teacher guides a student layer through a regressor.

    ``L = ce_weight CE + kd_weight KD + hint_weight MSE(r(f_S), f_T)`` with
    ``r`` a conv regressor (:func:`conv_regressor`) from the student's
    ``hint_layer`` to the teacher's (survey Eq. (2)). The defaults are
    the joint form of the CRD benchmark's FitNet row (RepDistiller:
    hint on the middle stage, ``-r 1 -a 0 -b 100``: cross-entropy plus 100
    times the hint loss, no soft targets).

    ``init_epochs > 0`` adds Romero et al.'s first stage: the student up to
    its guided layer and the regressor are trained on the hint loss alone for
    ``init_epochs`` epochs (``prepare``). Their second stage is KD; for the
    paper's two-stage form pass ``hint_weight=0, ce_weight=0.1,
    kd_weight=0.9`` too (``kd``'s weights; Romero et al. anneal the KD weight).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        hint_layer: str = "layer2",
        hint_weight: float = 100.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
        init_epochs: int = 0,
        init_lr: float = 0.05,
    ) -> None:
        check_weights(hint_weight=hint_weight, ce_weight=ce_weight, kd_weight=kd_weight)
        check_T(T)
        check_init(init_epochs, init_lr)
        super().__init__(student, teacher)
        self.hint_layer = hint_layer
        self.hint_weight, self.ce_weight, self.kd_weight = (
            hint_weight,
            ce_weight,
            kd_weight,
        )
        self.T, self.init_epochs, self.init_lr = T, init_epochs, init_lr
        self.teacher_layers = (hint_layer,) if hint_weight > 0 else ()
        self.regressor: nn.Module | None = None

    def setup(self, data) -> None:
        (s,) = layer_shapes(self.student, [self.hint_layer], data)
        (t,) = layer_shapes(self.teacher, [self.hint_layer], data)
        self.regressor = conv_regressor(
            s, t, names=(f"student {self.hint_layer}", f"teacher {self.hint_layer}")
        )

    def _regressed(self, feat_s: Tensor) -> Tensor:
        if self.regressor is None:
            raise RuntimeError("call setup(data) first: it sizes the regressor")
        return self.regressor(feat_s)

    def prepare(self, loader, cfg=None) -> None:
        if self.init_epochs == 0:
            return
        layer = self.hint_layer

        def stage1(x: Tensor) -> Tensor:
            with torch.no_grad():
                f_t = forward_until(self.teacher, [layer], x)[layer]
            f_s = forward_until(self.student, [layer], x)[layer]
            return hint_loss(self._regressed(f_s), f_t)

        params = [*self.student.parameters(), *self.regressor.parameters()]
        self.train()
        pretrain(
            "fitnet hint stage",
            loader,
            params,
            stage1,
            self.init_epochs,
            self.init_lr,
            cfg=cfg,
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        layers = [self.hint_layer] if self.hint_weight > 0 else []
        with capture(self.student, layers) as feats:
            logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        terms = ce_kd_terms(
            logits_s, y, t["logits"], self.ce_weight, self.kd_weight, self.T
        )
        if self.hint_weight > 0:
            f_s = self._regressed(feats[self.hint_layer])
            terms["hint"] = self.hint_weight * hint_loss(f_s, t[self.hint_layer])
        return logits_s, terms


def _stage_names(model: nn.Module, what: str) -> list[str]:
    if not hasattr(model, "stage_layers"):
        raise ValueError(f"the {what} has no stage_layers(): SSKD needs its stages")
    return list(model.stage_layers())


@register("sskd", section="2.2.1")
class SSKD(Distiller):
    """Stage-by-stage KD (Gao et al. 2019): the student mimics the teacher one stage at a time.

    ``prepare`` (fresh runs) trains the ``S`` stages one after another. In
    phase ``k`` only student stage ``k`` (with the stem in the first) trains,
    for ``stage_epochs`` epochs, on ``hint_weight * MSE(f_S^k, f_T^k)``
    (survey Eq. (2)) against the live teacher; the stages before it are
    frozen (no gradient, batch norm in eval mode) and those after it are not
    run. Each phase has its own SGD (the run's momentum and weight decay) and
    its own per-step cosine learning rate from ``init_lr`` to 0, as Gao et
    al. give each phase its own schedule. The main training (the run's
    ``epochs`` and learning-rate schedule) is the classifier phase: the
    backbone is frozen and only ``fc`` trains, on the labels; it reads no
    teacher output. Each phase has one loss, so there is no weight to tune
    (``hint_weight`` = 1 only scales the stage losses).

    Defaults: ``stage_epochs=30`` and ``init_lr=0.05`` are this project's
    choice, not the paper's: the length and learning rate of the CIFAR
    benchmark's pre-training stage (RepDistiller's 30 ``init`` epochs, its
    0.05). The student mimics the teacher's features as they are: stage
    outputs of different shapes raise a ``ValueError``. The buffer
    ``stage_losses`` ``(S, stage_epochs)`` holds each phase's mean loss per
    epoch (checkpointed with the weights; NaN until ``prepare`` ran).

    Outside a schedule (a single forward before ``on_epoch``, in a test or a
    notebook) the forward returns the classifier's cross-entropy with
    gradients through the whole student; :meth:`stage_terms` gives the
    stage objectives. Not to be confused with the later self-supervised KD
    of the same acronym.
    """

    epoch_args = ("stage_epochs",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        stage_epochs: int = 30,
        init_lr: float = 0.05,
        hint_weight: float = 1.0,
    ) -> None:
        check_weights(hint_weight=hint_weight)
        if isinstance(stage_epochs, bool) or not isinstance(stage_epochs, int):
            raise ValueError(
                f"stage_epochs must be an integer >= 1, got {stage_epochs!r}"
            )
        if stage_epochs < 1:
            raise ValueError(f"stage_epochs must be >= 1, got {stage_epochs}")
        if not init_lr > 0:
            raise ValueError(f"init_lr must be > 0, got {init_lr}")
        super().__init__(student, teacher)
        self.stage_epochs, self.init_lr, self.hint_weight = (
            stage_epochs,
            init_lr,
            hint_weight,
        )
        self.student_stages = _stage_names(student, "student")
        self.teacher_stages = _stage_names(teacher, "teacher")
        if len(self.student_stages) != len(self.teacher_stages):
            raise ValueError(
                f"student stages {self.student_stages} and teacher stages "
                f"{self.teacher_stages} differ in number"
            )
        # The main training trains the classifier on the labels alone.
        self.teacher_layers = ()
        self.register_buffer(
            "stage_losses",
            torch.full((len(self.student_stages), stage_epochs), float("nan")),
        )
        # None: outside a schedule; k < S: stage phase k (prepare); S: classifier.
        self.phase: int | None = None

    @property
    def num_phases(self) -> int:
        return len(self.student_stages) + 1

    def setup(self, data) -> None:
        s = layer_shapes(self.student, self.student_stages, data)
        t = layer_shapes(self.teacher, self.teacher_stages, data)
        for ns, nt, a, b in zip(
            self.student_stages, self.teacher_stages, s, t, strict=True
        ):
            if a != b:
                raise ValueError(
                    f"SSKD mimics features without a connector: student {ns} "
                    f"{a} != teacher {nt} {b}"
                )

    def phase_modules(self) -> list[list[nn.Module]]:
        """Per phase, the student modules it trains: stem + stage 1, stage 2, ..., fc."""
        mods = dict(self.student.named_modules())
        groups = [[mods[n]] for n in self.student_stages]
        if "stem" in mods:
            groups[0].insert(0, mods["stem"])
        return [*groups, [mods["fc"]]]

    def _set_phase(self, phase: int | None) -> None:
        self.phase = phase
        self.train(self.training)

    def train(self, mode: bool = True) -> SSKD:
        super().train(mode)
        if mode and self.phase is not None:
            # Only the phase's own modules run in training mode.
            for k, group in enumerate(self.phase_modules()):
                if k != self.phase:
                    for m in group:
                        m.eval()
        return self

    def _student_run(self, x: Tensor, layers: Sequence[str] | None) -> dict:
        """The student's outputs of ``layers`` (None: its logits), cut before the phase.

        In phase ``k`` (not None) the input of the phase's first module is
        detached, so nothing before it gets a gradient.
        """
        handle = None
        if self.phase is not None and self.phase > 0:
            first = self.phase_modules()[self.phase][0]
            handle = first.register_forward_pre_hook(
                lambda _m, inp: tuple(a.detach() for a in inp)
            )
        try:
            if layers is None:
                return {"logits": self.student(x)}
            return forward_until(self.student, layers, x)
        finally:
            if handle is not None:
                handle.remove()

    def _teacher_stages(self, x: Tensor, layers: Sequence[str]) -> dict:
        with torch.no_grad():
            return forward_until(self.teacher, layers, x)

    def stage_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage's objective on a batch: ``{"hint<k>": hint_weight * MSE(f_S^k, f_T^k)}``.

        Gradients flow through the whole student (outside a schedule).
        """
        f_s = forward_until(self.student, self.student_stages, x)
        f_t = self._teacher_stages(x, self.teacher_stages)
        return {
            f"hint{k + 1}": self.hint_weight * hint_loss(f_s[ns], f_t[nt])
            for k, (ns, nt) in enumerate(
                zip(self.student_stages, self.teacher_stages, strict=True)
            )
        }

    def stage_loss(self, k: int, x: Tensor) -> Tensor:
        """Phase ``k``'s objective, ``hint_weight * MSE(f_S^k, f_T^k)``, with the earlier stages cut off."""
        if self.phase != k:
            raise RuntimeError(f"stage_loss({k}) needs phase {k}, not {self.phase}")
        ns, nt = self.student_stages[k], self.teacher_stages[k]
        f_s = self._student_run(x, [ns])[ns]
        f_t = self._teacher_stages(x, [nt])[nt]
        return self.hint_weight * hint_loss(f_s, f_t)

    def prepare(self, loader, cfg=None) -> None:
        groups = self.phase_modules()
        try:
            for k in range(len(self.student_stages)):
                self.phase = k
                self.train()
                names = ", ".join(
                    n for n, m in self.student.named_children() if m in groups[k]
                )
                means = pretrain(
                    f"sskd stage {k + 1} ({names})",
                    loader,
                    [p for m in groups[k] for p in m.parameters()],
                    lambda x, k=k: self.stage_loss(k, x),
                    self.stage_epochs,
                    self.init_lr,
                    cosine=True,
                    cfg=cfg,
                )
                self.stage_losses[k] = torch.tensor(means)
        finally:
            self._set_phase(None)

    def on_epoch(self, epoch: int, epochs: int) -> None:
        # The whole main training is the classifier phase.
        self._set_phase(len(self.student_stages))

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if self.phase is not None and self.phase < len(self.student_stages):
            raise RuntimeError(
                f"SSKD is in stage phase {self.phase + 1}: its forward is the "
                "classifier's; use stage_loss"
            )
        logits_s = self._student_run(x, None)["logits"]
        return logits_s, {"ce": F.cross_entropy(logits_s, y)}
