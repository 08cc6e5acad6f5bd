"""Adversarial (GAN-based) distillation, survey section 2.3.5, Eqs. (9)-(10).

A discriminator learns to tell the teacher's outputs from the student's; the
student, as the generator, learns to fool it, on top of its label loss:

- ``advlogit``: a conditional discriminator on the logits (Xu et al. 2018).
- ``advfeat``: a discriminator on the last stage's feature maps, with an L1
  term on the maps (after Chen et al. 2020b).

Alternating updates inside one trainer step. The trainer owns one optimizer
over every parameter that requires grad. The discriminator's parameters
therefore never require grad: they stay out of the trainer's optimizer, and
the student's (generator's) terms, computed through the discriminator,
send no gradient into it. The discriminator takes its own step inside
``forward`` during training, *before* the student's terms are computed (the
usual GAN order: D step, then G step against the updated D): its loss is
computed on detached teacher and student outputs through a functional call
on grad-requiring copies of its parameters, so it never reaches the
student, and an Adam step written out here (state in buffers) updates the
parameters in place. Parameters, Adam moments and step count are all in the
Distiller's ``state_dict``, so checkpoints keep them and a resumed run
continues exactly.

Monitors. Besides the student's loss terms, ``forward`` puts two detached
scalars in ``step_metrics``: ``disc_loss`` (the discriminator's loss on the
batch, before its step) and ``disc_acc`` (its accuracy on the batch). They
are not losses; the trainer records their epoch means in the history
(``metric_disc_loss``, ``metric_disc_acc``) so a chapter can plot the game.
``last_disc_acc`` and ``disc_acc_epoch`` (the running mean over the current
epoch) are attributes too.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..checks import check_int
from ..data import normalize
from ..losses import (
    discriminator_accuracy,
    discriminator_bce_loss,
    generator_bce_loss,
    l1_match_loss,
)
from ..models import capture
from .base import Distiller, check_weights, feature_shapes, register

__all__ = ["AdvLogit", "AdvFeat", "Adversary", "LogitDiscriminator", "MapDiscriminator"]


class LogitDiscriminator(nn.Module):
    """MLP on logits ``(B, K) -> (B, 1 + K)``: a teacher-or-student score and
    class logits (the auxiliary classifier that makes it conditional)."""

    def __init__(self, num_classes: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_classes, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, hidden),
            nn.LeakyReLU(0.2),
            nn.Linear(hidden, 1 + num_classes),
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)


class MapDiscriminator(nn.Module):
    """Small convolutional discriminator on feature maps ``(B, C, H, W) -> (B, 1)``:
    3x3 conv (stride 2), LeakyReLU, 3x3 conv, LeakyReLU, global average, linear."""

    def __init__(self, channels: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, 3, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, 1),
        )

    def forward(self, f: Tensor) -> Tensor:
        return self.net(f)


def _check_adam(lr: float, betas, eps: float) -> tuple[float, float]:
    if lr <= 0:
        raise ValueError(f"disc_lr must be > 0, got {lr}")
    b1, b2 = (float(b) for b in betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(
            f"disc_beta1 and disc_beta2 must be in [0, 1), got {tuple(betas)}"
        )
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return b1, b2


class Adversary(nn.Module):
    """A discriminator ``net`` that trains itself with its own Adam.

    ``net``'s parameters never require grad (the trainer's optimizer skips
    them and the student's terms cannot reach them). :meth:`step` computes
    ``loss_fn(net, real, fake, y) -> (loss, accuracy)`` on detached inputs
    through grad-requiring copies of the parameters and applies one Adam step
    (PyTorch's algorithm, no weight decay) whose moments and step count are
    buffers: everything is in ``state_dict``.
    """

    def __init__(
        self,
        net: nn.Module,
        loss_fn: Callable,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.lr, (self.b1, self.b2), self.eps = lr, _check_adam(lr, betas, eps), eps
        self.net, self.loss_fn = net, loss_fn
        for p in net.parameters():
            p.requires_grad_(False)
        self.names = [n for n, _ in net.named_parameters()]
        for i, (_, p) in enumerate(net.named_parameters()):
            self.register_buffer(f"exp_avg_{i}", torch.zeros_like(p))
            self.register_buffer(f"exp_avg_sq_{i}", torch.zeros_like(p))
        self.register_buffer("adam_step", torch.tensor(0, dtype=torch.long))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, real: Tensor, fake: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The discriminator's loss and accuracy with its current parameters
        (no gradient to anything)."""
        with torch.no_grad():
            return self.loss_fn(self.net, real.detach(), fake.detach(), y)

    def step(self, real: Tensor, fake: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """One discriminator update on detached ``real`` (teacher) and ``fake``
        (student) inputs; returns its loss and accuracy before the update."""
        params = dict(self.net.named_parameters())
        leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
        with torch.enable_grad():

            def call(inp: Tensor) -> Tensor:
                return functional_call(self.net, leaves, (inp,))

            loss, acc = self.loss_fn(call, real.detach(), fake.detach(), y)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        self._adam([params[n] for n in self.names], grads)
        return loss.detach(), acc.detach()

    @torch.no_grad()
    def _adam(self, params: list[Tensor], grads: tuple[Tensor, ...]) -> None:
        self.adam_step += 1
        t = int(self.adam_step)
        bias1, bias2 = 1 - self.b1**t, 1 - self.b2**t
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            g = g.to(p.dtype)
            m, v = getattr(self, f"exp_avg_{i}"), getattr(self, f"exp_avg_sq_{i}")
            m.lerp_(g, 1 - self.b1)
            v.mul_(self.b2).addcmul_(g, g, value=1 - self.b2)
            denom = (v.sqrt() / math.sqrt(bias2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bias1)


class _AdversarialDistiller(Distiller):
    """Shared bookkeeping: the D step in training, the monitors."""

    adversary: Adversary

    def _reset_monitor(self) -> None:
        self._acc_sum: Tensor | float = 0.0
        self._acc_n = 0
        self._last_acc: Tensor | None = None

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self._reset_monitor()

    @property
    def disc_acc_epoch(self) -> float | None:
        """Mean discriminator accuracy over the current epoch's batches so far."""
        return float(self._acc_sum) / self._acc_n if self._acc_n else None

    @property
    def last_disc_acc(self) -> float | None:
        """The discriminator's accuracy on the last batch."""
        return None if self._last_acc is None else float(self._last_acc)

    def _disc(self, real: Tensor, fake: Tensor, y: Tensor) -> None:
        if self.training and torch.is_grad_enabled():
            loss, acc = self.adversary.step(real, fake, y)
        else:
            loss, acc = self.adversary.loss(real, fake, y)
        # Kept as tensors: no host synchronisation per step.
        self._last_acc = acc.detach()
        self._acc_sum = self._acc_sum + self._last_acc
        self._acc_n += 1
        self.step_metrics = {"disc_loss": loss.detach(), "disc_acc": acc.detach()}


def _logit_disc_loss(call, real: Tensor, fake: Tensor, y: Tensor):
    out_r, out_f = call(real), call(fake)
    loss = (
        discriminator_bce_loss(out_r[:, 0], out_f[:, 0])
        + F.cross_entropy(out_r[:, 1:], y)
        + F.cross_entropy(out_f[:, 1:], y)
    )
    return loss, discriminator_accuracy(out_r[:, 0], out_f[:, 0])


@register("advlogit", section="2.3.5")
class AdvLogit(_AdversarialDistiller):
    """Conditional adversarial KD on logits: the student fools a discriminator (Xu et al. 2018).

    A discriminator (MLP on the logits, :class:`LogitDiscriminator`) scores
    "teacher or student" and, as the survey describes the conditional
    version, also predicts the class (an auxiliary classifier, AC-GAN
    style). Its loss, :func:`discriminator_bce_loss` on the scores (teacher
    real, student fake) plus the cross-entropy of its class predictions for
    both, is minimised by its own Adam inside ``forward`` (see the module
    docstring). The student's loss: ``ce_weight * CE(z_s, y) + adv_weight *
    (generator_bce_loss(D(z_s)) + CE(D_cls(z_s), y)) + l1_weight * mean|z_s
    - z_t|`` (:func:`l1_match_loss`, the logit-matching term that keeps the
    game anchored to the teacher), through the updated discriminator.

    Defaults: unit weights; the discriminator (two hidden layers of 256,
    LeakyReLU 0.2) and its Adam (lr 2e-4, betas (0.5, 0.999), DCGAN's) are
    choices of this implementation, not verified against the paper, whose
    adversarial loss is the binary cross-entropy of Eq. (10). Terms: ``ce``,
    ``adv``, ``l1``; ``step_metrics``: ``disc_loss``, ``disc_acc``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        adv_weight: float = 1.0,
        l1_weight: float = 1.0,
        disc_hidden: int = 256,
        disc_lr: float = 2e-4,
        disc_beta1: float = 0.5,
        disc_beta2: float = 0.999,
    ) -> None:
        check_weights(ce_weight=ce_weight, adv_weight=adv_weight, l1_weight=l1_weight)
        check_int("disc_hidden", disc_hidden, 1)
        super().__init__(student, teacher)
        fc = getattr(student, "fc", None)
        if not isinstance(fc, nn.Linear):
            raise ValueError("advlogit needs a student whose classifier is a linear fc")
        self.num_classes = fc.out_features
        self.ce_weight, self.adv_weight, self.l1_weight = (
            ce_weight,
            adv_weight,
            l1_weight,
        )
        self.disc_hidden, self.disc_lr = disc_hidden, disc_lr
        self.disc_beta1, self.disc_beta2 = disc_beta1, disc_beta2
        self.adversary = Adversary(
            LogitDiscriminator(self.num_classes, disc_hidden),
            _logit_disc_loss,
            lr=disc_lr,
            betas=(disc_beta1, disc_beta2),
        )
        self._reset_monitor()

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        logits_t = t["logits"]
        if logits_t.shape != logits_s.shape:
            raise ValueError(
                f"advlogit: teacher logits {tuple(logits_t.shape)} and student "
                f"logits {tuple(logits_s.shape)} differ"
            )
        self._disc(logits_t, logits_s, y)
        out = self.adversary(logits_s)  # D's parameters need no grad: G's step only
        adv = generator_bce_loss(out[:, 0]) + F.cross_entropy(out[:, 1:], y)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "adv": self.adv_weight * adv,
            "l1": self.l1_weight * l1_match_loss(logits_s, logits_t),
        }


def _map_disc_loss(call, real: Tensor, fake: Tensor, y: Tensor):
    out_r, out_f = call(real), call(fake)
    return discriminator_bce_loss(out_r, out_f), discriminator_accuracy(out_r, out_f)


@register(
    "advfeat",
    section="2.3.5",
    status="stand-in",
    note="Chen et al. 2020b (image-translation GANs): a discriminator on a "
    "classifier's last-stage maps plus L1, no perceptual term",
)
class AdvFeat(_AdversarialDistiller):
    """Adversarial KD on feature maps: a discriminator on the last stage (after Chen et al. 2020b).

    Chen et al. (2020b) distil an image-to-image GAN: the student generator
    learns the teacher generator's outputs through an L1 term and a
    discriminator that takes the teacher's outputs as real and the
    student's as fake. The survey reads this as a discriminator on teacher
    and student feature maps; here, for classifiers, the "outputs" are the
    last stage's feature maps (``layer`` default: the last of
    ``stage_layers()``, after its ReLU). A 1x1 convolution (a connector,
    trained with the student) maps the student's channels to the teacher's
    when they differ; the spatial sizes must match.

    The discriminator (:class:`MapDiscriminator`) minimises
    :func:`discriminator_bce_loss` (teacher maps real, student maps fake,
    detached) with its own Adam inside ``forward``. The student's loss:
    ``ce_weight * CE(z_s, y) + adv_weight * generator_bce_loss(D(f_s)) +
    l1_weight * mean|f_s - f_t|``. The paper's perceptual term, computed
    through its teacher discriminator's features on images, has no
    counterpart here. Defaults (unit weights; discriminator width 64; Adam lr
    2e-4, betas (0.5, 0.999)) are this implementation's, not the paper's.
    Terms: ``ce``, ``adv``, ``l1``; ``step_metrics``: ``disc_loss``,
    ``disc_acc``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layer: str | None = None,
        ce_weight: float = 1.0,
        adv_weight: float = 1.0,
        l1_weight: float = 1.0,
        disc_hidden: int = 64,
        disc_lr: float = 2e-4,
        disc_beta1: float = 0.5,
        disc_beta2: float = 0.999,
    ) -> None:
        check_weights(ce_weight=ce_weight, adv_weight=adv_weight, l1_weight=l1_weight)
        check_int("disc_hidden", disc_hidden, 1)
        _check_adam(disc_lr, (disc_beta1, disc_beta2), 1e-8)
        super().__init__(student, teacher)
        if layer is None:
            if not hasattr(student, "stage_layers"):
                raise ValueError(
                    "advfeat: give layer=... (the student has no stage_layers())"
                )
            layer = student.stage_layers()[-1]
        self.layer = layer
        self.teacher_layers = (layer,)
        self.ce_weight, self.adv_weight, self.l1_weight = (
            ce_weight,
            adv_weight,
            l1_weight,
        )
        self.disc_hidden, self.disc_lr = disc_hidden, disc_lr
        self.disc_beta1, self.disc_beta2 = disc_beta1, disc_beta2
        self.connector: nn.Module = nn.Identity()
        self.adversary: Adversary | None = None
        self._reset_monitor()

    def setup(self, data) -> None:
        """Size the connector and the discriminator from one training image."""
        device = next(self.student.parameters()).device
        sample = normalize(data.images[:1].to(device), data.info)
        s = feature_shapes(self.student, [self.layer], sample)[self.layer]
        t = feature_shapes(self.teacher, [self.layer], sample)[self.layer]
        if len(s) != 3 or len(t) != 3 or s[1:] != t[1:]:
            raise ValueError(
                f"advfeat: layer {self.layer!r} gives student maps {s} and teacher "
                f"maps {t}; they need the same spatial size (C, H, W)"
            )
        if s[0] != t[0]:
            self.connector = nn.Conv2d(s[0], t[0], 1, bias=False).to(device)
        self.adversary = Adversary(
            MapDiscriminator(t[0], self.disc_hidden),
            _map_disc_loss,
            lr=self.disc_lr,
            betas=(self.disc_beta1, self.disc_beta2),
        ).to(device)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if self.adversary is None:
            raise RuntimeError("advfeat: call setup(train_data) before training")
        with capture(self.student, [self.layer]) as feats:
            logits_s = self.student(x)
        f_s = self.connector(feats[self.layer])
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        f_t = t[self.layer]
        if f_s.shape != f_t.shape:
            raise ValueError(
                f"advfeat: layer {self.layer!r}: student maps {tuple(f_s.shape)} "
                f"and teacher maps {tuple(f_t.shape)} differ"
            )
        self._disc(f_t, f_s, y)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "adv": self.adv_weight * generator_bce_loss(self.adversary(f_s)),
            "l1": self.l1_weight * l1_match_loss(f_s, f_t),
        }
