"""Knowledge extracted from feature maps with learned weights, survey section 2.2.2.

The second module of the extracting family (survey Eq. (3), ``L_KD =
DF(sum_i alpha_i f_S^i, sum_j beta_j f_T^j)``): the methods whose summary of
the maps has learned weights, AFD (a channel attention on the teacher's
maps), AFM (attention of every teacher block over every student block) and
ReviewKD (student levels fused by learned modules). The fixed summaries (AT,
FSP, NST) are in :mod:`~kdutils.distillers.extracting`; both modules draw on
the losses of :mod:`kdutils.losses.extracting` and on
:mod:`~kdutils.distillers.features`.

Layers, for the CIFAR ResNets of :mod:`kdutils.models`: the three stage outputs
(``stage_layers()``) for AFD, every residual block for AFM, and the pre-ReLU
stage ends and the pooled embedding of the teacher for ReviewKD, each as the
method's reference code does it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..losses.extracting import afd_loss, afm_loss, attention_map, hcl_loss
from ..losses.traditional import kd_loss
from .base import Distiller, check_weights, register
from .features import paired_shapes, student_features, teacher_features


def _blocks(model: nn.Module) -> list[str]:
    """Every residual block of a CIFAR ResNet: ``layer1.0``, ..., ``layer3.{n-1}``."""
    return [
        f"layer{i}.{j}"
        for i in (1, 2, 3)
        for j in range(len(getattr(model, f"layer{i}")))
    ]


@register("afd", section="2.2.2")
class AFD(Distiller):
    """Attentive feature distillation (Wang et al. 2020a): channel-weighted map matching.

    The survey's Table-1 "AFD" row. A small attention network reads the
    teacher's pooled features and gives each channel a weight ``rho``
    (sigmoid, rows normalised to sum 1); ``L = ce_weight * CE + afd_weight *
    afd_loss``, the mean over the three stages. This is the form of
    Knowledge-Distillation-Zoo (which replaced the paper's attention by an SE
    block), with its CIFAR-10 defaults ``lambda_kd = 500``, ``att_f = 1``.
    Student and teacher maps must have equal shapes.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        afd_weight: float = 500.0,
        att_f: float = 1.0,
    ) -> None:
        check_weights(ce_weight=ce_weight, afd_weight=afd_weight)
        if att_f <= 0:
            raise ValueError(f"att_f must be > 0, got {att_f}")
        super().__init__(student, teacher)
        self.ce_weight, self.afd_weight, self.att_f = ce_weight, afd_weight, att_f
        self.student_layers = tuple(student.stage_layers())
        self.teacher_layers = tuple(teacher.stage_layers())
        self.attention = nn.ModuleList()  # one per stage, sized in setup

    def setup(self, data) -> None:
        shapes_s, shapes_t = paired_shapes(
            self, data, self.student_layers, self.teacher_layers
        )
        for ls, ss, lt, st in zip(
            self.student_layers, shapes_s, self.teacher_layers, shapes_t, strict=True
        ):
            if ss != st:
                raise ValueError(
                    f"AFD: student layer {ls!r} {ss} and teacher layer {lt!r} {st} "
                    "differ; AFD compares maps channel by channel (equal shapes)"
                )
        device = next(self.student.parameters()).device
        attention = []
        for c in (s[0] for s in shapes_t):
            mid = int(c * self.att_f)
            att = nn.Sequential(
                nn.Conv2d(c, mid, 1), nn.ReLU(inplace=True), nn.Conv2d(mid, c, 1)
            )
            for m in att:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(
                        m.weight, mode="fan_out", nonlinearity="relu"
                    )
                    nn.init.zeros_(m.bias)
            attention.append(att)
        self.attention = nn.ModuleList(attention).to(device)

    def channel_weights(self, feats_t: Sequence[Tensor]) -> list[Tensor]:
        """``rho`` ``(B, C)`` per stage, from the teacher's pooled features."""
        rhos = []
        for att, f_t in zip(self.attention, feats_t, strict=True):
            rho = torch.sigmoid(att(F.adaptive_avg_pool2d(f_t, 1)).flatten(1))
            rhos.append(rho / rho.sum(1, keepdim=True))
        return rhos

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = student_features(self, x, self.student_layers)
        t = teacher_features(self, x, teacher_out)
        feats_t = [t[k] for k in self.teacher_layers]
        rhos = self.channel_weights(feats_t)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "afd": self.afd_weight * afd_loss(feats_s, feats_t, rhos),
        }


def _linear_bn(n_in: int, n_out: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Linear(n_in, n_out), nn.BatchNorm1d(n_out)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


@register("afm", section="2.2.2")
class AFM(Distiller):
    """Attention-based feature matching (Ji et al. 2021a, "show, attend and distill").

    Every teacher block t attends over every student block s: a query from
    the teacher's channel means, a key from the student's (through a bilinear
    map), plus learned positional terms; ``a_ts = softmax_s``. Each pair
    compares attention maps (the student's pooled to the teacher's size),
    weighted by ``a_ts`` (:func:`~kdutils.losses.afm_loss`). ``L = ce_weight *
    CE + kd_weight * KD(T) + afm_weight * afm_loss``: the authors' code's
    defaults (alpha 0.9, T 4, beta 200, qk_dim 128). Their repository calls it
    AFD; it is registered as ``afm`` so that ``afd`` stays the Table-1 row.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        kd_weight: float = 0.9,
        T: float = 4.0,
        afm_weight: float = 200.0,
        qk_dim: int = 128,
    ) -> None:
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight, afm_weight=afm_weight)
        if T <= 0 or qk_dim < 1:
            raise ValueError(f"T must be > 0 and qk_dim >= 1, got {T}, {qk_dim}")
        super().__init__(student, teacher)
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T
        self.afm_weight, self.qk_dim = afm_weight, int(qk_dim)
        self.student_layers = tuple(_blocks(student))
        self.teacher_layers = tuple(_blocks(teacher))

    @torch.no_grad()
    def teacher_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """Per teacher block, the two summaries AFM reads, packed ``(B, C + H*W)``:
        the channel means and the normalised attention map (a fraction of the
        block's output, so the trainer can keep them for the whole training set)."""
        out = super().teacher_outputs(x)
        for k in self.teacher_layers:
            f = out[k]
            out[k] = torch.cat([f.mean(dim=(2, 3)), attention_map(f)], dim=1)
        return out

    def setup(self, data) -> None:
        shapes_s, shapes_t = paired_shapes(
            self, data, self.student_layers, self.teacher_layers
        )
        n_s, n_t, qk = len(shapes_s), len(shapes_t), self.qk_dim
        self._channels_t = [s[0] for s in shapes_t]
        self._sizes_t = [tuple(s[1:]) for s in shapes_t]
        device = next(self.student.parameters()).device
        self.key = nn.ModuleList([_linear_bn(s[0], qk, relu=True) for s in shapes_s])
        self.bilinear = _linear_bn(qk, qk * n_t, relu=False)
        self.query = nn.ModuleList(
            [_linear_bn(c, qk, relu=False) for c in self._channels_t]
        )
        self.key.to(device), self.bilinear.to(device), self.query.to(device)
        # Learned positional terms of the teacher's and the student's blocks.
        self.pos_t = nn.Parameter(
            nn.init.xavier_normal_(torch.empty(n_t, qk, device=device))
        )
        self.pos_s = nn.Parameter(
            nn.init.xavier_normal_(torch.empty(n_s, qk, device=device))
        )

    def attention(self, feats_s: Sequence[Tensor], chan_t: Sequence[Tensor]) -> Tensor:
        """``a`` ``(B, T, S)``: each teacher block's softmax over the student blocks."""
        b, n_s, n_t = feats_s[0].shape[0], len(feats_s), len(chan_t)
        query = torch.stack(
            [q(c) for q, c in zip(self.query, chan_t, strict=True)], 1
        )  # (B, T, qk)
        key = torch.stack(
            [k(f.mean(dim=(2, 3))) for k, f in zip(self.key, feats_s, strict=True)], 1
        )
        key = self.bilinear(key.flatten(0, 1)).view(b, n_s, n_t, -1)  # (B, S, T, qk)
        logit = torch.einsum("bstq,btq->bts", key, query) + self.pos_t @ self.pos_s.T
        return F.softmax(logit / math.sqrt(self.qk_dim), dim=2)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = student_features(self, x, self.student_layers)
        t = teacher_features(self, x, teacher_out)
        packed = [t[k] for k in self.teacher_layers]
        chan_t = [p[:, :c] for p, c in zip(packed, self._channels_t, strict=True)]
        values_t = [p[:, c:] for p, c in zip(packed, self._channels_t, strict=True)]
        maps_s = [f.pow(2).mean(1, keepdim=True) for f in feats_s]  # (B, 1, H, W)
        pooled = {
            size: F.normalize(
                torch.stack(
                    [F.adaptive_avg_pool2d(m, size).flatten(1) for m in maps_s], 1
                ),
                dim=2,
            )  # (B, S, h*w)
            for size in dict.fromkeys(self._sizes_t)
        }
        values_s = [pooled[size] for size in self._sizes_t]
        att = self.attention(feats_s, chan_t)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd_loss(logits_s, t["logits"], self.T),
            "afm": self.afm_weight * afm_loss(values_s, values_t, att),
        }


class ABF(nn.Module):
    """ReviewKD's attention-based fusion: a student map, fused with the deeper residual.

    ``conv1`` (1x1 + BN) maps the student's channels to ``mid``; with ``fuse``,
    the deeper level's output is upsampled (nearest) and mixed in with two
    per-pixel sigmoid weights; the result is resized to the teacher's size
    and ``conv2`` (3x3 + BN) maps it to the teacher's channels.
    """

    def __init__(
        self, in_channels: int, mid: int, out_channels: int, fuse: bool
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid)
        )
        self.conv2 = nn.Sequential(
            nn.Conv2d(mid, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.att_conv = (
            nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(
        self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size=x.shape[2:], mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))  # (B, 2, H, W)
            x = x * z[:, :1] + residual * z[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.conv2(x), x


def _as_map(f: Tensor) -> Tensor:
    """A pooled embedding ``(B, C)`` as a ``(B, C, 1, 1)`` map; maps unchanged."""
    return f[:, :, None, None] if f.dim() == 2 else f


@register("reviewkd", section="2.2.2")
class ReviewKD(Distiller):
    """Knowledge review (Chen et al. 2021): fused student levels against the teacher's.

    The student's stage outputs and pooled embedding are fused from the
    deepest level down by :class:`ABF` modules (residual learning), so each
    output sees its own and all deeper levels; each is compared with the
    teacher's level (pre-ReLU stage ends, pooled embedding) by the
    hierarchical context loss. ``L = ce_weight * CE + w(epoch) *
    reviewkd_weight * hcl_loss`` with ``w = min(1, epoch / warmup_epochs)``.
    Defaults: the authors' CIFAR code for ResNet56 -> ResNet20
    (``--kd-loss-weight 0.6``, 20 warm-up epochs, mid channels <= 512).
    """

    epoch_args = ("warmup_epochs",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        reviewkd_weight: float = 0.6,
        warmup_epochs: float = 20.0,
        max_mid_channels: int = 512,
    ) -> None:
        check_weights(ce_weight=ce_weight, reviewkd_weight=reviewkd_weight)
        if warmup_epochs < 0 or max_mid_channels < 1:
            raise ValueError(
                "warmup_epochs must be >= 0 and max_mid_channels >= 1, "
                f"got {warmup_epochs}, {max_mid_channels}"
            )
        super().__init__(student, teacher)
        self.ce_weight, self.reviewkd_weight = ce_weight, reviewkd_weight
        self.warmup_epochs, self.max_mid_channels = warmup_epochs, int(max_mid_channels)
        self.student_layers = (*student.stage_layers(), "pool")
        self.teacher_layers = (*teacher.stage_layers(pre_relu=True), "pool")
        self.abfs = nn.ModuleList()  # shallow to deep, sized in setup
        self.warmup = 1.0  # set by on_epoch during training

    def setup(self, data) -> None:
        shapes_s, shapes_t = paired_shapes(
            self, data, self.student_layers, self.teacher_layers
        )
        shapes_s = [s if len(s) == 3 else (*s, 1, 1) for s in shapes_s]
        shapes_t = [s if len(s) == 3 else (*s, 1, 1) for s in shapes_t]
        self._sizes_t = [tuple(s[1:]) for s in shapes_t]
        mid = min(self.max_mid_channels, shapes_s[-1][0])
        n = len(shapes_s)
        device = next(self.student.parameters()).device
        self.abfs = nn.ModuleList(
            ABF(s[0], mid, t[0], fuse=i < n - 1)
            for i, (s, t) in enumerate(zip(shapes_s, shapes_t, strict=True))
        ).to(device)

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.warmup = (
            min(1.0, epoch / self.warmup_epochs) if self.warmup_epochs else 1.0
        )

    def review(self, feats_s: Sequence[Tensor]) -> list[Tensor]:
        """The fused student features, shallow to deep, in the teacher's shapes."""
        outs: list[Tensor] = []
        residual = None
        for i in reversed(range(len(self.abfs))):
            out, residual = self.abfs[i](
                _as_map(feats_s[i]), residual, self._sizes_t[i]
            )
            outs.insert(0, out)
        return outs

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = student_features(self, x, self.student_layers)
        t = teacher_features(self, x, teacher_out)
        feats_t = [_as_map(t[k]) for k in self.teacher_layers]
        loss = hcl_loss(self.review(feats_s), feats_t)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "reviewkd": self.warmup * self.reviewkd_weight * loss,
        }
