"""Losses of online distillation, survey section 2.3.1, Eq. (5).

There is no pre-trained teacher: several students (peers, or branches on a
shared trunk) learn together, ``L = sum_k L_t(l_k, t) + sum_{i<j} L_KD(l_i, l_j)``.
What each student learns from is built from the others' logits on the same
batch: the other peers' predictions (DML), a gated ensemble of the branches
(ONE), an attention-weighted aggregate of the peers (OKDDip).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .traditional import kd_loss

__all__ = [
    "dml_kl_losses",
    "online_kl_loss",
    "gated_ensemble",
    "peer_attention_targets",
    "sigmoid_rampup",
]


def _check_logits(logits_s: Tensor, logits_t: Tensor, what: str) -> None:
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            f"{what}: expected two (B, K) logit tensors of one shape, got "
            f"student {tuple(logits_s.shape)} and target {tuple(logits_t.shape)}"
        )


def dml_kl_losses(logits: Sequence[Tensor], T: float = 1.0) -> list[Tensor]:
    """Deep mutual learning's KL term of every peer: ``[L_1, ..., L_K]``.

    ``L_k = T^2 / (K-1) * sum_{l != k} mean_b KL(p_l || p_k)`` with
    ``p = softmax(logits / T)``; the other peers' predictions are detached, so
    ``L_k`` trains peer ``k`` only (in the paper each peer takes its own step
    with the others' predictions as fixed targets). Zhang et al. use T = 1,
    where the T^2 factor (Hinton's, for T != 1) is 1. Shapes: K tensors
    ``(B, C)`` -> K scalars.

    Reference: ``zhang2018deep`` (K networks); survey section 2.3.1.
    """
    if len(logits) < 2:
        raise ValueError(f"mutual learning needs at least 2 peers, got {len(logits)}")
    for i, z in enumerate(logits[1:], 1):
        _check_logits(logits[0], z, f"dml_kl_losses (peer 0 vs peer {i})")
    k = len(logits)
    return [
        sum(kd_loss(z, other.detach(), T) for j, other in enumerate(logits) if j != i)
        / (k - 1)
        for i, z in enumerate(logits)
    ]


def online_kl_loss(
    logits_s: Tensor, logits_t: Tensor, T: float = 3.0, eps: float = 1e-7
) -> Tensor:
    """The KL term of ONE's and OKDDip's reference code.

    ``T^2 * mean_b sum_k q_k (log q_k - log p_k)`` with ``q = softmax(t / T) +
    eps`` (the authors add 1e-7 to the target probabilities) and ``p =
    softmax(s / T)``. It is KL(q || p) up to the ``eps`` shift, times T^2.
    The caller decides whether ``logits_t`` is detached: ONE detaches its
    ensemble, OKDDip does not. Shapes ``(B, K), (B, K) -> ()``.

    Reference: ``lan2018knowledge`` (``loss/kl_loss.py``, T = 3),
    ``chen2020online`` (``utils.KL_Loss``); survey section 2.3.1.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    _check_logits(logits_s, logits_t, "online_kl_loss")
    q = F.softmax(logits_t / T, dim=1) + eps
    log_p = F.log_softmax(logits_s / T, dim=1)
    return T**2 * (q * (q.log() - log_p)).sum(1).mean()


def gated_ensemble(logits: Tensor, gate: Tensor) -> Tensor:
    """ONE's teacher: the branches' logits weighted by the gate.

    ``z_e = sum_i g_i z_i``; ``logits`` ``(B, m, K)`` (m branches), ``gate``
    ``(B, m)`` (each row sums to 1) -> ``(B, K)``.

    Reference: ``lan2018knowledge``; survey section 2.3.1.
    """
    if logits.dim() != 3 or gate.shape != logits.shape[:2]:
        raise ValueError(
            f"gated_ensemble: expected logits (B, m, K) and gate (B, m), got "
            f"{tuple(logits.shape)} and {tuple(gate.shape)}"
        )
    return (gate.unsqueeze(2) * logits).sum(1)


def peer_attention_targets(
    logits: Tensor, queries: Tensor, keys: Tensor
) -> tuple[Tensor, Tensor]:
    """OKDDip's first-level targets: each peer's own attention-weighted aggregate.

    ``alpha_ij = softmax_j(q_i . k_j)`` (no scaling, self included) and
    ``t_i = sum_j alpha_ij z_j`` (an aggregate of logits). Shapes: logits
    ``(B, m, K)``, queries and keys ``(B, m, d)`` -> targets ``(B, m, K)``,
    attention ``(B, m, m)`` (rows sum to 1).

    Reference: ``chen2020online`` (``resnet_GL.py``); survey
    section 2.3.1.
    """
    if (
        logits.dim() != 3
        or queries.dim() != 3
        or queries.shape != keys.shape
        or queries.shape[:2] != logits.shape[:2]
    ):
        raise ValueError(
            "peer_attention_targets: expected logits (B, m, K) and queries, keys "
            f"(B, m, d), got {tuple(logits.shape)}, {tuple(queries.shape)}, "
            f"{tuple(keys.shape)}"
        )
    attention = torch.softmax(queries @ keys.transpose(1, 2), dim=-1)
    return attention @ logits, attention


def sigmoid_rampup(current: float, length: float) -> float:
    """``exp(-5 (1 - t/L)^2)`` for ``t = min(current, L)``; 1 when ``L = 0``.

    The consistency ramp-up (Laine & Aila 2017) that ONE's and OKDDip's code
    multiply their KL terms by, with ``current`` the 0-based epoch.
    """
    if length < 0:
        raise ValueError(f"ramp-up length must be >= 0, got {length}")
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(current, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)
