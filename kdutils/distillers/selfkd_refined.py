"""Self-distillation with a self-teacher network, survey section 2.3.2 (second half).

The second module of the self-distillation family (the first,
:mod:`~kdutils.distillers.selfkd`, holds BYOT and BAKE):

- ``frskd``: refine myself by teaching myself (Ji et al. 2021). A small
  *self-teacher* network reads the classifier's three stage outputs,
  aggregates them top-down and bottom-up (one BiFPN-like layer) into refined
  feature maps and its own logits; the classifier learns from both, by soft
  targets and by attention transfer. Teacher and classifier train together;
  the classifier alone is deployed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..inference import predict_logits
from ..losses import at_loss, kd_loss
from ..models import capture
from .base import Distiller, check_weights, register
from .selfkd import stage_channels

__all__ = ["FRSKD", "SelfTeacher"]

_STAGES = ("layer1", "layer2", "layer3")
_EPS = 1e-6  # the fusion weights' epsilon, as in the authors' BiFPN layer


def _block(c_in: int, c_out: int, kernel: int, depth: int = 1) -> nn.Sequential:
    """The authors' ``DepthConvBlock``.

    ``kernel`` 1: a 1x1 convolution, batch norm, ReLU. ``kernel`` 3: a
    depthwise 3x3 and a pointwise 1x1 convolution and batch norm, then
    ``depth - 1`` more of them, each after a ReLU (no ReLU at the end).
    Convolutions without biases.
    """
    if kernel == 1:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
        )
    layers: list[nn.Module] = []
    for i in range(depth):
        c = c_in if i == 0 else c_out
        layers += [nn.ReLU()] if i > 0 else []
        layers += [
            nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c, bias=False),
            nn.Conv2d(c, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
    return nn.Sequential(*layers)


def _maxpool_same(x: Tensor) -> Tensor:
    """3x3 max pooling of stride 2 with TensorFlow's 'same' zero padding
    (the authors' ``MaxPool2dStaticSamePadding``): ``(H, W) -> (ceil(H/2), ceil(W/2))``."""
    h, w = x.shape[-2:]
    extra_h = (math.ceil(h / 2) - 1) * 2 - h + 3
    extra_w = (math.ceil(w / 2) - 1) * 2 - w + 3
    top, left = extra_h // 2, extra_w // 2
    x = F.pad(x, [left, extra_w - left, top, extra_h - top])
    return F.max_pool2d(x, 3, 2)


def _fusion(weight: Tensor) -> Tensor:
    """BiFPN's fast normalised fusion: ``relu(w) / (sum relu(w) + eps)``."""
    w = F.relu(weight)
    return w / (w.sum() + _EPS)


class SelfTeacher(nn.Module):
    """FRSKD's self-teacher: one BiFPN layer over the classifier's stages, then a classifier.

    The authors' ``BiFPNc`` with one repeat. With ``channels`` the widths
    ``C_1..C_n`` of the classifier's stage outputs ``F_1..F_n`` (shallow to
    deep) and ``width`` the multiplier (each level has ``width * C_i``
    channels), lateral 1x1 blocks ``L_i`` give ``P_i = L_i(F_i)``; the
    top-down path ``T_n = P_n``, ``T_i = conv(w1 P_i + w2 up(T_{i+1}))``
    (``up``: nearest upsampling to level i's size and a 1x1 block); the
    bottom-up path ``R_1 = T_1``, ``R_i = conv(w1 L'_i(F_i) + w2 T_i + w3
    down(R_{i-1}))`` (the deepest level without ``T_n``; ``down``: 3x3
    'same' max pooling of stride 2 and a 1x1 block; ``L'_i`` a second lateral
    block), where ``w`` are learned non-negative weights normalised to sum to
    1 and ``conv`` is a depthwise-separable block of ``depth`` convolutions.
    Inputs of every sum pass through a ReLU. ``forward(feats)`` returns the
    refined maps ``relu(R_i)`` (``(B, width C_i, H_i, W_i)``) and the logits
    of a linear layer on the pooled deepest one.

    Reference: ``ji2021refine`` (MingiJi/FRSKD, ``models/bifpnc.py``).
    """

    def __init__(
        self,
        channels: list[int],
        num_classes: int,
        width: int = 2,
        depth: int = 2,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError(f"the self-teacher needs >= 2 levels, got {channels}")
        n, wc = len(channels), [c * width for c in channels]
        self.lateral = nn.ModuleList(
            _block(c, w, 1) for c, w in zip(channels, wc, strict=True)
        )
        self.lateral2 = nn.ModuleList(
            _block(channels[i], wc[i], 1) for i in range(1, n)
        )
        self.up = nn.ModuleList(_block(wc[i + 1], wc[i], 1) for i in range(n - 1))
        self.up_conv = nn.ModuleList(
            _block(wc[i], wc[i], 3, depth) for i in range(n - 1)
        )
        self.up_weight = nn.ParameterList(torch.ones(2) for _ in range(n - 1))
        self.down = nn.ModuleList(_block(wc[i - 1], wc[i], 1) for i in range(1, n))
        self.down_conv = nn.ModuleList(
            _block(wc[i], wc[i], 3, depth) for i in range(1, n)
        )
        self.down_weight = nn.ParameterList(
            torch.ones(3 if i < n - 1 else 2) for i in range(1, n)
        )
        self.fc = nn.Linear(wc[-1], num_classes)

    def forward(self, feats: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        n = len(self.lateral)
        if len(feats) != n:
            raise ValueError(
                f"the self-teacher expects {n} feature maps, got {len(feats)}"
            )
        lat = [m(F.relu(f)) for m, f in zip(self.lateral, feats, strict=True)]
        lat2 = [self.lateral2[i - 1](F.relu(feats[i])) for i in range(1, n)]
        td = [*lat]  # top-down: deepest level as it is, then shallower levels
        for i in range(n - 2, -1, -1):
            w = _fusion(self.up_weight[i])
            up = F.interpolate(
                F.relu(td[i + 1]), size=lat[i].shape[-2:], mode="nearest"
            )
            td[i] = self.up_conv[i](w[0] * F.relu(lat[i]) + w[1] * self.up[i](up))
        out = [td[0]]  # bottom-up
        for i in range(1, n):
            w = _fusion(self.down_weight[i - 1])
            down = self.down[i - 1](_maxpool_same(F.relu(out[-1])))
            s = w[0] * F.relu(lat2[i - 1]) + w[-1] * down
            if i < n - 1:
                s = s + w[1] * F.relu(td[i])
            out.append(self.down_conv[i - 1](s))
        refined = [F.relu(r) for r in out]
        pooled = F.adaptive_avg_pool2d(refined[-1], 1).flatten(1)
        return refined, self.fc(pooled)


class _TeacherClassifier(nn.Module):
    """The student's stages and the self-teacher as one plain classifier
    (for evaluation; shares both, never registered in the Distiller)."""

    def __init__(self, student: nn.Module, self_teacher: SelfTeacher) -> None:
        super().__init__()
        self.student, self.self_teacher = student, self_teacher

    def forward(self, x: Tensor) -> Tensor:
        with capture(self.student, _STAGES) as feats:
            self.student(x)
        return self.self_teacher([feats[n] for n in _STAGES])[1]


@register("frskd", section="2.3.2")
class FRSKD(Distiller):
    """Refine myself by teaching myself (Ji et al. 2021): a self-teacher built on the classifier's stages.

    The :class:`SelfTeacher` reads the student's ``layer1..3`` outputs ``F_i``
    and gives refined maps ``R_i`` and logits ``z_T``. With ``z`` the
    student's logits the loss is the authors' ``ce_weight CE(z, y) +
    self_ce_weight CE(z_T, y) + kd_weight kd_loss(z, z_T, T) + at_weight
    at_loss(F, R)``: the KD term (T^2 KL, mean over the batch) and the
    attention transfer (normalised channel means of ``f^2``, squared
    difference averaged over batch and positions, summed over the three
    levels) treat ``z_T`` and ``R`` as constants. The self-teacher's own
    cross-entropy is not detached from ``F``: it trains the student's stages
    too, as in the authors' code. Defaults: the authors' code and README for
    CIFAR-100 (MingiJi/FRSKD: T = 4, alpha = ``kd_weight`` 2, beta =
    ``at_weight`` 100, self-teacher width 2, depth 2, both cross-entropies
    weighted 1). Their classifier's stages end without the last ReLU and
    they distil ``relu(F_i)``; the CIFAR ResNets here end with the ReLU, so
    the stage outputs are the same maps. Terms: ``ce``, ``self_ce``, ``kd``,
    ``at``. ``epoch_metrics`` reports ``self_teacher_acc``.
    """

    needs_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        T: float = 4.0,
        kd_weight: float = 2.0,
        at_weight: float = 100.0,
        ce_weight: float = 1.0,
        self_ce_weight: float = 1.0,
        width: int = 2,
        depth: int = 2,
    ) -> None:
        check_T(T)
        check_weights(
            kd_weight=kd_weight,
            at_weight=at_weight,
            ce_weight=ce_weight,
            self_ce_weight=self_ce_weight,
        )
        for name, v in (("width", width), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        channels = stage_channels(student, "FRSKD")
        super().__init__(student, None)
        self.T, self.kd_weight, self.at_weight = T, kd_weight, at_weight
        self.ce_weight, self.self_ce_weight = ce_weight, self_ce_weight
        self.width, self.depth = width, depth
        self.self_teacher = SelfTeacher(
            channels, student.fc.out_features, width=width, depth=depth
        )

    def outputs(self, x: Tensor) -> tuple[Tensor, list[Tensor], Tensor, list[Tensor]]:
        """The student's logits and stage maps, the self-teacher's logits and refined maps."""
        with capture(self.student, _STAGES) as feats:
            logits = self.student(x)
        maps = [feats[n] for n in _STAGES]
        refined, logits_t = self.self_teacher(maps)
        return logits, maps, logits_t, refined

    def teacher_model(self) -> nn.Module:
        """The student's stages and the self-teacher as one classifier."""
        return _TeacherClassifier(self.student, self.self_teacher)

    def epoch_metrics(self, test) -> dict[str, float]:
        """``self_teacher_acc`` on 2000 test images (a fixed subset)."""
        sub = test.subset(2000)
        z = predict_logits(self.teacher_model(), sub)
        return {"self_teacher_acc": (z.argmax(1) == sub.labels).double().mean().item()}

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits, maps, logits_t, refined = self.outputs(x)
        return logits, {
            "ce": self.ce_weight * F.cross_entropy(logits, y),
            "self_ce": self.self_ce_weight * F.cross_entropy(logits_t, y),
            "kd": self.kd_weight * kd_loss(logits, logits_t.detach(), self.T),
            "at": self.at_weight * at_loss(maps, [r.detach() for r in refined]),
        }
