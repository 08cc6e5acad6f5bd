"""Losses of image generation (survey §5.4): a GAN's two losses and the terms
of Chen et al. 2020b's distillation of a generator.

**The GAN.** The non-saturating loss of Goodfellow et al. 2014, written with
binary cross-entropy on the discriminator's logits as DCGAN's reference
PyTorch code does: the discriminator minimises
``BCE(D(real), 1) + BCE(D(fake), 0)`` (each a mean over its batch, the two
summed), the generator ``BCE(D(G(z)), 1) = -mean log σ(D(G(z)))`` (not the
saturating ``mean log(1 - σ(D(G(z))))``).

**Chen et al. 2020b** ("Distilling portable generative adversarial networks
for image translation", AAAI 2020; no public code) train a thin student
generator G_S from a frozen teacher generator G_T given the *same input*.
Their method section could not be read where this was written: the terms
below follow the survey's summary and the paper's abstract, and several
details are this book's reading, unchecked against the paper: the L1 form of
the pixel and perceptual distances and the form of the triplet term; the
triplet's anchor (the abstract says the student discriminator measures
distances between *real* images and the two generators' images, so a real
image may anchor it in the paper); the perceptual term's feature network;
and the weights:

- a pixel term, ``L_L1 = 1/n Σ_i ‖G_T(x_i) − G_S(x_i)‖_1``
  (:func:`gan_pixel_loss`);
- a perceptual ("semantic") term, the same L1 distance between features of
  a fixed, pretrained network applied to both images
  (:func:`gan_perceptual_loss`);
- a student discriminator D_S that takes the teacher's images as the *real*
  samples and the student's as fake, in the ordinary GAN loss
  (:func:`gan_d_loss` with ``G_T(x)`` in the real slot);
- a triplet term for D_S that uses the teacher's discriminator D_T: the
  anchor is D_T's feature of the teacher's image, the positive D_S's feature
  of the same image, the negative D_S's feature of the student's image
  (:func:`gan_triplet_loss`).

Adaptations, all stated again where the runs use them
(:mod:`kdutils.gan_train`): the input is noise (an unconditional DCGAN),
not a source image; the norms are taken as means over the elements (this
book's reading is an L1 norm ``‖·‖_1`` per sample; dividing it by the number
of elements only rescales the weights and keeps them independent of the
image size); the
perceptual features are those of the frozen *teacher discriminator*, not of
an ImageNet network, so that the book's classifier stays independent of
training and can measure the result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "gan_d_loss",
    "gan_g_loss",
    "gan_perceptual_loss",
    "gan_pixel_loss",
    "gan_triplet_loss",
]


def _check_same(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{what}: the student's and teacher's tensors differ in shape, "
            f"{tuple(a.shape)} vs {tuple(b.shape)}"
        )


def gan_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator's loss, ``BCE(D(real), 1) + BCE(D(fake), 0)``.

    ``logits_real`` (B_r,) and ``logits_fake`` (B_f,): the discriminator's
    logits on the samples it must call real and fake; each BCE is a mean
    over its batch (DCGAN's reference code: ``errD_real + errD_fake``).
    In Chen et al.'s student discriminator the real samples are the
    teacher's images.
    """
    if logits_real.dim() != 1 or logits_fake.dim() != 1:
        raise ValueError(
            "gan_d_loss takes one logit per sample, shapes (B,); got "
            f"{tuple(logits_real.shape)} and {tuple(logits_fake.shape)}"
        )
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(
        logits_fake, torch.zeros_like(logits_fake)
    )
    return real + fake


def gan_g_loss(logits_fake: Tensor) -> Tensor:
    """The generator's non-saturating loss, ``BCE(D(G(z)), 1)``, a mean over
    the batch of ``-log σ(D(G(z)))``; ``logits_fake`` (B,)."""
    if logits_fake.dim() != 1:
        raise ValueError(
            f"gan_g_loss takes one logit per sample, shape (B,); got "
            f"{tuple(logits_fake.shape)}"
        )
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))


def gan_pixel_loss(img_s: Tensor, img_t: Tensor) -> Tensor:
    """Chen et al.'s pixel term: mean absolute difference between the
    student's and the teacher's images from the same input, over all
    elements; ``img_s``, ``img_t`` (B, C, H, W)."""
    _check_same(img_s, img_t, "gan_pixel_loss")
    return (img_s - img_t).abs().mean()


def gan_perceptual_loss(feats_s: Tensor, feats_t: Tensor) -> Tensor:
    """Chen et al.'s perceptual term: mean absolute difference between a
    fixed network's features of the student's and the teacher's images,
    over all elements; ``feats_s``, ``feats_t`` (B, ...) from the same
    network (here the frozen teacher discriminator's last hidden layer)."""
    _check_same(feats_s, feats_t, "gan_perceptual_loss")
    return (feats_s - feats_t).abs().mean()


def gan_triplet_loss(
    pos: Tensor, neg: Tensor, anchor: Tensor, margin: float = 1.0
) -> Tensor:
    """Chen et al.'s triplet term for the student discriminator.

    ``mean_i max(0, d(pos_i, anchor_i) − d(neg_i, anchor_i) + margin)`` with
    ``d`` the mean absolute difference over a sample's elements;
    ``anchor = D̂_T(G_T(x))`` (teacher discriminator, teacher image),
    ``pos = D̂_S(G_T(x))`` (student discriminator, teacher image),
    ``neg = D̂_S(G_S(x))`` (student discriminator, student image), each
    (B, ...). It pulls the student discriminator's view of the teacher's
    images towards the teacher discriminator's, and pushes its view of the
    student's images away by at least ``margin``.
    """
    _check_same(pos, anchor, "gan_triplet_loss")
    _check_same(neg, anchor, "gan_triplet_loss")
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    d_pos = (pos - anchor).abs().flatten(1).mean(1)  # (B,)
    d_neg = (neg - anchor).abs().flatten(1).mean(1)
    return F.relu(d_pos - d_neg + margin).mean()
