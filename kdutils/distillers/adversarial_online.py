"""Adversarial distillation between peers trained online, survey section 2.3.5.

The second half of the GAN-based family (the first,
:mod:`~kdutils.distillers.adversarial`, holds the methods with a frozen
teacher and the :class:`~kdutils.distillers.adversarial.Adversary` that both
halves use). Here there is no pretrained teacher: peers learn together, as
in online distillation (survey section 2.3.1), and discriminators carry the
knowledge of their feature maps:

- ``advonline``: feature-map-level online adversarial distillation (Chung
  et al. 2020). Each network has a discriminator that scores its own
  last-stage maps as fake and a peer's as real; each network learns to fool
  its discriminator, and the networks' logits learn from each other (KL).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_T
from ..data import normalize
from ..losses import (
    discriminator_accuracy,
    kd_loss,
    ls_discriminator_loss,
    ls_generator_loss,
)
from ..models import capture
from .adversarial import Adversary, MapDiscriminator, _check_adam
from .base import Distiller, check_weights, feature_shapes, register
from .online import fresh_copy, member_metrics

__all__ = ["AdvOnline"]


def _ls_map_disc_loss(call, real: Tensor, fake: Tensor, y: Tensor):
    # Least squares: real pushed to 1, fake to 0; "right" means on the right
    # side of 1/2.
    out_r, out_f = call(real)[:, 0], call(fake)[:, 0]
    acc = discriminator_accuracy(out_r - 0.5, out_f - 0.5)
    return ls_discriminator_loss(out_r, out_f), acc


@register(
    "advonline",
    section="2.3.5",
    status="stand-in",
    note=(
        "Chung et al. 2020: the paper's structure (a discriminator "
        "per peer on feature maps, KL between peers, cyclic pairing), but its "
        "discriminator loss, architecture and weights could not be checked"
    ),
)
class AdvOnline(Distiller):
    """Feature-map-level online adversarial KD: peers fool each other's discriminators (Chung et al. 2020).

    ``num_peers`` networks of the student's architecture (network 0 is the
    student, the others fresh copies, :func:`~kdutils.distillers.online.fresh_copy`)
    train together from scratch. Network ``k`` has a discriminator ``D_k``
    (:class:`~kdutils.distillers.adversarial.MapDiscriminator` on the maps of
    ``layer``, default the last stage) that takes network ``k``'s maps as
    fake and the maps of network ``k - 1`` (cyclically: network ``K - 1``
    for network 0) as real. With two networks each learns from the other;
    with more, the cycle is the paper's cyclic learning scheme, each network
    taught by its predecessor only.

    The discriminators minimise the least-squares loss
    :func:`~kdutils.losses.ls_discriminator_loss` on detached maps, each with
    its own Adam step inside ``forward`` (as in ``advlogit``). Network ``k``
    minimises ``ce_weight * CE(z_k, y) + kl_weight * T^2 KL(p_{k-1}(T) ||
    p_k(T)) + adv_weight * (1 - D_k(f_k))^2`` (batch means;
    :func:`~kdutils.losses.ls_generator_loss`, through the updated
    discriminator), the predecessor's logits detached; all networks take one
    step of the run's optimiser on the summed terms.

    What comes from the paper (its abstract and method): one discriminator
    per network, own maps fake and a peer's real, the logit-level KL between
    the networks, the cyclic scheme, least-squares adversarial losses. What
    is this implementation's choice, not checked against the paper: the
    discriminator's layers and width, its Adam (lr 2e-4, betas (0.5, 0.999)),
    T = 3 (ONE's value), unit weights, one joint step for every network where
    the paper alternates the adversarial and the logit updates, and no 1x1
    transfer layer (the peers share one architecture, so their maps have one
    shape). Terms: ``ce``, ``kl``, ``adv`` (the student), ``peers_ce``,
    ``peers_kl``, ``peers_adv`` (the other networks, summed);
    ``step_metrics``: ``disc_loss`` and ``disc_acc``, means over the
    discriminators; ``epoch_metrics``: every network's test accuracy.
    """

    needs_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        num_peers: int = 2,
        layer: str | None = None,
        T: float = 3.0,
        ce_weight: float = 1.0,
        kl_weight: float = 1.0,
        adv_weight: float = 1.0,
        disc_hidden: int = 64,
        disc_lr: float = 2e-4,
        disc_beta1: float = 0.5,
        disc_beta2: float = 0.999,
    ) -> None:
        check_int("num_peers", num_peers, 2)
        check_int("disc_hidden", disc_hidden, 1)
        check_T(T)
        check_weights(ce_weight=ce_weight, kl_weight=kl_weight, adv_weight=adv_weight)
        _check_adam(disc_lr, (disc_beta1, disc_beta2), 1e-8)
        super().__init__(student, None)
        if layer is None:
            if not hasattr(student, "stage_layers"):
                raise ValueError(
                    "advonline: give layer=... (the student has no stage_layers())"
                )
            layer = student.stage_layers()[-1]
        self.num_peers, self.layer, self.T = num_peers, layer, T
        self.ce_weight, self.kl_weight, self.adv_weight = (
            ce_weight,
            kl_weight,
            adv_weight,
        )
        self.disc_hidden, self.disc_lr = disc_hidden, disc_lr
        self.disc_beta1, self.disc_beta2 = disc_beta1, disc_beta2
        self.peers = nn.ModuleList(fresh_copy(student) for _ in range(num_peers - 1))
        self.adversaries = nn.ModuleList()

    def members(self) -> list[nn.Module]:
        """Every network as a plain classifier, the student first."""
        return [self.student, *self.peers]

    def setup(self, data) -> None:
        """Size the discriminators from one training image's maps."""
        device = next(self.student.parameters()).device
        sample = normalize(data.images[:1].to(device), data.info)
        shape = feature_shapes(self.student, [self.layer], sample)[self.layer]
        if len(shape) != 3:
            raise ValueError(
                f"advonline: layer {self.layer!r} gives {shape}, not feature maps (C, H, W)"
            )
        self.adversaries = nn.ModuleList(
            Adversary(
                MapDiscriminator(shape[0], self.disc_hidden),
                _ls_map_disc_loss,
                lr=self.disc_lr,
                betas=(self.disc_beta1, self.disc_beta2),
            )
            for _ in range(self.num_peers)
        ).to(device)

    def epoch_metrics(self, test) -> dict[str, float]:
        """:func:`~kdutils.distillers.online.member_metrics` of the networks."""
        return member_metrics(self.members(), test)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if len(self.adversaries) != self.num_peers:
            raise RuntimeError("advonline: call setup(train_data) before training")
        logits, maps = [], []
        for m in self.members():
            with capture(m, [self.layer]) as feats:
                logits.append(m(x))
            maps.append(feats[self.layer])  # (B, C, H, W)
        stepping = self.training and torch.is_grad_enabled()
        d_loss, d_acc = [], []
        for k, adv in enumerate(self.adversaries):
            real, fake = maps[k - 1], maps[k]  # k - 1 = -1: the last network
            loss, acc = (adv.step if stepping else adv.loss)(real, fake, y)
            d_loss.append(loss)
            d_acc.append(acc)
        self.step_metrics = {
            "disc_loss": torch.stack(d_loss).mean().detach(),
            "disc_acc": torch.stack(d_acc).float().mean().detach(),
        }
        ce = [F.cross_entropy(z, y) for z in logits]
        kl = [kd_loss(z, logits[k - 1].detach(), self.T) for k, z in enumerate(logits)]
        adv = [
            ls_generator_loss(a(f)) for a, f in zip(self.adversaries, maps, strict=True)
        ]
        return logits[0], {
            "ce": self.ce_weight * ce[0],
            "kl": self.kl_weight * kl[0],
            "adv": self.adv_weight * adv[0],
            "peers_ce": self.ce_weight * sum(ce[1:]),
            "peers_kl": self.kl_weight * sum(kl[1:]),
            "peers_adv": self.adv_weight * sum(adv[1:]),
        }
