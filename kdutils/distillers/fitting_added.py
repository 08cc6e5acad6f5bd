"""Fitting feature maps directly, the methods added beside survey section 2.2.1.

The second module of the fitting family (survey Eq. (2), ``L_KD = DF(f_S,
f_T)``): AB (the activation boundaries of pre-ReLU features), FT (factors of
an autoencoder on the teacher's last map) and VID (a Gaussian likelihood with
a learned variance). None of them is in the survey; this book adds them
beside section 2.2.1 (registry status ``added``), as RepDistiller's baselines.
The survey's own methods, FitNet and SSKD, are in
:mod:`~kdutils.distillers.fitting`; both modules draw on the losses of
:mod:`kdutils.losses.fitting` and on :mod:`~kdutils.distillers.features`.
Connectors are built in ``setup`` from the feature shapes; shapes no
connector can bridge raise a ``ValueError`` naming layers and shapes.

AB and FT have a stage before the main training, run by ``prepare`` on a
fresh run (its weights are part of the checkpoints): AB trains the student's
lower layers first; FT trains its paraphraser. Those stages use their own SGD
(the shared :func:`~kdutils.distillers.base.pretrain`, with the run's
momentum and weight decay) at a constant ``init_lr``, as RepDistiller's
``init`` stage does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..losses import ab_loss, ft_loss, vid_loss
from ..models import capture
from .base import Distiller, check_weights, pretrain, register
from .features import (
    ce_kd_terms,
    check_init,
    conv_regressor,
    forward_until,
    layer_shapes,
)

__all__ = ["AB", "FT", "VID", "Paraphraser", "Translator", "VIDRegressor"]


@register("ab", section="2.2.1", status="added")
class AB(Distiller):
    """Activation boundaries (Heo et al. 2019): the student's neurons switch on where the teacher's do.

    ``prepare`` is the authors' initialisation stage: for ``init_epochs``
    epochs the student (up to its last stage) and the connectors are trained
    on :func:`kdutils.losses.ab_loss` alone, a margin loss (``margin`` = the
    paper's 1) on the pre-ReLU outputs of the three stages. Connectors: none
    for equal shapes, else a conv + BN (the authors' 1x1 conv + BN, or the
    benchmark's strided variant when sizes differ). The main training is then
    ``ce_weight CE + kd_weight KD``: the authors' CIFAR script trains the
    initialised student with soft targets; here with ``kd``'s T=4,
    0.1/0.9 (RepDistiller's KD defaults). RepDistiller's benchmark uses CE alone (``ce_weight=1,
    kd_weight=0``) after 30 initialisation epochs, its ``init_epochs`` default.
    """

    epoch_args = ("init_epochs",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        margin: float = 1.0,
        ab_weight: float = 1.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        T: float = 4.0,
        init_epochs: int = 30,
        init_lr: float = 0.05,
    ) -> None:
        check_weights(ab_weight=ab_weight, ce_weight=ce_weight, kd_weight=kd_weight)
        check_T(T)
        check_init(init_epochs, init_lr)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        super().__init__(student, teacher)
        self.margin, self.ab_weight = margin, ab_weight
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T
        self.init_epochs, self.init_lr = init_epochs, init_lr
        self.student_points = list(student.stage_layers(pre_relu=True))
        self.teacher_points = list(teacher.stage_layers(pre_relu=True))
        self.connectors = nn.ModuleList()

    def setup(self, data) -> None:
        s = layer_shapes(self.student, self.student_points, data)
        t = layer_shapes(self.teacher, self.teacher_points, data)
        self.connectors = nn.ModuleList(
            nn.Identity()
            if a == b
            else conv_regressor(
                a, b, relu=False, bias=False, names=(f"student {ns}", f"teacher {nt}")
            )
            for a, b, ns, nt in zip(
                s, t, self.student_points, self.teacher_points, strict=True
            )
        )

    def ab_term(self, x: Tensor) -> Tensor:
        """The weighted AB loss of a batch (the initialisation stage's objective)."""
        if len(self.connectors) != len(self.student_points):
            raise RuntimeError("call setup(data) first: it builds the connectors")
        with torch.no_grad():
            pre_t = forward_until(self.teacher, self.teacher_points, x)
        pre_s = forward_until(self.student, self.student_points, x)
        feats_s = [
            c(pre_s[n])
            for c, n in zip(self.connectors, self.student_points, strict=True)
        ]
        feats_t = [pre_t[n] for n in self.teacher_points]
        return self.ab_weight * ab_loss(feats_s, feats_t, self.margin)

    def prepare(self, loader, cfg=None) -> None:
        params = [*self.student.parameters(), *self.connectors.parameters()]
        self.train()
        pretrain(
            "ab initialisation",
            loader,
            params,
            self.ab_term,
            self.init_epochs,
            self.init_lr,
            cfg=cfg,
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        logits_t = None
        if self.kd_weight > 0:
            t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
            logits_t = t["logits"]
        terms = ce_kd_terms(
            logits_s, y, logits_t, self.ce_weight, self.kd_weight, self.T
        )
        return logits_s, terms


class Paraphraser(nn.Module):
    """FT's autoencoder on a teacher map: 3 convs down to ``k C`` channels, 3 transposed back.

    3x3 convolutions with bias and LeakyReLU(0.1), no batch norm, sizes kept
    (the authors' CIFAR module). ``encode`` gives the teacher factor.
    """

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1),
            act(),
            nn.Conv2d(c, k, 3, 1, 1),
            act(),
            nn.Conv2d(k, k, 3, 1, 1),
            act(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(k, k, 3, 1, 1),
            act(),
            nn.ConvTranspose2d(k, c, 3, 1, 1),
            act(),
            nn.ConvTranspose2d(c, c, 3, 1, 1),
            act(),
        )

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x``."""
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """FT's student side: the paraphraser's encoder shape, from ``C_s`` to ``k C_t`` channels."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1),
            act(),
            nn.Conv2d(c, k, 3, 1, 1),
            act(),
            nn.Conv2d(k, k, 3, 1, 1),
            act(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


@register("ft", section="2.2.1", status="added")
class FT(Distiller):
    """Factor transfer (Kim et al. 2018): match the teacher's paraphrased factors.

    ``prepare`` trains a paraphraser (an autoencoder with ``rate * C_t``
    factor channels, the paper's k = 0.5) to reconstruct the teacher's last
    feature map (L1, the authors' code; ``init_epochs=5``, ``init_lr=0.1`` as
    in their script), then freezes it. The student trains with ``ce_weight
    CE + ft_weight ft_loss(translator(f_S), paraphraser(f_T))``: the L1
    distance of the L2-normalised factors, ``ft_weight`` = the authors' beta
    of 500. Student and teacher maps must have the same spatial size.
    """

    epoch_args = ("init_epochs",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layer: str = "layer3",
        rate: float = 0.5,
        ft_weight: float = 500.0,
        ce_weight: float = 1.0,
        init_epochs: int = 5,
        init_lr: float = 0.1,
    ) -> None:
        check_weights(ft_weight=ft_weight, ce_weight=ce_weight)
        check_init(init_epochs, init_lr)
        if not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        super().__init__(student, teacher)
        self.layer, self.rate = layer, rate
        self.ft_weight, self.ce_weight = ft_weight, ce_weight
        self.init_epochs, self.init_lr = init_epochs, init_lr
        self.teacher_layers = (layer,)
        self.paraphraser: Paraphraser | None = None
        self.translator: Translator | None = None

    def setup(self, data) -> None:
        (s,) = layer_shapes(self.student, [self.layer], data)
        (t,) = layer_shapes(self.teacher, [self.layer], data)
        if s[1:] != t[1:]:
            raise ValueError(
                f"FT needs maps of one spatial size: student {self.layer} {s}, "
                f"teacher {self.layer} {t}"
            )
        k = max(1, int(round(t[0] * self.rate)))
        self.paraphraser = Paraphraser(t[0], k)
        self.translator = Translator(s[0], k)
        # Trained in ``prepare`` only, then a fixed part of the teacher's side.
        self.paraphraser.requires_grad_(False)

    def prepare(self, loader, cfg=None) -> None:
        if self.init_epochs == 0:
            return
        para, layer = self.paraphraser, self.layer

        def reconstruction(x: Tensor) -> Tensor:
            with torch.no_grad():
                f_t = forward_until(self.teacher, [layer], x)[layer]
            return F.l1_loss(para(f_t), f_t)

        para.requires_grad_(True)
        try:
            pretrain(
                "ft paraphraser",
                loader,
                para.parameters(),
                reconstruction,
                self.init_epochs,
                self.init_lr,
                cfg=cfg,
            )
        finally:
            para.requires_grad_(False)

    def factors(self, feat_s: Tensor, feat_t: Tensor) -> tuple[Tensor, Tensor]:
        """(student factor, teacher factor) for the two maps of ``layer``."""
        if self.translator is None:
            raise RuntimeError("call setup(data) first: it builds the paraphraser")
        with torch.no_grad():
            factor_t = self.paraphraser.encode(feat_t)
        return self.translator(feat_s), factor_t

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        with capture(self.student, [self.layer]) as feats:
            logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        factor_s, factor_t = self.factors(feats[self.layer], t[self.layer])
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "ft": self.ft_weight * ft_loss(factor_s, factor_t),
        }


class VIDRegressor(nn.Module):
    """VID's mean predictor (three 1x1 convs) and per-channel variance.

    ``var = softplus(log_scale) + eps``, initialised to ``init_var``; the
    middle width is the teacher's channel count (RepDistiller's ``VIDLoss``).
    """

    def __init__(
        self, c_s: int, c_t: int, init_var: float = 5.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(c_s, c_t, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False),
        )
        # softplus^-1(init_var - eps), so that var starts at init_var.
        start = torch.log(torch.expm1(torch.tensor(init_var - eps)))
        self.log_scale = nn.Parameter(start * torch.ones(c_t))
        self.eps = eps

    def var(self) -> Tensor:
        return F.softplus(self.log_scale) + self.eps

    def forward(self, feat_s: Tensor) -> Tensor:
        return self.mean(feat_s)


def _pool_to_smaller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the spatially larger of two maps to the other's size."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    if a.shape[2] > b.shape[2]:
        return F.adaptive_avg_pool2d(a, b.shape[2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[2:])


@register("vid", section="2.2.1", status="added")
class VID(Distiller):
    """Variational information distillation (Ahn et al. 2019): maximise a likelihood of the teacher's features.

    For each stage output (post-ReLU, ``layer1..3`` as in RepDistiller), a
    regressor predicts the mean of a Gaussian over the teacher's map from the
    student's, with a learned per-channel variance;
    ``L = ce_weight CE + vid_weight sum_l NLL_l`` (:func:`kdutils.losses.vid_loss`).
    The larger map of a pair is average-pooled to the smaller. Defaults are
    RepDistiller's: ``-r 1 -a 0 -b 1``, initial variance 5.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        vid_weight: float = 1.0,
        ce_weight: float = 1.0,
        init_var: float = 5.0,
    ) -> None:
        check_weights(vid_weight=vid_weight, ce_weight=ce_weight)
        if init_var <= 0:
            raise ValueError(f"init_var must be > 0, got {init_var}")
        super().__init__(student, teacher)
        self.vid_weight, self.ce_weight, self.init_var = vid_weight, ce_weight, init_var
        self.student_layers = list(student.stage_layers())
        self.teacher_layers = tuple(teacher.stage_layers())
        self.regressors = nn.ModuleList()

    def setup(self, data) -> None:
        s = layer_shapes(self.student, self.student_layers, data)
        t = layer_shapes(self.teacher, self.teacher_layers, data)
        self.regressors = nn.ModuleList(
            VIDRegressor(a[0], b[0], self.init_var) for a, b in zip(s, t, strict=True)
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if len(self.regressors) != len(self.student_layers):
            raise RuntimeError("call setup(data) first: it builds the regressors")
        with capture(self.student, self.student_layers) as feats:
            logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        nll = logits_s.new_zeros(())
        for reg, ns, nt in zip(
            self.regressors, self.student_layers, self.teacher_layers, strict=True
        ):
            f_s, f_t = _pool_to_smaller(feats[ns], t[nt])
            nll = nll + vid_loss(reg(f_s), f_t, reg.var())
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "vid": self.vid_weight * nll,
        }
