"""Distillers for knowledge extracted from feature maps, survey section 2.2.2.

Survey Eq. (3): ``L_KD = DF(sum_i alpha_i f_S^i, sum_j beta_j f_T^j)``: the
student matches a summary of the teacher's maps (fixed weights for AT, FSP and
NST; learned ones for AFD, AFM and ReviewKD), not the maps themselves.

Layers, for the CIFAR ResNets of :mod:`kdutils.models`: the three stage outputs
(``stage_layers()``), plus the stem for FSP, every residual block for AFM, and
the pre-ReLU stage ends and the pooled embedding of the teacher for ReviewKD,
each as the method's reference code does it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import normalize
from ..losses.extract import (
    afd_loss,
    afm_loss,
    at_loss,
    attention_map,
    fsp_loss,
    hcl_loss,
    nst_loss,
)
from ..losses.output import kd_loss
from ..models import capture
from .base import Distiller, check_weights, feature_shapes, pretrain, register

Shape = tuple[int, ...]


def _student_features(
    distiller: Distiller, x: Tensor, layers: Sequence[str]
) -> tuple[Tensor, list[Tensor]]:
    """The student's logits and the outputs of ``layers`` for ``x``."""
    with capture(distiller.student, layers) as feats:
        logits = distiller.student(x)
    return logits, [feats[k] for k in layers]


def _teacher_features(distiller: Distiller, x: Tensor, teacher_out) -> dict:
    return teacher_out if teacher_out is not None else distiller.teacher_outputs(x)


def _paired_shapes(
    distiller: Distiller, data, layers_s: Sequence[str], layers_t: Sequence[str]
) -> tuple[list[Shape], list[Shape]]:
    """Per-sample shapes of the student's and the teacher's layers on one image."""
    x = normalize(data.images[:1], data.info)
    dev_s = next(distiller.student.parameters()).device
    dev_t = next(distiller.teacher.parameters()).device
    s = feature_shapes(distiller.student, layers_s, x.to(dev_s))
    t = feature_shapes(distiller.teacher, layers_t, x.to(dev_t))
    return [s[k] for k in layers_s], [t[k] for k in layers_t]


def _check_poolable(method, layers_s, shapes_s, layers_t, shapes_t) -> None:
    """Each pair's maps must be pooled one onto the other (one is larger in H and W)."""
    for ls, ss, lt, st in zip(layers_s, shapes_s, layers_t, shapes_t, strict=True):
        (hs, ws), (ht, wt) = ss[1:], st[1:]
        if not ((hs >= ht and ws >= wt) or (hs <= ht and ws <= wt)):
            raise ValueError(
                f"{method}: student layer {ls!r} {ss} and teacher layer {lt!r} {st} "
                "cannot be pooled to one spatial size"
            )


def _blocks(model: nn.Module) -> list[str]:
    """Every residual block of a CIFAR ResNet: ``layer1.0``, ..., ``layer3.{n-1}``."""
    return [
        f"layer{i}.{j}"
        for i in (1, 2, 3)
        for j in range(len(getattr(model, f"layer{i}")))
    ]


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
        shapes = _paired_shapes(self, data, self.student_layers, self.teacher_layers)
        _check_poolable(
            "AT", self.student_layers, shapes[0], self.teacher_layers, shapes[1]
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = _student_features(self, x, self.student_layers)
        t = _teacher_features(self, x, teacher_out)
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
        shapes_s, shapes_t = _paired_shapes(
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
        _, feats_s = _student_features(self, x, self.student_layers)
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
        logits_s, feats_s = _student_features(self, x, self.student_layers)
        t = _teacher_features(self, x, teacher_out)
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
        shapes = _paired_shapes(self, data, self.student_layers, self.teacher_layers)
        _check_poolable(
            "NST", self.student_layers, shapes[0], self.teacher_layers, shapes[1]
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = _student_features(self, x, self.student_layers)
        t = _teacher_features(self, x, teacher_out)
        feats_t = [t[k] for k in self.teacher_layers]
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "nst": self.nst_weight * nst_loss(feats_s, feats_t),
        }


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
        shapes_s, shapes_t = _paired_shapes(
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
        logits_s, feats_s = _student_features(self, x, self.student_layers)
        t = _teacher_features(self, x, teacher_out)
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
        shapes_s, shapes_t = _paired_shapes(
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
        logits_s, feats_s = _student_features(self, x, self.student_layers)
        t = _teacher_features(self, x, teacher_out)
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
        shapes_s, shapes_t = _paired_shapes(
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
        logits_s, feats_s = _student_features(self, x, self.student_layers)
        t = _teacher_features(self, x, teacher_out)
        feats_t = [_as_map(t[k]) for k in self.teacher_layers]
        loss = hcl_loss(self.review(feats_s), feats_t)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "reviewkd": self.warmup * self.reviewkd_weight * loss,
        }
