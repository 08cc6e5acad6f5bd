"""Survey section 1: the student alone, and Hinton et al.'s knowledge distillation."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..losses import kd_loss
from .base import Distiller, check_weights, register


@register("ce", section="4", status="baseline")
class CE(Distiller):
    """The student trained alone on the labels (Table 1's direct training)."""

    needs_teacher = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__(student, None)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        return logits_s, {"ce": F.cross_entropy(logits_s, y)}


@register("kd", section="1")
class KD(Distiller):
    """Soft targets of a teacher at temperature T (Hinton et al. 2015), survey Eq. (1).

    ``L = ce_weight * CE(l_S, y) + kd_weight * T^2 KL(p_T || p_S)``; the survey's
    lambda is ``ce_weight`` and (1 - lambda) is ``kd_weight``. The T^2 factor is
    inside :func:`kdutils.losses.kd_loss`. Defaults: T=4, 0.1/0.9,
    RepDistiller's (the CRD benchmark's); the survey states no values.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
    ) -> None:
        check_T(T)
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        super().__init__(student, teacher)
        self.T, self.ce_weight, self.kd_weight = T, ce_weight, kd_weight

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        logits_t = self.teacher_logits(x, teacher_out)
        kd = kd_loss(*self.distilled_logits(logits_s, logits_t), self.T)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd,
        }

    def distilled_logits(self, logits_s: Tensor, logits_t: Tensor):
        """The logits the KD term compares (the cross-entropy always sees the
        student's own): as they are here; standardised in ``kd_ls``."""
        return logits_s, logits_t
