"""Losses of adversarial (GAN-based) distillation, survey section 2.3.5, Eqs. (9)-(10).

A discriminator D tells the teacher's outputs ("real") from the student's
("fake"); the student, as the generator, learns to fool it. ``d_real`` and
``d_fake`` are D's raw scores (logits of "this came from the teacher"), one
per sample. Survey Eq. (10) prints the discriminator's objective as
``log D(l_T) + log D(1 - l_S)``, which chapter 10 reads as a typo for
``log D(l_T) + log(1 - D(l_S))``; both functions below are that binary
cross-entropy, computed stably from the scores with ``softplus``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "discriminator_bce_loss",
    "generator_bce_loss",
    "discriminator_accuracy",
    "l1_match_loss",
    "ls_discriminator_loss",
    "ls_generator_loss",
]


def _scores(d: Tensor, what: str) -> Tensor:
    if d.dim() == 2 and d.shape[1] == 1:
        d = d[:, 0]
    if d.dim() != 1:
        raise ValueError(
            f"{what}: expected one score per sample, (B,) or (B, 1), got {tuple(d.shape)}"
        )
    return d


def discriminator_bce_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """The discriminator's loss: ``-mean log D(real) - mean log(1 - D(fake))``.

    With ``D = sigmoid(score)``: ``mean_b softplus(-d_real) + mean_b
    softplus(d_fake)``, the sum of the two binary cross-entropies (teacher
    labelled 1, student 0), i.e. minus survey Eq. (10) averaged over the
    batch. Shapes ``(B,), (B',) -> ()`` (``(B, 1)`` accepted).

    Reference: ``goodfellow2014generative``, ``xu2018training``; survey Eq. (10).
    """
    d_real = _scores(d_real, "discriminator_bce_loss (teacher scores)")
    d_fake = _scores(d_fake, "discriminator_bce_loss (student scores)")
    return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()


def generator_bce_loss(d_fake: Tensor) -> Tensor:
    """The generator's (student's) loss: ``-mean log D(fake)``.

    ``mean_b softplus(-d_fake)``, the "non-saturating" form that GAN code uses
    in place of ``log(1 - D(fake))`` (the student's outputs labelled as the
    teacher's). Shapes ``(B,) -> ()`` (``(B, 1)`` accepted).

    Reference: ``goodfellow2014generative``; survey Eq. (9).
    """
    return F.softplus(-_scores(d_fake, "generator_bce_loss")).mean()


@torch.no_grad()
def discriminator_accuracy(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Fraction of samples the discriminator gets right: ``d_real > 0``, ``d_fake < 0``.

    ``(#{d_real > 0} + #{d_fake < 0}) / (B + B')``; 0.5 is chance, 1.0 means
    the student never fools it. Shapes ``(B,), (B',) -> ()``.
    """
    d_real = _scores(d_real, "discriminator_accuracy (teacher scores)")
    d_fake = _scores(d_fake, "discriminator_accuracy (student scores)")
    right = (d_real > 0).sum() + (d_fake < 0).sum()
    return right.float() / (d_real.numel() + d_fake.numel())


def l1_match_loss(out_s: Tensor, out_t: Tensor) -> Tensor:
    """Mean absolute difference over all elements: ``mean |s - t|``.

    The L1 reconstruction term that accompanies the adversarial term (pix2pix
    style) on logits ``(B, K)`` or feature maps ``(B, C, H, W)``; shapes must
    match exactly. Shapes ``(B, ...), (B, ...) -> ()``.

    Reference: ``isola2017image`` (L1 + GAN), ``chen2020distilling``;
    survey section 2.3.5.
    """
    if out_s.shape != out_t.shape:
        raise ValueError(
            "l1_match_loss: student and teacher outputs must have one shape, got "
            f"{tuple(out_s.shape)} and {tuple(out_t.shape)}"
        )
    return (out_s - out_t).abs().mean()


def ls_discriminator_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """Least-squares discriminator loss: ``mean (1 - D(real))^2 + mean D(fake)^2``.

    ``D`` is the discriminator's raw output (no sigmoid), pushed to 1 on
    "real" and to 0 on "fake" (Mao et al.'s LSGAN with targets 1 and 0), the
    form of online adversarial feature-map distillation, where "real" is a
    peer's feature map and "fake" the network's own. Shapes ``(B,), (B',) ->
    ()`` (``(B, 1)`` accepted).

    Reference: ``chung2020feature``; survey section 2.3.5.
    """
    d_real = _scores(d_real, "ls_discriminator_loss (real scores)")
    d_fake = _scores(d_fake, "ls_discriminator_loss (fake scores)")
    return (1.0 - d_real).pow(2).mean() + d_fake.pow(2).mean()


def ls_generator_loss(d_fake: Tensor) -> Tensor:
    """Least-squares generator loss: ``mean (1 - D(fake))^2``.

    The network whose map is "fake" learns to have it scored as real.
    Shapes ``(B,) -> ()`` (``(B, 1)`` accepted).

    Reference: ``chung2020feature``; survey section 2.3.5.
    """
    return (1.0 - _scores(d_fake, "ls_generator_loss")).pow(2).mean()
