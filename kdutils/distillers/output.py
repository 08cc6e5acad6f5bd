"""Distillers for better output losses, survey section 2.1.

Conditional teacher-student learning, dynamic temperature distillation,
prime-aware adaptive distillation, the triplet loss for KD and uncertainty-aware
mixup (UNIX).
Each hyperparameter's default is the paper's or the authors' code's unless its
docstring says otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..losses import (
    conditional_ts_loss,
    dtd_loss,
    kd_loss,
    mixup_cross_entropy,
    pad_loss,
    prediction_entropy,
    probability_shift,
    triplet_kd_loss,
    unix_mixing_weights,
)
from ..models import capture
from .base import Distiller, check_weights, register


@register("cts", section="2.1")
class ConditionalTS(Distiller):
    """Conditional teacher-student learning (Meng et al. 2019).

    Per sample, the student learns the teacher's posteriors where the teacher
    classifies it correctly and the label where it does not
    (:func:`kdutils.losses.conditional_ts_loss`); no temperature and no extra
    weight, as in the paper.
    """

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        logits_t = self.teacher_logits(x, teacher_out)
        return logits_s, {"cts": conditional_ts_loss(logits_s, logits_t, y)}


@register("dtd", section="2.1")
class DTD(Distiller):
    """Dynamic temperature distillation (Wen et al. 2021): a temperature per sample.

    ``ce_weight * CE + kd_weight * dtd_loss`` where each sample's temperature
    is ``T + beta * (mean_batch(w) - w)`` and ``w = (1 - cos(l_S, l_T))^gamma``
    (:func:`kdutils.losses.dtd_temperatures`). ``probability_shift=True``
    adds the paper's knowledge adjustment (the teacher's wrong top class and
    the label swapped). T and the weights are ``kd``'s (RepDistiller's defaults); the
    paper's beta and gamma could not be checked (its code is not public): 1.0
    and 1.0 are those of TextBrewer's implementation of the same rule.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        probability_shift: bool = False,
    ) -> None:
        check_T(T)
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight, beta=beta, gamma=gamma)
        # w <= 2^gamma, so every temperature stays above T - beta * 2^gamma.
        if T <= beta * 2**gamma:
            raise ValueError(
                f"T must exceed beta * 2**gamma = {beta * 2**gamma:g} so that every "
                f"per-sample temperature is positive, got T={T}"
            )
        super().__init__(student, teacher)
        self.T, self.beta, self.gamma = T, beta, gamma
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        self.probability_shift = probability_shift

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        logits_t = self.teacher_logits(x, teacher_out)
        if self.probability_shift:
            logits_t = probability_shift(logits_t, y)
        kd = dtd_loss(logits_s, logits_t, self.T, self.beta, self.gamma)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd,
        }


@register("pad", section="2.1")
class PAD(Distiller):
    """Prime-aware adaptive distillation (Zhang et al. 2020b) on the embeddings.

    ``ce_weight * CE + pad_weight * mean_{b,d}[(f_S - f_T)^2 / (sigma^2 + eps)
    + log sigma^2]`` (:func:`kdutils.losses.pad_loss`) on the pooled
    embeddings ``f`` (the ``pool`` output, the feature vector the paper
    distils): the gap between the student's and the teacher's embedding is
    modelled as a Gaussian whose variance ``sigma_bd^2`` a head predicts for
    every sample and dimension from the student's embedding; samples with a
    small variance (the "prime" ones) weigh more. The head is a linear layer
    followed by batch normalisation, as in the public PAD code (the authors
    released none), which also adds ``eps = 1e-5`` to the variance; both keep
    the variances from collapsing. The two embeddings must have the same
    width (no connector, as in that code): otherwise a ``ValueError``. Weights
    1.0 and 1.0: the paper's values could not be checked.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        pad_weight: float = 1.0,
        eps: float = 1e-5,
    ) -> None:
        check_weights(ce_weight=ce_weight, pad_weight=pad_weight)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        super().__init__(student, teacher)
        self.ce_weight, self.pad_weight, self.eps = ce_weight, pad_weight, eps
        d_s, d_t = student.fc.in_features, teacher.fc.in_features
        if d_s != d_t:
            raise ValueError(
                f"PAD compares the pooled embeddings without a connector: "
                f"student pool ({d_s},) != teacher pool ({d_t},)"
            )
        self.teacher_layers = ("pool",)
        # (B, D) student embedding -> (B, D) log-variance.
        self.log_var_head = nn.Sequential(nn.Linear(d_s, d_s), nn.BatchNorm1d(d_s))

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        with capture(self.student, ["pool"]) as feats:
            logits_s = self.student(x)
        f_s = feats["pool"]
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        log_var = self.log_var_head(f_s)  # (B, D)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "pad": self.pad_weight * pad_loss(f_s, t["pool"], log_var, self.eps),
        }


def other_class_partners(y: Tensor) -> tuple[Tensor, Tensor]:
    """For each sample, a random batch member of another class.

    Returns ``(j, valid)``: ``j[b]`` is the partner's position, ``valid[b]``
    is False when every sample of the batch has ``b``'s class. Uses the global
    torch random generator. ``(B,) -> (B,), (B,)``.
    """
    scores = torch.rand(len(y), len(y), device=y.device)
    scores[y[:, None] == y[None, :]] = -1.0  # same class: never chosen
    best, j = scores.max(dim=1)
    return j, best >= 0


@register("triplet", section="2.1")
class TripletKD(Distiller):
    """Triplet loss for KD (Oki et al. 2020), with KD and the labels.

    ``ce_weight * CE + kd_weight * KL(p_T || p_S) + triplet_weight * triplet``,
    the authors' code's loss: KL at temperature ``T = 1``, weights 1, 1, 2, and
    a triplet (:func:`kdutils.losses.triplet_kd_loss`, margin 5) whose anchor
    is the teacher's logits, positive the student's logits of the same sample
    and negative the student's logits of a sample of another class. The
    authors draw that sample from the whole training set and pass it through
    the student; here it is a random batch member of another class, which
    saves the second student pass.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 1.0,
        margin: float = 5.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        triplet_weight: float = 2.0,
    ) -> None:
        check_T(T)
        check_weights(
            margin=margin,
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            triplet_weight=triplet_weight,
        )
        super().__init__(student, teacher)
        self.T, self.margin = T, margin
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        self.triplet_weight = triplet_weight

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        logits_t = self.teacher_logits(x, teacher_out)
        j, valid = other_class_partners(y)
        if valid.any():
            triplet = triplet_kd_loss(
                logits_s[valid], logits_t[valid], logits_s[j[valid]], self.margin
            )
        else:  # a batch of one class has no negatives
            triplet = logits_s.sum() * 0.0
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd_loss(logits_s, logits_t, self.T),
            "triplet": self.triplet_weight * triplet,
        }


@register("unix", section="2.1")
class UNIX(Distiller):
    """Uncertainty-aware mixup (Xu et al. 2020): fewer, more informative teacher queries.

    Per batch of ``B``: the student (no gradient) scores every sample by the
    entropy of its prediction; the samples are ranked from the most uncertain;
    each is mixed with a random batch member with weight
    ``lambda * unix_mixing_weights(B, b, w)[rank]`` (``lambda ~ U(0, 1)``, the
    authors' Beta(1, 1)), so the ``b`` most uncertain stay nearly clean; only
    the ``k`` most uncertain (mixed) images go to the teacher and the student.
    Loss: ``ce_weight * mixed-label CE + kd_weight * T^2 KL`` on those ``k``.

    The authors' CIFAR-100 setting is batch 64, k = 48, b = 32, w = 10, T = 4,
    ``ce_weight = 0``, ``kd_weight = 1``; here k and b are fractions of the batch
    (0.75, 0.5). Mixed images are not in the training set, so the teacher runs
    live on them; precomputed teacher logits are used only for an image left
    exactly unmixed. ``teacher_images`` counts the images the teacher
    actually saw, per epoch (``on_epoch`` opens a new count). The student
    logits returned (for the training accuracy) are the scoring pass on the
    whole clean batch, as in the authors' logs.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        k_ratio: float = 0.75,
        b_ratio: float = 0.5,
        w: float = 10.0,
        T: float = 4.0,
        ce_weight: float = 0.0,
        kd_weight: float = 1.0,
    ) -> None:
        if not 0 < k_ratio <= 1:
            raise ValueError(f"k_ratio must be in (0, 1], got {k_ratio}")
        if not 0 <= b_ratio <= 1:
            raise ValueError(f"b_ratio must be in [0, 1], got {b_ratio}")
        check_T(T)
        check_weights(w=w, ce_weight=ce_weight, kd_weight=kd_weight)
        super().__init__(student, teacher)
        self.k_ratio, self.b_ratio, self.w, self.T = k_ratio, b_ratio, w, T
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        # Images the teacher saw, one count per epoch (plain ints: a measurement,
        # not state that training depends on).
        self.teacher_images: list[int] = [0]
        self.batch_images: list[int] = [0]

    def on_epoch(self, epoch: int, epochs: int) -> None:
        if self.batch_images[-1]:
            self.teacher_images.append(0)
            self.batch_images.append(0)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        B = len(x)
        k = min(B, max(1, round(self.k_ratio * B)))
        b = round(self.b_ratio * B)
        with torch.no_grad():  # the scoring pass, in train mode as the authors'
            logits_all = self.student(x)
        rank = torch.argsort(
            prediction_entropy(logits_all), descending=True, stable=True
        )
        lam = torch.rand(())  # Beta(1, 1)
        coef = lam * unix_mixing_weights(B, b, self.w)  # share of the partner, (B,)
        coef = coef.to(x.device, x.dtype)
        partner = torch.randperm(B, device=x.device)
        c = coef.view(-1, *([1] * (x.dim() - 1)))
        x_mix = ((1 - c) * x[rank] + c * x[partner])[:k]
        coef, src, y_a, y_b = coef[:k], rank[:k], y[rank][:k], y[partner][:k]
        logits_s = self.student(x_mix)
        live = coef != 0  # an exactly clean image may use the precomputed logits
        if teacher_out is None:
            live = torch.ones_like(live)
        logits_t = torch.empty_like(logits_s)
        if live.any():
            logits_t[live] = self.teacher_outputs(x_mix[live])["logits"].to(
                logits_s.dtype
            )
        if not live.all():
            logits_t[~live] = teacher_out["logits"][src[~live]].to(logits_s.dtype)
        self.teacher_images[-1] += int(live.sum())
        self.batch_images[-1] += B
        return logits_all, {
            "ce": self.ce_weight * mixup_cross_entropy(logits_s, y_a, y_b, coef),
            "kd": self.kd_weight * kd_loss(logits_s, logits_t, self.T),
        }
