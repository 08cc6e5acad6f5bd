"""Losses of multi-teacher distillation, survey section 2.3.3, Eq. (7).

The student learns from an ensemble of several teachers' outputs,
``L = L_t(l_S, t) + L_KD(l_S, E(l_T1, l_T2, ...))``. ``E`` is the plain mean
of the teachers' softened predictions (You et al. 2017) or a per-sample
weighted mean whose weights are learned (AMTML-KD, Liu et al. 2020d).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_T

__all__ = ["kl_to_targets", "teacher_ensemble_targets", "teacher_attention_weights"]


def kl_to_targets(logits_s: Tensor, probs_t: Tensor, T: float = 4.0) -> Tensor:
    """KD towards given target probabilities: ``T^2 mean_b KL(q || softmax(s/T))``.

    ``T^2 / B * sum_{b,k} q_bk (log q_bk - log p_bk)`` with ``p = softmax(s /
    T)`` and ``0 log 0 = 0`` (``nn.KLDivLoss(reduction="sum") * T^2 / B``, the
    form of BAKE's ``KDLoss``). With ``q = softmax(t / T)`` it is
    :func:`kdutils.losses.kd_loss`. Shapes ``(B, K), (B, K) -> ()``; ``q``'s
    rows are probabilities (the caller treats them as constants or not).

    Reference: ``ge2021self``, ``you2017learning``; survey sections 2.3.2,
    2.3.3.
    """
    check_T(T)
    if logits_s.dim() != 2 or logits_s.shape != probs_t.shape:
        raise ValueError(
            "kl_to_targets: expected student logits and target probabilities of "
            f"one (B, K) shape, got {tuple(logits_s.shape)} and "
            f"{tuple(probs_t.shape)}"
        )
    log_p = F.log_softmax(logits_s / T, dim=1)
    return F.kl_div(log_p, probs_t, reduction="sum") * T**2 / logits_s.shape[0]


def teacher_ensemble_targets(
    logits_t: Tensor, weights: Tensor | None = None, T: float = 4.0
) -> Tensor:
    """The teachers' softened predictions, averaged: ``q = sum_m w_m softmax(z_m / T)``.

    ``logits_t`` ``(B, M, K)`` (M teachers); ``weights`` ``(B, M)`` with rows
    summing to 1 (per-sample teacher importance, AMTML-KD), or None for the
    plain mean ``w_m = 1/M`` (You et al. 2017) -> ``(B, K)`` probabilities.

    Reference: ``you2017learning``, ``liu2020adaptive``; survey section 2.3.3.
    """
    check_T(T)
    if logits_t.dim() != 3:
        raise ValueError(
            "teacher_ensemble_targets: expected teacher logits (B, M, K), got "
            f"{tuple(logits_t.shape)}"
        )
    probs = F.softmax(logits_t / T, dim=2)
    if weights is None:
        return probs.mean(1)
    if weights.shape != logits_t.shape[:2]:
        raise ValueError(
            f"teacher_ensemble_targets: weights {tuple(weights.shape)} do not match "
            f"the (B, M) = {tuple(logits_t.shape[:2])} of the teacher logits"
        )
    return (weights.unsqueeze(2) * probs).sum(1)


def teacher_attention_weights(emb: Tensor, theta: Tensor, w: Tensor) -> Tensor:
    """AMTML-KD's per-sample teacher importance: ``softmax_m(w . (theta_m * e))``.

    Each teacher m has a learned latent representation ``theta_m`` (D,); a
    sample's representation ``e`` (D,) is the student's pooled feature; the
    score of teacher m is ``sum_d w_d theta_md e_d`` and the weights are a
    softmax over teachers. Shapes: ``emb`` ``(B, D)``, ``theta`` ``(M, D)``,
    ``w`` ``(D,)`` -> ``(B, M)``, rows summing to 1 (the authors' ``Adapter``).

    Reference: ``liu2020adaptive``; survey section 2.3.3.
    """
    if (
        emb.dim() != 2
        or theta.dim() != 2
        or theta.shape[1] != emb.shape[1]
        or w.shape != (emb.shape[1],)
    ):
        raise ValueError(
            "teacher_attention_weights: expected emb (B, D), theta (M, D), w (D,), "
            f"got {tuple(emb.shape)}, {tuple(theta.shape)}, {tuple(w.shape)}"
        )
    scores = (emb.unsqueeze(1) * theta.unsqueeze(0)) @ w  # (B, M, D) @ (D,) -> (B, M)
    return torch.softmax(scores, dim=1)
