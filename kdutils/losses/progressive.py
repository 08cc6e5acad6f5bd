"""Losses of progressive distillation, survey section 2.3.4, Eq. (8).

The teacher's *training path* guides the student: snapshots of one network
taken during its own training (snapshot distillation), or anchor points along
a teacher's training (route-constrained optimisation, which reuses Hinton's
:func:`~kdutils.losses.kd_loss`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["snapshot_kd_loss"]


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
