"""Losses of multi-teacher distillation, survey section 2.3.3, Eq. (7).

The student learns from an ensemble of several teachers' outputs,
``L = L_t(l_S, t) + L_KD(l_S, E(l_T1, l_T2, ...))``. ``E`` is the plain mean
of the teachers' softened predictions (You et al. 2017) or a per-sample
weighted mean whose weights are learned (AMTML-KD, Liu et al. 2020d).
FEED (Park & Kwak 2019) integrates the teachers at the feature level instead:
one transformation of the student's map per teacher, each matched with that
teacher's map.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_T

__all__ = [
    "kl_to_targets",
    "teacher_ensemble_targets",
    "teacher_attention_weights",
    "feed_loss",
]


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


def feed_loss(maps_s: Sequence[Tensor], maps_t: Sequence[Tensor]) -> Tensor:
    """FEED's feature-level ensemble loss: one L1 term of normalised maps per teacher.

    ``sum_m mean_{b,d} | T_m(f_S)/||T_m(f_S)||_2 - f_m/||f_m||_2 |``: for
    teacher m, ``maps_s[m]`` is the student's map after that teacher's
    transformation layer ``T_m`` and ``maps_t[m]`` the teacher's map, both
    ``(B, C_m, H, W)``, each sample flattened to ``D = C_m H W`` and
    L2-normalised (factor transfer's p = 1 distance, which FEED adopts),
    the mean over the batch and the D entries, summed over the M teachers.
    Shapes: two lists of M maps, pairwise of one shape -> ``()``.

    Reference: ``park2019feed`` (the loss of ``kim2018paraphrasing``);
    survey section 2.3.3.
    """
    if len(maps_s) == 0 or len(maps_s) != len(maps_t):
        raise ValueError(
            f"feed_loss: expected one transformed student map per teacher map, "
            f"got {len(maps_s)} and {len(maps_t)}"
        )
    total = 0.0
    for m, (f_s, f_t) in enumerate(zip(maps_s, maps_t, strict=True)):
        if f_s.shape != f_t.shape or f_s.dim() < 2:
            raise ValueError(
                f"feed_loss: teacher {m}: transformed student map "
                f"{tuple(f_s.shape)} and teacher map {tuple(f_t.shape)} must have "
                "one (B, ...) shape"
            )
        b = f_s.shape[0]
        diff = F.normalize(f_s.reshape(b, -1), dim=1) - F.normalize(
            f_t.reshape(b, -1), dim=1
        )
        total = total + diff.abs().mean()
    return total
