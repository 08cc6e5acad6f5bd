"""Stage-by-stage adversarial distillation, survey section 2.3.5.

The third part of the GAN-based family (the first,
:mod:`~kdutils.distillers.adversarial`, holds the one-discriminator methods
with a frozen teacher and the self-training
:class:`~kdutils.distillers.adversarial.Adversary`; the second,
:mod:`~kdutils.distillers.adversarial_online`, the online peers):

- ``msmgan``: a stand-in for Huang et al. 2022 (multi-stage multi-GAN mutual
  learning distillation): one discriminator per stage of the network, and
  the student trained greedily, stage after stage, each stage against the
  teacher's maps of that stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_T
from ..losses import (
    generator_bce_loss,
    kd_loss,
)
from ..models import capture
from .adversarial import Adversary, MapDiscriminator, _check_adam, _map_disc_loss
from .base import Distiller, check_weights, register
from .features import paired_shapes, teacher_features

__all__ = ["MSMGAN"]


@register(
    "msmgan",
    section="2.3.5",
    status="stand-in",
    note="Huang et al. 2022 (MS-MGANs, in Chinese): built from "
    "its abstract and the survey's sentence; one discriminator per stage, "
    "stages trained greedily in turn, KD on the logits throughout",
)
class MSMGAN(Distiller):
    """Greedy stage-by-stage adversarial KD (after Huang et al. 2022).

    The student's stages (``stage_layers()``, three for the CIFAR ResNets)
    each get a discriminator (:class:`~kdutils.distillers.adversarial.MapDiscriminator`)
    that takes the teacher's maps of the same stage as real and the
    student's (through a 1x1 connector when the channels differ) as fake.
    The run's epochs are split into one phase per stage, earliest stage
    first (epoch ``e`` of ``E`` is in phase ``floor(e S / E)``). In phase ``k`` the training is greedy: the stages before ``k`` are
    held (their output is detached, so they receive no gradient and the
    optimiser skips them), and the student minimises ``ce_weight * CE +
    kd_weight * kd_loss(z_s, z_t, T) + adv_weight * (-log D_k(f_k))`` through
    stage ``k``'s discriminator, which alone takes its Adam step (on
    detached maps, binary cross-entropy, as ``advfeat``) in that phase.
    Outside training there is no detaching and no step.

    A stand-in. Only the paper's abstract could be read: the training split
    into stages, the layer-wise greedy strategy "based on convolution blocks"
    that lowers the parameters optimised per iteration, the teacher as the
    discriminator of the student's features; and the survey's sentence (the
    teacher's supervision used as much as possible, with the discriminator's
    extra supervision). Its losses, its stage teachers and its mutual
    learning are not reproduced: the teacher is one frozen network, and the
    defaults are those of the losses combined (Hinton's term with
    RepDistiller's T = 4 and 0.1 / 0.9; ``advfeat``'s discriminator and
    Adam, unit adversarial weight). The held stages' batch-norm statistics
    still follow the data. Terms: ``ce``, ``kd``, ``adv``; ``step_metrics``:
    ``disc_loss``, ``disc_acc`` of the current stage's discriminator;
    ``epoch_metrics``: ``stage``, the phase's index.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        adv_weight: float = 1.0,
        disc_hidden: int = 64,
        disc_lr: float = 2e-4,
        disc_beta1: float = 0.5,
        disc_beta2: float = 0.999,
    ) -> None:
        check_T(T)
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight, adv_weight=adv_weight)
        check_int("disc_hidden", disc_hidden, 1)
        _check_adam(disc_lr, (disc_beta1, disc_beta2), 1e-8)
        super().__init__(student, teacher)
        self.T, self.ce_weight, self.kd_weight = T, ce_weight, kd_weight
        self.adv_weight, self.disc_hidden, self.disc_lr = (
            adv_weight,
            disc_hidden,
            disc_lr,
        )
        self.disc_beta1, self.disc_beta2 = disc_beta1, disc_beta2
        self.student_layers = tuple(student.stage_layers())
        self.teacher_layers = tuple(teacher.stage_layers())
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError(
                f"msmgan: the student has {len(self.student_layers)} stages and the "
                f"teacher {len(self.teacher_layers)}; they must pair up"
            )
        self.connectors = nn.ModuleList()
        self.adversaries = nn.ModuleList()
        self.stage = 0

    def setup(self, data) -> None:
        """One connector and one discriminator per stage, sized from one image."""
        shapes_s, shapes_t = paired_shapes(
            self, data, self.student_layers, self.teacher_layers
        )
        device = next(self.student.parameters()).device
        connectors, adversaries = [], []
        for name, s, t in zip(self.student_layers, shapes_s, shapes_t, strict=True):
            if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
                raise ValueError(
                    f"msmgan: stage {name!r} gives student maps {s} and teacher maps "
                    f"{t}; they need the same spatial size"
                )
            connectors.append(
                nn.Conv2d(s[0], t[0], 1, bias=False) if s[0] != t[0] else nn.Identity()
            )
            adversaries.append(
                Adversary(
                    MapDiscriminator(t[0], self.disc_hidden),
                    _map_disc_loss,
                    lr=self.disc_lr,
                    betas=(self.disc_beta1, self.disc_beta2),
                )
            )
        self.connectors = nn.ModuleList(connectors).to(device)
        self.adversaries = nn.ModuleList(adversaries).to(device)

    def on_epoch(self, epoch: int, epochs: int) -> None:
        # Epoch e of E belongs to phase floor(e S / E): near-equal phases,
        # earliest stage first; with fewer epochs than stages, some stages
        # get no phase of their own.
        self.stage = epoch * len(self.student_layers) // epochs

    def epoch_metrics(self, test) -> dict[str, float]:
        """The phase of the epoch just trained (0-based), as ``metric_stage``."""
        return {"stage": float(self.stage)}

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if len(self.adversaries) != len(self.student_layers):
            raise RuntimeError("msmgan: call setup(train_data) before training")
        k, training = self.stage, self.training and torch.is_grad_enabled()
        layer = self.student_layers[k]
        handle = None
        if training and k > 0:
            # Greedy: the stages before k are held; their output is a constant.
            held = self.student.get_submodule(self.student_layers[k - 1])
            handle = held.register_forward_hook(lambda m, i, out: out.detach())
        try:
            with capture(self.student, [layer]) as feats:
                logits_s = self.student(x)
        finally:
            if handle is not None:
                handle.remove()
        f_s = self.connectors[k](feats[layer])
        t = teacher_features(self, x, teacher_out)
        f_t = t[self.teacher_layers[k]]
        adv = self.adversaries[k]
        loss, acc = (adv.step if training else adv.loss)(f_t, f_s, y)
        self.step_metrics = {"disc_loss": loss.detach(), "disc_acc": acc.detach()}
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd_loss(logits_s, t["logits"], self.T),
            "adv": self.adv_weight * generator_bce_loss(adv(f_s)),
        }
