"""Losses of self-distillation, survey section 2.3.2, Eq. (6).

The network teaches itself: its deepest classifier teaches classifiers
attached to its shallower stages (BYOT, Zhang et al. 2019), or each sample's
prediction is refined by the predictions of similar samples in the same batch
(BAKE, Ge et al. 2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["byot_kd_loss", "byot_feature_loss", "bake_targets"]


def byot_kd_loss(logits_s: Tensor, logits_t: Tensor, T: float = 3.0) -> Tensor:
    """BYOT's KD term: soft cross-entropy to the deepest exit, times T^2.

    ``-T^2 mean_b sum_k softmax(t/T)_k log softmax(s/T)_k``: the reference
    code's ``kd_loss_function`` times ``temperature**2``. It is KL(p_t || p_s)
    plus the entropy of ``p_t``, so it has the KL's gradient but does not
    vanish for identical logits. Shapes ``(B, K), (B, K) -> ()``; the caller
    detaches ``logits_t`` (the deepest exit).

    Reference: ``zhang2019your`` (luanyunteng/pytorch-be-your-own-teacher,
    ``train.py``, T = 3); survey section 2.3.2.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            "byot_kd_loss: expected two (B, K) logit tensors of one shape, got "
            f"exit {tuple(logits_s.shape)} and deepest {tuple(logits_t.shape)}"
        )
    q = F.softmax(logits_t / T, dim=1)
    return -(q * F.log_softmax(logits_s / T, dim=1)).sum(1).mean() * T**2


def byot_feature_loss(feat_s: Tensor, feat_t: Tensor) -> Tensor:
    """BYOT's feature hint: summed squared error where either feature is positive.

    ``sum_{b,i} (f_s - f_t)^2 [f_s > 0 or f_t > 0]``, summed over the batch
    too (the reference code's ``feature_loss_function``); for the
    non-negative pooled features BYOT compares the mask changes nothing.
    Shapes: two equal shapes, e.g. ``(B, C)`` -> ``()``; the caller detaches
    ``feat_t`` (the deepest feature).

    Reference: ``zhang2019your``; survey section 2.3.2.
    """
    if feat_s.shape != feat_t.shape:
        raise ValueError(
            f"byot_feature_loss: exit feature {tuple(feat_s.shape)} != deepest "
            f"feature {tuple(feat_t.shape)}; nothing is broadcast"
        )
    mask = ((feat_s > 0) | (feat_t > 0)).to(feat_s.dtype)
    return ((feat_s - feat_t) ** 2 * mask).sum()


def bake_targets(
    emb: Tensor, logits: Tensor, omega: float = 0.5, T: float = 4.0
) -> Tensor:
    """BAKE's batch knowledge ensemble: predictions propagated along affinities.

    ``A = softmax_row(F F^T - 1e9 I)`` with ``F`` the L2-normalised embeddings
    (each sample's affinities to the *other* samples, rows summing to 1),
    ``P = softmax(logits / T)`` and ``Q = (1 - omega) (I - omega A)^{-1} P =
    (1 - omega) sum_{t>=0} omega^t A^t P``, the limit of propagating the
    predictions through the batch graph (rows of ``Q`` are probabilities).
    Shapes: ``emb`` ``(B, D)``, ``logits`` ``(B, K)`` -> ``(B, K)``. A batch
    of one gives back its own ``P``. The authors compute it without gradients.

    Reference: ``ge2021self`` (yxgeee/BAKE ``knowledge_ensemble``; omega 0.5
    and T 4 for CIFAR); survey section 2.3.2.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if not 0 <= omega < 1:
        raise ValueError(f"omega must be in [0, 1), got {omega}")
    if emb.dim() != 2 or logits.dim() != 2 or emb.shape[0] != logits.shape[0]:
        raise ValueError(
            "bake_targets: expected embeddings (B, D) and logits (B, K) of one "
            f"batch, got {tuple(emb.shape)} and {tuple(logits.shape)}"
        )
    b = emb.shape[0]
    eye = torch.eye(b, dtype=emb.dtype, device=emb.device)
    f = F.normalize(emb, p=2, dim=1)
    affinity = torch.softmax(f @ f.t() - eye * 1e9, dim=1)  # (B, B)
    probs = F.softmax(logits / T, dim=1)
    return (1 - omega) * torch.linalg.solve(eye - omega * affinity, probs)
