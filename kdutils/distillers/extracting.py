"""Distillers for knowledge extracted from feature maps, survey section 2.2.2.

Survey Eq. (3): ``L_KD = DF(sum_i alpha_i f_S^i, sum_j beta_j f_T^j)``: the
student matches a summary of the teacher's maps (fixed weights for AT, FSP and
NST; learned ones for AFD, AFM and ReviewKD), not the maps themselves. The
family is split along that line: this module holds the fixed summaries (AT,
FSP, NST); :mod:`~kdutils.distillers.extracting_learned` holds the learned
ones (AFD, AFM, ReviewKD), and :mod:`~kdutils.distillers.extracting_guided`
those that first choose which features to compare (TOFD, MGD). All draw on
the losses of :mod:`kdutils.losses.extracting` and on
:mod:`~kdutils.distillers.features`.

Layers, for the CIFAR ResNets of :mod:`kdutils.models`: the three stage outputs
(``stage_layers()``), plus the stem for FSP, each as the method's reference
code does it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.extracting import at_loss, fsp_loss, nst_loss
from ..models import capture
from .base import Distiller, check_weights, pretrain, register
from .features import paired_shapes, student_features, teacher_features


def _check_poolable(method, layers_s, shapes_s, layers_t, shapes_t) -> None:
    """Each pair's maps must be pooled one onto the other (one is larger in H and W)."""
    for ls, ss, lt, st in zip(layers_s, shapes_s, layers_t, shapes_t, strict=True):
        (hs, ws), (ht, wt) = ss[1:], st[1:]
        if not ((hs >= ht and ws >= wt) or (hs <= ht and ws <= wt)):
            raise ValueError(
                f"{method}: student layer {ls!r} {ss} and teacher layer {lt!r} {st} "
                "cannot be pooled to one spatial size"
            )


@register("at", section="2.2.2")
class AT(Distiller):
    """Attention transfer (Zagoruyko & Komodakis 2017): match the stages' attention maps.

    ``L = ce_weight * CE + at_weight * at_loss(stages_S, stages_T, p)`` on the
    three stage outputs. Defaults are the authors' CIFAR code (``--beta 1e+3``,
    p = 2, no KD term), which RepDistiller repeats: a per-layer mean over batch
    and positions times 1000 is the paper's beta = 10^3 / (H W B) per layer.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        p: float = 2.0,
        ce_weight: float = 1.0,
        at_weight: float = 1000.0,
    ) -> None:
        if p <= 0:
            raise ValueError(f"p must be > 0, got {p}")
        check_weights(ce_weight=ce_weight, at_weight=at_weight)
        super().__init__(student, teacher)
        self.p, self.ce_weight, self.at_weight = p, ce_weight, at_weight
        self.student_layers = tuple(student.stage_layers())
        self.teacher_layers = tuple(teacher.stage_layers())

    def setup(self, data) -> None:
        shapes = paired_shapes(self, data, self.student_layers, self.teacher_layers)
        _check_poolable(
            "AT", self.student_layers, shapes[0], self.teacher_layers, shapes[1]
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = student_features(self, x, self.student_layers)
        t = teacher_features(self, x, teacher_out)
        feats_t = [t[k] for k in self.teacher_layers]
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "at": self.at_weight * at_loss(feats_s, feats_t, self.p),
        }


@register("fsp", section="2.2.2")
class FSP(Distiller):
    """Flow of solution procedure (Yim et al. 2017): FSP matrices first, then the task.

    Stage 1 (:meth:`prepare`): the student's layers are trained for
    ``init_epochs`` to minimise ``fsp_loss`` over (stem, stage 1, 2, 3), with
    SGD at ``init_lr`` with the run's momentum and weight decay (the defaults,
    0.9 and 5e-4, are RepDistiller's), by the shared :func:`~kdutils.distillers.base.pretrain`.
    Stage 2 (the trainer): ``ce_weight * CE + fsp_weight * fsp_loss``; the
    paper and RepDistiller use the task loss alone (``fsp_weight = 0``).
    Defaults are RepDistiller's CIFAR benchmark (30 of 240 epochs); the
    student stays in train mode in stage 1 (RepDistiller sets eval mode, which
    normalises with the untrained running statistics).
    """

    epoch_args = ("init_epochs",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        fsp_weight: float = 0.0,
        init_epochs: int = 30,
        init_lr: float = 0.05,
    ) -> None:
        check_weights(ce_weight=ce_weight, fsp_weight=fsp_weight)
        if init_epochs < 0 or init_lr <= 0:
            raise ValueError(
                f"init_epochs must be >= 0 and init_lr > 0, got {init_epochs}, {init_lr}"
            )
        super().__init__(student, teacher)
        self.ce_weight, self.fsp_weight = ce_weight, fsp_weight
        self.init_epochs, self.init_lr = int(init_epochs), init_lr
        self.student_layers = ("stem", *student.stage_layers())
        self.fsp_layers_t = ("stem", *teacher.stage_layers())
        # The teacher's maps are read in stage 2 only if the FSP term stays on.
        self.teacher_layers = self.fsp_layers_t if fsp_weight > 0 else ()

    def setup(self, data) -> None:
        shapes_s, shapes_t = paired_shapes(
            self, data, self.student_layers, self.fsp_layers_t
        )
        for ls, ss, lt, st in zip(
            self.student_layers, shapes_s, self.fsp_layers_t, shapes_t, strict=True
        ):
            if ss[0] != st[0]:
                raise ValueError(
                    f"FSP: student layer {ls!r} {ss} and teacher layer {lt!r} {st} "
                    "have different channel counts, so their FSP matrices differ in size"
                )
        _check_poolable(
            "FSP",
            self.student_layers,
            shapes_s,
            self.fsp_layers_t,
            shapes_t,
        )

    def fsp_terms(self, x: Tensor) -> Tensor:
        """``fsp_loss`` of the student against the teacher on ``x``."""
        with torch.no_grad(), capture(self.teacher, self.fsp_layers_t) as ft:
            # forward, not __call__: a teacher the trainer compiled (it does so
            # when stage 2 needs no features) would recompile for every hook.
            self.teacher.forward(x)
        _, feats_s = student_features(self, x, self.student_layers)
        return fsp_loss(feats_s, [ft[k] for k in self.fsp_layers_t])

    def prepare(self, loader, cfg=None) -> None:
        if self.init_epochs == 0:
            return
        self.train()
        pretrain(
            "fsp stage 1 (matching the teacher's FSP matrices)",
            loader,
            self.student.parameters(),
            self.fsp_terms,
            self.init_epochs,
            self.init_lr,
            cfg=cfg,
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if self.fsp_weight == 0:
            logits_s = self.student(x)
            return logits_s, {"ce": self.ce_weight * F.cross_entropy(logits_s, y)}
        logits_s, feats_s = student_features(self, x, self.student_layers)
        t = teacher_features(self, x, teacher_out)
        feats_t = [t[k] for k in self.teacher_layers]
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "fsp": self.fsp_weight * fsp_loss(feats_s, feats_t),
        }


@register("nst", section="2.2.2", status="added")
class NST(Distiller):
    """Neuron selectivity transfer (Huang & Wang 2017): match the channels' spatial distributions.

    ``L = ce_weight * CE + nst_weight * nst_loss(stages_S, stages_T)``, squared
    MMD with a polynomial kernel (d = 2, c = 0) on the three stage outputs.
    ``nst_weight = 50`` is the authors' (their ``kt_weight``) and RepDistiller's
    CIFAR setting; the layers are RepDistiller's (the authors used the last).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        nst_weight: float = 50.0,
    ) -> None:
        check_weights(ce_weight=ce_weight, nst_weight=nst_weight)
        super().__init__(student, teacher)
        self.ce_weight, self.nst_weight = ce_weight, nst_weight
        self.student_layers = tuple(student.stage_layers())
        self.teacher_layers = tuple(teacher.stage_layers())

    def setup(self, data) -> None:
        shapes = paired_shapes(self, data, self.student_layers, self.teacher_layers)
        _check_poolable(
            "NST", self.student_layers, shapes[0], self.teacher_layers, shapes[1]
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = student_features(self, x, self.student_layers)
        t = teacher_features(self, x, teacher_out)
        feats_t = [t[k] for k in self.teacher_layers]
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "nst": self.nst_weight * nst_loss(feats_s, feats_t),
        }
