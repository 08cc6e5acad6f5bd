"""Losses of progressive distillation, survey section 2.3.4, Eq. (8).

The teacher's *training path* guides the student: snapshots of one network
taken during its own training (snapshot distillation), or anchor points along
a teacher's training (route-constrained optimisation, which reuses Hinton's
:func:`~kdutils.losses.kd_loss`), or a teacher trained alongside the student
and held close to it (ProKT, :func:`prokt_teacher_loss`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["snapshot_kd_loss", "prokt_teacher_loss"]


def snapshot_kd_loss(logits_s: Tensor, logits_t: Tensor, T: float = 3.0) -> Tensor:
    """Snapshot distillation's teacher term: KL(softmax(t/T) || softmax(s)).

    ``mean_b sum_k q_k (log q_k - log p_k)`` with ``q = softmax(t / T)``, the
    teacher *alone* smoothed by T, and ``p = softmax(s)``, the student at
    temperature 1; no T^2 factor. It differs from the cross-entropy
    ``-sum_k q_k log p_k`` by the teacher's entropy, a constant, so the two
    give the same gradients. Shapes ``(B, K), (B, K) -> ()``.

    Reference: ``yang2019snapshot`` ("the teacher signal is smoothed");
    survey section 2.3.4.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            "snapshot_kd_loss: expected two (B, K) logit tensors of one shape, got "
            f"student {tuple(logits_s.shape)} and teacher {tuple(logits_t.shape)}"
        )
    log_p_s = F.log_softmax(logits_s, dim=-1)
    log_q = F.log_softmax(logits_t / T, dim=-1)
    return F.kl_div(log_p_s, log_q, reduction="batchmean", log_target=True)


def prokt_teacher_loss(
    logits_s: Tensor, logits_t: Tensor, y: Tensor, move_back_weight: float = 0.4
) -> Tensor:
    """ProKT's loss of the *teacher*: its label loss, pulled back towards the student.

    ``(1 - lambda) * CE(z_t, y) + lambda * mean_b KL(softmax(z_s) || softmax(z_t))``
    with ``lambda = move_back_weight``, both distributions at temperature 1
    and no T^2. The student's logits ``z_s`` are the target (the caller
    detaches them), so the KL term moves the teacher towards what the student
    currently predicts: the teacher's next state is its label step projected
    back near the student, the intermediate target the student then follows.
    Shapes ``(B, K), (B, K), (B,) -> ()``.

    Reference: ``shi2021follow`` (the authors' code: ``KDCriterion`` with
    ``move_back_weight``, KL computed as ``sum p_s (log p_s - log p_t)``);
    survey section 2.3.4.
    """
    if not 0.0 <= move_back_weight <= 1.0:
        raise ValueError(f"move_back_weight must be in [0, 1], got {move_back_weight}")
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            "prokt_teacher_loss: expected two (B, K) logit tensors of one shape, got "
            f"student {tuple(logits_s.shape)} and teacher {tuple(logits_t.shape)}"
        )
    if y.shape != logits_t.shape[:1]:
        raise ValueError(
            f"prokt_teacher_loss: expected labels of shape ({logits_t.shape[0]},), "
            f"got {tuple(y.shape)}"
        )
    log_p_s = F.log_softmax(logits_s, dim=-1)
    log_p_t = F.log_softmax(logits_t, dim=-1)
    kl = F.kl_div(log_p_t, log_p_s, reduction="batchmean", log_target=True)
    ce = F.cross_entropy(logits_t, y)
    return (1.0 - move_back_weight) * ce + move_back_weight * kl
