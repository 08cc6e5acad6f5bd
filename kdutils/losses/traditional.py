"""Hinton's soft targets, survey section 1: the losses of :mod:`kdutils.distillers.traditional`.

Most other families add ``kd_loss`` to their own terms; the better output
losses of section 2.1 are in :mod:`kdutils.losses.output`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss", "soft_targets"]


def soft_targets(logits: Tensor, T: float = 1.0) -> Tensor:
    """softmax(logits / T) over the last dimension: ``(B, K) -> (B, K)``."""
    return F.softmax(logits / T, dim=-1)


def kd_loss(logits_s: Tensor, logits_t: Tensor, T: float = 4.0) -> Tensor:
    """Hinton et al.'s soft-target loss, the L_KD term of survey Eq. (1).

    ``T**2 * mean_b sum_k p_t(k) * (log p_t(k) - log p_s(k))`` with
    ``p = softmax(logits / T)``: KL(p_t || p_s), summed over classes, averaged
    over the batch, multiplied by T^2 so that its gradients keep their size as
    T changes (Hinton et al. 2015, section 2). Shapes ``(B, K), (B, K) -> ()``.

    Reference: ``hinton2015distilling``; survey section 1.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    log_p_s = F.log_softmax(logits_s / T, dim=-1)
    log_p_t = F.log_softmax(logits_t / T, dim=-1)
    # kl_div(input=log q, target=log p, log_target) = sum p (log p - log q)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T**2
