"""Losses of distillation for dense prediction (survey section 5.2, segmentation).

Pure functions on score maps and feature maps ``(N, C, H, W)``, student first,
teacher second (the caller detaches the teacher). Each follows its authors'
public code, named in its docstring with every detail that differs from the
paper:

- :func:`pixel_wise_loss` and :func:`pair_wise_loss`: structured knowledge
  distillation (Liu et al. 2019, the survey's Liu et al. 2019b), code
  irfanICMLL/structure_knowledge_distillation, ``utils/criterion.py``;
- :func:`channel_wise_loss`: channel-wise distillation (Shu et al. 2021, the
  survey's Shu et al. 2020), as OpenMMLab's ``ChannelWiseDivergence``
  (mmrazor), which the authors' configurations use.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_T

__all__ = ["pixel_wise_loss", "pair_similarity", "pair_wise_loss", "channel_wise_loss"]


def _check_maps(name: str, s: Tensor, t: Tensor, same_channels: bool = True) -> None:
    if s.dim() != 4 or t.dim() != 4:
        raise ValueError(
            f"{name}: maps must be (N, C, H, W), got {tuple(s.shape)} and {tuple(t.shape)}"
        )
    if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
        raise ValueError(
            f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must share "
            "the batch and the spatial size"
        )
    if same_channels and s.shape[1] != t.shape[1]:
        raise ValueError(
            f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must have "
            "the same channels"
        )


def pixel_wise_loss(scores_s: Tensor, scores_t: Tensor) -> Tensor:
    """Pixel-wise distillation: the teacher's class distribution at every pixel.

    ``sum over images and pixels of CE(softmax(t), log_softmax(s)) / (H W)``:
    the cross-entropy of the teacher's per-pixel class probabilities with the
    student's (temperature 1), summed over the pixels and the *images* and
    divided by the number of pixels of one image, as the authors'
    ``CriterionPixelWise`` does (so it grows with the batch; the paper writes
    a mean of KL divergences, whose gradient is the same up to that factor).
    ``(N, K, H, W), (N, K, H, W) -> ()``.
    """
    _check_maps("pixel_wise_loss", scores_s, scores_t)
    h, w = scores_s.shape[2:]
    p_t = F.softmax(scores_t, dim=1)
    return -(p_t * F.log_softmax(scores_s, dim=1)).sum() / (h * w)


def pair_similarity(feat: Tensor, eps: float = 1e-8) -> Tensor:
    """``(N, C, H, W) -> (N, HW, HW)``: cosine similarity of every pair of
    spatial positions' feature vectors. Each vector is divided by its L2 norm
    plus ``eps``, the norm detached (no gradient flows through it), as the
    authors' ``similarity``; half precision is computed in float32, as theirs."""
    feat = feat.to(torch.promote_types(feat.dtype, torch.float32))  # theirs: .float()
    norm = feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps
    unit = (feat / norm.detach()).flatten(2)  # (N, C, HW)
    return torch.einsum("icm,icn->imn", unit, unit)


def pair_wise_loss(feat_s: Tensor, feat_t: Tensor, scale: float = 0.5) -> Tensor:
    """Pair-wise (structured) distillation: the similarities between regions.

    Both maps are max-pooled with a kernel and stride of ``int(H scale)`` by
    ``int(W scale)`` (``ceil_mode``), each pooled position is a node, and the
    loss is ``sum (a_T - a_S)^2 / (H'W')^2 / N`` over the ``(N, H'W', H'W')``
    similarity matrices of :func:`pair_similarity`, as the authors'
    ``CriterionPairWiseforWholeFeatAfterPool`` (their Cityscapes setting:
    ``scale = 0.5``, weight 0.5). The channel counts may differ: each side's
    similarity is within its own features. ``-> ()``.
    """
    _check_maps("pair_wise_loss", feat_s, feat_t, same_channels=False)
    if not 0 < scale <= 1:
        raise ValueError(f"pair_wise_loss: scale must be in (0, 1], got {scale!r}")
    kh, kw = int(feat_t.shape[2] * scale), int(feat_t.shape[3] * scale)
    if kh < 1 or kw < 1:
        raise ValueError(
            f"pair_wise_loss: scale {scale} pools the {tuple(feat_t.shape[2:])} map "
            "to an empty kernel; raise scale"
        )
    pooled_s = F.max_pool2d(feat_s, (kh, kw), stride=(kh, kw), ceil_mode=True)
    pooled_t = F.max_pool2d(feat_t, (kh, kw), stride=(kh, kw), ceil_mode=True)
    nodes = pooled_t.shape[2] * pooled_t.shape[3]
    diff = pair_similarity(pooled_t) - pair_similarity(pooled_s)
    return (diff.pow(2) / nodes**2 / feat_t.shape[0]).sum()


def channel_wise_loss(maps_s: Tensor, maps_t: Tensor, tau: float = 1.0) -> Tensor:
    """Channel-wise distillation: each channel as a distribution over positions.

    Every channel of every image is turned into a distribution over its
    ``H W`` positions by a softmax at temperature ``tau``; the loss is the
    KL divergence ``KL(teacher || student)`` of each channel, summed, times
    ``tau**2``, divided by ``N C`` (mmrazor's ``ChannelWiseDivergence``; the
    authors' Cityscapes setting on the score maps is ``tau = 4``, weight 3).
    Student and teacher must have the same channels (a 1x1 convolution
    aligns features first, in the distiller). ``-> ()``.
    """
    _check_maps("channel_wise_loss", maps_s, maps_t)
    check_T(tau, "tau")
    n, c = maps_s.shape[:2]
    log_p_s = F.log_softmax(maps_s.flatten(2) / tau, dim=2)
    log_p_t = F.log_softmax(maps_t.flatten(2) / tau, dim=2)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * tau**2 / (n * c)
