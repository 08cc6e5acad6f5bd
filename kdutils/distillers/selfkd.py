"""Self-distillation, survey section 2.3.2, Eq. (6).

No pre-trained teacher: the network teaches itself,
``L = L_t(l, t) + sum_i DF(f_i, R(f_{i+1}))``.

- ``byot``: classifiers (exits) after the student's first stages learn from
  its deepest classifier (Zhang et al. 2019); the exits are trainable
  submodules of the Distiller and are dropped at deployment: the deployed
  model is the whole student, its own (deepest) classifier.
- ``bake``: each sample's soft target is the batch's predictions propagated
  along feature affinities (Ge et al. 2021); nothing but the student trains.

FRSKD, whose self-teacher network refines the stages' features, is in the
family's second module, :mod:`~kdutils.distillers.selfkd_refined`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..inference import predict_logits
from ..losses import bake_targets, byot_feature_loss, byot_kd_loss, kl_to_targets
from ..models import capture
from .base import Distiller, check_weights, register

__all__ = ["BYOT", "BAKE", "stage_channels"]

_STAGES = ("layer1", "layer2", "layer3")


def stage_channels(model: nn.Module, method: str) -> list[int]:
    """Output channels of ``layer1..3`` of a CIFAR ResNet (the last batch norm
    of each stage); raises ``ValueError`` naming what ``model`` lacks."""
    missing = [n for n in (*_STAGES, "pool") if not hasattr(model, n)]
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        missing.append("fc (a linear layer)")
    channels = []
    for n in _STAGES:
        bns = [m for m in getattr(model, n, nn.Module()).modules() if _is_bn(m)]
        if not bns and n not in missing:
            missing.append(f"batch norm in {n}")
        channels.append(bns[-1].num_features if bns else 0)
    if missing:
        raise ValueError(
            f"{method} needs a CIFAR ResNet (stages layer1, layer2, layer3, pool "
            f"and a linear fc); {type(model).__name__} has no {', '.join(missing)}"
        )
    return channels


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.BatchNorm2d)


def _stage_strides(model: nn.Module) -> list[int]:
    """The spatial stride of ``layer2`` and ``layer3`` (their first convolution)."""
    strides = []
    for n in _STAGES[1:]:
        conv = next(m for m in getattr(model, n).modules() if isinstance(m, nn.Conv2d))
        strides.append(conv.stride[0])
    return strides


class ExitBranch(nn.Module):
    """A BYOT exit: bottleneck, global average pooling, linear classifier.

    The reference code's ``branchBottleNeck``: a 1x1 convolution to
    ``out_channels // 4``, a ``k x k`` convolution of stride ``k`` (``k`` the
    downsampling between this stage and the last, so the map reaches the last
    stage's size), a 1x1 convolution to ``out_channels``, each with batch norm
    and ReLU (convolutions with biases); then pooling and ``fc``.
    ``forward`` returns the logits and the pooled feature ``(B, out_channels)``.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel: int, num_classes: int
    ) -> None:
        super().__init__()
        mid = max(out_channels // 4, 1)
        self.bottleneck = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, mid, kernel, stride=kernel),
            nn.BatchNorm2d(mid),
            nn.ReLU(),
            nn.Conv2d(mid, out_channels, 1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )
        self.fc = nn.Linear(out_channels, num_classes)
        for m in self.bottleneck:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        feat = F.adaptive_avg_pool2d(self.bottleneck(h), 1).flatten(1)
        return self.fc(feat), feat


class _Exit(nn.Module):
    """One exit as a plain classifier (shares the student's stages and the
    exit's modules; built on demand, never registered in the Distiller)."""

    def __init__(self, student: nn.Module, stage: int, branch: ExitBranch) -> None:
        super().__init__()
        self.student, self.stage, self.branch = student, stage, branch

    def forward(self, x: Tensor) -> Tensor:
        h = self.student.stem(x)
        for n in _STAGES[: self.stage + 1]:
            h = getattr(self.student, n)(h)
        return self.branch(h)[0]


@register("byot", section="2.3.2")
class BYOT(Distiller):
    """Be your own teacher: the deepest classifier teaches exits at every stage (Zhang et al. 2019).

    An :class:`ExitBranch` after ``layer1`` and after ``layer2`` of the
    student (the CIFAR ResNet's three stages; the deepest classifier is the
    student's own ``fc``). With ``z_i``, ``f_i`` each shallow exit's logits and
    pooled feature and ``z_C``, ``f_C`` the deepest's (``f_C`` = the student's
    ``pool``), the loss is the reference code's ``ce_weight * sum_{all exits}
    CE(z, y) + kd_weight * sum_i byot_kd_loss(z_i, z_C, T) + hint_weight *
    sum_i byot_feature_loss(f_i, f_C)``, with ``z_C`` and ``f_C`` detached (the
    deepest exit learns from the labels only). Defaults: the reference PyTorch
    code's (luanyunteng/pytorch-be-your-own-teacher ``train.py``: T = 3,
    alpha = 0.1 -> ``kd_weight`` 0.1 and ``ce_weight`` 1 - alpha = 0.9,
    beta = 1e-6 -> ``hint_weight``). The deployed model is the whole student
    (its deepest classifier); the exits are trained with it and dropped.
    Terms: ``ce`` (deepest), ``exits_ce``, ``kd``, ``hint`` (exits summed).
    :meth:`exit_logits` and :meth:`exit_models` give every exit, shallowest
    first, the student last.
    """

    needs_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        T: float = 3.0,
        ce_weight: float = 0.9,
        kd_weight: float = 0.1,
        hint_weight: float = 1e-6,
    ) -> None:
        check_T(T)
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight, hint_weight=hint_weight)
        channels = stage_channels(student, "BYOT")
        s2, s3 = _stage_strides(student)
        super().__init__(student, None)
        self.T, self.ce_weight = T, ce_weight
        self.kd_weight, self.hint_weight = kd_weight, hint_weight
        classes, last = student.fc.out_features, channels[-1]
        if student.fc.in_features != last:
            raise ValueError(
                f"BYOT compares each exit's feature with the pooled layer3 output "
                f"({last} channels), but fc takes {student.fc.in_features}"
            )
        # Exit after layer1 is downsampled by layer2's and layer3's strides.
        kernels = (s2 * s3, s3)
        self.exits = nn.ModuleList(
            ExitBranch(c, last, k, classes)
            for c, k in zip(channels[:2], kernels, strict=True)
        )

    def all_exits(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Every exit's logits ``(B, K)`` and pooled feature ``(B, C)``,
        shallowest first, the student's own classifier last."""
        with capture(self.student, ["layer1", "layer2", "pool"]) as feats:
            z = self.student(x)
        outs = [e(feats[n]) for e, n in zip(self.exits, _STAGES, strict=False)]
        return [o[0] for o in outs] + [z], [o[1] for o in outs] + [feats["pool"]]

    @torch.no_grad()
    def exit_logits(self, x: Tensor) -> list[Tensor]:
        """Every exit's logits for ``x`` (in the current mode), deepest last."""
        return self.all_exits(x)[0]

    def exit_models(self) -> list[nn.Module]:
        """Every exit as a plain classifier (sharing the student), the student last."""
        return [_Exit(self.student, i, e) for i, e in enumerate(self.exits)] + [
            self.student
        ]

    def epoch_metrics(self, test) -> dict[str, float]:
        """``exit<i>_acc``: each exit's accuracy on 2000 test images (a fixed
        subset), shallowest first; the last is the student's own classifier."""

        sub = test.subset(2000)
        return {
            f"exit{i}_acc": (predict_logits(m, sub).argmax(1) == sub.labels)
            .double()
            .mean()
            .item()
            for i, m in enumerate(self.exit_models())
        }

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits, feats = self.all_exits(x)
        z_deep, f_deep = logits[-1].detach(), feats[-1].detach()
        shallow = range(len(self.exits))
        return logits[-1], {
            "ce": self.ce_weight * F.cross_entropy(logits[-1], y),
            "exits_ce": self.ce_weight
            * sum(F.cross_entropy(logits[i], y) for i in shallow),
            "kd": self.kd_weight
            * sum(byot_kd_loss(logits[i], z_deep, self.T) for i in shallow),
            "hint": self.hint_weight
            * sum(byot_feature_loss(feats[i], f_deep) for i in shallow),
        }


@register("bake", section="2.3.2")
class BAKE(Distiller):
    """Batch knowledge ensembling: the batch's predictions refine each target (Ge et al. 2021).

    On every batch the soft targets are :func:`bake_targets` of the student's
    own pooled features and logits (affinities between the samples,
    predictions at temperature T propagated with weight ``omega``), computed
    without gradients; the loss is ``ce_weight * CE(z, y) + kd_weight *
    kl_to_targets(z, Q, T)`` (T^2 KL summed over classes, mean over the
    batch, the authors' ``KDLoss``). Defaults: the authors' CIFAR script
    (yxgeee/BAKE ``small_scale``: omega 0.5, T 4, lamda = ``kd_weight`` 1).
    One difference: their sampler fills each batch with M = 3 other images of
    each anchor's class; the trainer's batches here are uniform samples.
    Terms: ``ce``, ``kd``.
    """

    needs_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        omega: float = 0.5,
        T: float = 4.0,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
    ) -> None:
        check_T(T)
        if not 0 <= omega < 1:
            raise ValueError(f"omega must be in [0, 1), got {omega}")
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        if not isinstance(getattr(student, "pool", None), nn.Module):
            raise ValueError(
                f"BAKE reads the pooled features of a model with a 'pool' layer; "
                f"{type(student).__name__} has none"
            )
        super().__init__(student, None)
        self.omega, self.T = omega, T
        self.ce_weight, self.kd_weight = ce_weight, kd_weight

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        with capture(self.student, ["pool"]) as feats:
            logits = self.student(x)
        with torch.no_grad():
            targets = bake_targets(
                feats["pool"].detach(), logits.detach(), self.omega, self.T
            )
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, y),
            "kd": self.kd_weight * kl_to_targets(logits, targets, self.T),
        }
