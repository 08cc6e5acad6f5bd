"""Multi-level logit distillation (MLKD, Jin et al. 2023): the second half of the after-survey family.

Its losses are in :mod:`kdutils.losses.after_survey_levels`, its strong view
in :mod:`kdutils.augment`. The other after-survey methods (DKD, DIST, logit
standardisation, NKD, CTKD) are in :mod:`kdutils.distillers.after_survey`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..augment import rand_augment
from ..checks import check_int, check_T, check_weights
from ..data import normalize
from ..losses import mlkd_loss
from .base import Distiller, register


@register("mlkd", section="2.1", status="after", year=2023)
class MLKD(Distiller):
    """Multi-level logit distillation (Jin et al. 2023): instance, batch and class relations.

    Every batch is seen twice, as it is (the weak view) and strongly augmented
    (:func:`kdutils.augment.rand_augment`: ``n_ops`` random operations and a
    Cutout); teacher and student each run on both views, the student in two
    separate passes, so each view has its own batch-norm statistics, as in
    the authors' code. The loss is

    ``ce_weight * (CE(weak) + CE(strong)) + kd_weight * (kd + cc + bc)``

    with the three terms of :func:`kdutils.losses.mlkd_loss` at the
    temperatures ``T, 3, 5, 2, 6`` (the authors fix the last four; ``T`` is
    their configurable one). The student's logits on the weak view are the
    ones returned (and counted in the training accuracy).

    Defaults are the authors' ResNet56 -> ResNet20 setting
    (Jin-Ying/Multi-Level-Logit-Distillation,
    ``configs/cifar100/ours/res56_res20.yaml``, which keeps mdistiller's KD
    defaults): T = 4, CE weight 0.1, KD weight 0.9, and ``RandAugment(2, 10)``
    for the strong view (the 10 is unused there). The teacher's outputs on
    the weak view may come precomputed; on the strong view it runs on every
    batch, since each view is new.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        n_ops: int = 2,
    ) -> None:
        check_T(T)
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        check_int("n_ops", n_ops, 0)
        super().__init__(student, teacher)
        self.T, self.ce_weight, self.kd_weight, self.n_ops = (
            T,
            ce_weight,
            kd_weight,
            n_ops,
        )
        self._info = None  # the data set's DatasetInfo, from setup()

    def setup(self, data) -> None:
        self._info = data.info

    def strong_view(self, x: Tensor) -> Tensor:
        """The strongly augmented view of the normalised batch ``x``: back to
        its uint8 pixels (exact, as they came from uint8), augmented, and
        normalised again."""
        if self._info is None:
            raise RuntimeError(
                "mlkd needs setup(data) before forward: the strong view undoes "
                "the data set's normalisation"
            )
        mean = torch.tensor(self._info.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self._info.std, device=x.device).view(1, -1, 1, 1)
        pixels = ((x.float() * std + mean) * 255.0).round_().clamp_(0, 255)
        strong = rand_augment(pixels.to(torch.uint8), self.n_ops)
        out = normalize(strong, self._info)
        if x.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        x_strong = self.strong_view(x)
        weak_s, strong_s = self.student(x), self.student(x_strong)
        weak_t = self.teacher_logits(x, teacher_out)
        with torch.no_grad():
            strong_t = self.teacher(x_strong)
        terms = mlkd_loss(
            weak_s, weak_t, strong_s, strong_t, (self.T, 3.0, 5.0, 2.0, 6.0)
        )
        ce = F.cross_entropy(weak_s, y) + F.cross_entropy(strong_s, y)
        return weak_s, {
            "ce": self.ce_weight * ce,
            **{k: self.kd_weight * v for k, v in terms.items()},
        }
