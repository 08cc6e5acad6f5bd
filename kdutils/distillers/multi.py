"""Multi-teacher distillation, survey section 2.3.3, Eq. (7).

Several frozen teachers, one student: ``L = L_t(l_S, t) + L_KD(l_S, E(l_T1,
l_T2, ...))``. ``teacher`` is an ``nn.ModuleList`` of teachers (what the
trainer builds from several ``Config.teacher_runs``) or one network, treated
as a list of one. The student alone is deployed.

- ``avgkd``: the plain mean of the teachers' soft targets (You et al. 2017).
- ``amtmlkd``: per-sample teacher weights from learned latent teacher
  representations, plus hints from every teacher (Liu et al. 2020d; Table
  1's "ALTKD (3 teachers)").
- ``feed``: a feature-level ensemble: one non-linear transformation of the
  student's last map per teacher, each matched with that teacher's last map
  (Park & Kwak 2019, parallel FEED).

``teacher_outputs(x)`` returns the teachers' logits stacked as ``(B, M, K)``
(and each teacher's hint layer); a single teacher's ``(B, K)`` logits, as the
trainer precomputes them, are accepted too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..data import Loader
from ..inference import inference_batch_size, is_channels_last
from ..losses import (
    feed_loss,
    hint_loss,
    kl_to_targets,
    rkd_angle_loss,
    rkd_distance_loss,
    teacher_attention_weights,
    teacher_ensemble_targets,
)
from ..models import capture
from .base import Distiller, check_weights, register
from .selfkd import stage_channels

__all__ = ["AvgKD", "AMTMLKD", "FEED", "FEEDTransform"]


class _MultiTeacher(Distiller):
    """Shared plumbing: the teachers as a list, their stacked outputs."""

    hint_layer: str | None = None
    precompute_teachers = True  # teacher_outputs are (B, M, K) and (B, ...) maps

    def __init__(self, student: nn.Module, teacher: nn.Module) -> None:
        super().__init__(student, teacher)
        if self.hint_layer is not None:
            self.teacher_layers = tuple(
                f"{i}.{self.hint_layer}" if self.several else self.hint_layer
                for i in range(len(self.teachers))
            )

    @property
    def several(self) -> bool:
        return isinstance(self.teacher, nn.ModuleList)

    @property
    def teachers(self) -> list[nn.Module]:
        return list(self.teacher) if self.several else [self.teacher]

    @torch.no_grad()
    def teacher_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """``{"logits": (B, M, K), <teacher_layers>: feature}``."""
        with capture(self.teacher, self.teacher_layers) as feats:
            logits = torch.stack([t(x) for t in self.teachers], 1)
        return {"logits": logits, **feats}

    def _teacher_out(self, x: Tensor, teacher_out) -> tuple[Tensor, list[Tensor]]:
        """Teachers' logits ``(B, M, K)`` and hint features (one per teacher)."""
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        logits, m = t["logits"], len(self.teachers)
        if logits.dim() == 2:  # one teacher's logits, precomputed by the trainer
            logits = logits.unsqueeze(1)
        if logits.dim() != 3 or logits.shape[1] != m:
            raise ValueError(
                f"teacher_out['logits'] {tuple(t['logits'].shape)} does not hold "
                f"(B, M, K) logits of this method's M = {m} teachers"
            )
        return logits, [t[k] for k in self.teacher_layers]


@register(
    "avgkd",
    section="2.3.3",
    status="stand-in",
    note="You et al. 2017: its averaged soft targets only, without its "
    "relative-dissimilarity term",
)
class AvgKD(_MultiTeacher):
    """Averaged soft targets of several teachers (You et al. 2017).

    ``L = ce_weight * CE(z_S, y) + kd_weight * T^2 KL(q || softmax(z_S/T))``
    with ``q = 1/M sum_m softmax(z_m / T)`` (:func:`teacher_ensemble_targets`,
    :func:`kl_to_targets`); with one teacher this is ``kd``. Only the averaged
    soft targets of the paper: its second term, the relative dissimilarity of
    triplets in an intermediate layer, is not implemented. Defaults: ``kd``'s
    (T = 4, 0.1/0.9, RepDistiller's defaults), so ``avgkd`` and ``kd`` differ only in the
    teachers. Terms: ``ce``, ``kd``.
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
        logits_t, _ = self._teacher_out(x, teacher_out)
        q = teacher_ensemble_targets(logits_t, None, self.T)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kl_to_targets(logits_s, q, self.T),
        }


@register("amtmlkd", section="2.3.3")
class AMTMLKD(_MultiTeacher):
    """Adaptive multi-teacher multi-level KD (Liu et al. 2020d; Table 1's ALTKD).

    High level: teacher m has a learned latent representation ``theta_m``
    (``(M, C)``, C the student's pooled width) and the per-sample teacher
    weights are ``mu = softmax_m(w . (theta_m * e))`` with ``e`` the
    student's pooled feature (:func:`teacher_attention_weights`; ``theta``,
    ``w`` drawn from a standard normal as in the authors' ``Adapter``). The
    student learns from ``q = sum_m mu_m softmax(z_m / T)``:
    ``ce_weight * CE + kd_weight * T^2 KL(q || p_S) + rkd_weight * (RKD
    distance + angle)(log p_S, q)`` (the code's RKD terms, ``q`` constant
    there). ``q`` is not detached in the KL: through ``mu`` it trains
    ``theta``, ``w`` and the student's features. Intermediate level: every
    teacher's ``layer2`` map is a hint for the student's ``layer2`` through
    its own 1x1 connector (no bias, uniform(-0.005, 0.005)), applied to the
    channel-L2-normalised student map and compared with the normalised
    teacher map by mean squared error (the code's ``FitNet``), summed over
    teachers (``hint``); ``reg_weight * (|w|^2 + |theta|^2)`` regularises the
    adapter (``reg``).

    Two phases, as the authors' script: the adapter phase (the first
    ``adapter_fraction`` of the epochs; their 80 adapter epochs before 200
    student epochs) trains student, adapter and connectors with every term;
    afterwards the adapter is frozen (``theta``, ``w`` detached) and the
    hint and reg terms are 0. Until the trainer's first ``on_epoch`` the
    adapter phase holds.

    Defaults: the authors' script (T = 5, kd_ratio 0.7 -> ``kd_weight`` 0.7,
    ``ce_weight`` 0.3, unit RKD and hint weights, regulariser 0.1).
    Differences from their code, all toward the paper's equations: the KL is
    averaged over samples (their ``nn.KLDivLoss()`` averages over samples
    *and* classes, times 2), the CE is on the logits (theirs on the
    T-softened log-probabilities), and one optimizer with the config's
    schedule trains everything. :meth:`teacher_weights` gives ``mu``.
    Terms: ``ce``, ``kd``, ``rkd``, ``hint``, ``reg``.
    """

    hint_layer = "layer2"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 5.0,
        ce_weight: float = 0.3,
        kd_weight: float = 0.7,
        rkd_weight: float = 1.0,
        hint_weight: float = 1.0,
        reg_weight: float = 0.1,
        adapter_fraction: float = 80 / 280,
    ) -> None:
        check_T(T)
        check_weights(
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            rkd_weight=rkd_weight,
            hint_weight=hint_weight,
            reg_weight=reg_weight,
        )
        if not 0 <= adapter_fraction <= 1:
            raise ValueError(
                f"adapter_fraction (of the epochs) must be in [0, 1], got "
                f"{adapter_fraction}"
            )
        s_channels = stage_channels(student, "AMTML-KD (student)")
        super().__init__(student, teacher)
        t_channels = [stage_channels(t, "AMTML-KD (teacher)") for t in self.teachers]
        self.T, self.ce_weight, self.kd_weight = T, ce_weight, kd_weight
        self.rkd_weight, self.hint_weight = rkd_weight, hint_weight
        self.reg_weight, self.adapter_fraction = reg_weight, adapter_fraction
        width = student.fc.in_features
        self.theta = nn.Parameter(torch.randn(len(self.teachers), width))
        self.w = nn.Parameter(torch.randn(width))
        self.connectors = nn.ModuleList(
            nn.Conv2d(s_channels[1], c[1], 1, bias=False) for c in t_channels
        )
        for c in self.connectors:
            nn.init.uniform_(c.weight, -0.005, 0.005)
        self.adapter_phase = True

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.adapter_phase = epoch < round(self.adapter_fraction * epochs)

    def epoch_metrics(self, test) -> dict[str, float]:
        """The teachers' mean weight ``weight<m>`` and the weights' mean
        entropy ``weight_entropy`` (nats; log M is uniform) on 2000 test images."""
        sub = test.subset(2000)
        device = self.theta.device
        loader = Loader(
            sub,
            inference_batch_size(device),
            shuffle=False,
            device=device,
            channels_last=is_channels_last(self.student),
        )
        mus = [self.teacher_weights(x).double() for x, _, _ in loader]
        mu = torch.cat(mus)
        out = {f"weight{m}": mu[:, m].mean().item() for m in range(mu.shape[1])}
        out["weight_entropy"] = -(mu * mu.clamp_min(1e-12).log()).sum(1).mean().item()
        return out

    def _weights(self, emb: Tensor) -> Tensor:
        theta, w = self.theta, self.w
        if not self.adapter_phase:
            theta, w = theta.detach(), w.detach()
        return teacher_attention_weights(emb, theta, w)

    @torch.no_grad()
    def teacher_weights(self, x: Tensor) -> Tensor:
        """Per-sample teacher weights ``(B, M)`` (the student run in eval mode)."""
        was_training = self.student.training
        self.student.eval()
        with capture(self.student, ["pool"]) as feats:
            self.student(x)
        self.student.train(was_training)
        return teacher_attention_weights(feats["pool"], self.theta, self.w)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        with capture(self.student, ["layer2", "pool"]) as feats:
            logits_s = self.student(x)
        logits_t, hints = self._teacher_out(x, teacher_out)
        mu = self._weights(feats["pool"])
        q = teacher_ensemble_targets(logits_t, mu, self.T)
        log_p = F.log_softmax(logits_s / self.T, dim=1)
        rkd = rkd_distance_loss(log_p, q.detach()) + rkd_angle_loss(log_p, q.detach())
        zero = logits_s.new_zeros(())
        hint, reg = zero, zero
        if self.adapter_phase:
            f_s = F.normalize(feats["layer2"], dim=1)
            hint = sum(
                hint_loss(conn(f_s), F.normalize(f_t, dim=1))
                for conn, f_t in zip(self.connectors, hints, strict=True)
            )
            reg = self.w.pow(2).sum() + self.theta.pow(2).sum()
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kl_to_targets(logits_s, q, self.T),
            "rkd": self.rkd_weight * rkd,
            "hint": self.hint_weight * hint,
            "reg": self.reg_weight * reg,
        }


class FEEDTransform(nn.Sequential):
    """A FEED transformation layer: three 3x3 convolutions, each followed by a
    leaky ReLU (slope 0.1), ``C_s -> C_s -> C_t -> C_t`` channels, sizes kept.

    Factor transfer's translator (``kim2018paraphrasing``), which FEED uses as
    its non-linear transformation, here mapping to the teacher's channels
    (FEED has no paraphraser on the teacher's side).
    """

    def __init__(self, c_s: int, c_t: int) -> None:
        super().__init__(
            nn.Conv2d(c_s, c_s, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(c_s, c_t, 3, 1, 1),
            nn.LeakyReLU(0.1),
            nn.Conv2d(c_t, c_t, 3, 1, 1),
            nn.LeakyReLU(0.1),
        )


@register(
    "feed",
    section="2.3.3",
    status="stand-in",
    note=(
        "Park & Kwak 2019 (FEED), parallel version: only the paper's abstract "
        "could be read, so the transformation layers and the L1 loss with its "
        "weight are taken from factor transfer, which FEED builds on"
    ),
)
class FEED(_MultiTeacher):
    """Feature-level ensemble for KD, parallel version (Park & Kwak 2019).

    Every teacher m has its own transformation layer ``T_m``
    (:class:`FEEDTransform`) on the student's last feature map ``f_S``
    (``layer3``); ``T_m(f_S)`` is matched with teacher m's ``layer3`` map
    by :func:`kdutils.losses.feed_loss` (the L1 distance of L2-normalised
    maps, summed over the teachers). The loss is ``ce_weight CE(z_S, y) +
    feed_weight feed_loss``. All transformations read the same student map,
    so the map has to serve every teacher at once: the ensemble is formed in
    the student's features, not in the targets. The transformations are
    dropped after training; the student alone is deployed. Defaults: factor
    transfer's (``kim2018paraphrasing``, whose loss and translator FEED
    adopts): beta = ``feed_weight`` 500, p = 1, CE weight 1; no KD term.
    Student and teacher maps must have one spatial size. Sequential FEED
    (teachers one after another) is not implemented. Terms: ``ce``, ``feed``.
    """

    hint_layer = "layer3"

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        feed_weight: float = 500.0,
        ce_weight: float = 1.0,
    ) -> None:
        check_weights(feed_weight=feed_weight, ce_weight=ce_weight)
        c_s = stage_channels(student, "FEED (student)")[-1]
        super().__init__(student, teacher)
        c_t = [stage_channels(t, "FEED (teacher)")[-1] for t in self.teachers]
        self.feed_weight, self.ce_weight = feed_weight, ce_weight
        self.transforms = nn.ModuleList(FEEDTransform(c_s, c) for c in c_t)

    def transformed(self, feat_s: Tensor) -> list[Tensor]:
        """``T_m(f_S)`` for every teacher m, ``(B, C_m, H, W)``."""
        return [t(feat_s) for t in self.transforms]

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        with capture(self.student, [self.hint_layer]) as feats:
            logits_s = self.student(x)
        _, maps_t = self._teacher_out(x, teacher_out)
        maps_s = self.transformed(feats[self.hint_layer])
        for m, (f_s, f_t) in enumerate(zip(maps_s, maps_t, strict=True)):
            if f_s.shape[2:] != f_t.shape[2:]:
                raise ValueError(
                    f"FEED matches maps of one size: student {self.hint_layer} "
                    f"{tuple(f_s.shape[2:])}, teacher {m} {tuple(f_t.shape[2:])}"
                )
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "feed": self.feed_weight * feed_loss(maps_s, maps_t),
        }
