"""Multi-level logit distillation (MLKD, Jin et al. 2023): the second half of the after-survey family.

The losses of :class:`kdutils.distillers.after_survey_levels.MLKD`, after the authors'
public code (``mdistiller/distillers/KD_ours.py`` of the repository
Jin-Ying/Multi-Level-Logit-Distillation). MLKD aligns the teacher's and the
student's predictions at three levels, each at several temperatures:

- instance: Hinton's KD per sample (:func:`kdutils.losses.kd_loss`);
- batch: the ``B x B`` Gram matrix of the predictions (how alike the samples
  of the batch are), :func:`batch_correlation_loss`;
- class: the ``C x C`` Gram matrix (how the classes co-occur over the
  batch), :func:`class_correlation_loss`.

:func:`mlkd_loss` combines them as the authors' ``forward_train`` does, with
its particulars (listed in its docstring).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_T
from .traditional import kd_loss

__all__ = [
    "MLKD_TEMPERATURES",
    "batch_correlation_loss",
    "class_correlation_loss",
    "confidence_fractions",
    "mlkd_loss",
]

# The authors' temperatures: the configured T (4 in their CIFAR runs), 3, 5, 2, 6.
MLKD_TEMPERATURES = (4.0, 3.0, 5.0, 2.0, 6.0)


def _check_pair(logits_s: Tensor, logits_t: Tensor) -> None:
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            f"logits_s {tuple(logits_s.shape)} and logits_t {tuple(logits_t.shape)} "
            "must both be (B, K) with the same shape"
        )


def batch_correlation_loss(logits_s: Tensor, logits_t: Tensor, T: float) -> Tensor:
    """Batch-level alignment: ``||P_t P_t^T - P_s P_s^T||_F^2 / B``.

    ``P = softmax(logits / T)`` row-wise, ``(B, K)``; ``P P^T`` is ``(B, B)``:
    entry ``(i, j)`` is how much samples i and j share their prediction. The
    squared differences are summed and divided by the batch size, as the
    authors' ``bc_loss``. No ``T**2`` factor (there is none in their code).
    ``(B, K), (B, K) -> ()``.
    """
    _check_pair(logits_s, logits_t)
    check_T(T)
    p_s, p_t = F.softmax(logits_s / T, dim=1), F.softmax(logits_t / T, dim=1)
    return ((p_t @ p_t.T - p_s @ p_s.T) ** 2).sum() / logits_s.shape[0]


def class_correlation_loss(logits_s: Tensor, logits_t: Tensor, T: float) -> Tensor:
    """Class-level alignment: ``||P_t^T P_t - P_s^T P_s||_F^2 / K``.

    ``P^T P`` is ``(K, K)``: entry ``(a, b)`` is how much the batch's
    predictions put on classes a and b together. Summed and divided by the
    number of classes, as the authors' ``cc_loss``; no ``T**2`` factor.
    ``(B, K), (B, K) -> ()``.
    """
    _check_pair(logits_s, logits_t)
    check_T(T)
    p_s, p_t = F.softmax(logits_s / T, dim=1), F.softmax(logits_t / T, dim=1)
    return ((p_t.T @ p_t - p_s.T @ p_s) ** 2).sum() / logits_s.shape[1]


def confidence_fractions(logits_t: Tensor) -> tuple[Tensor, Tensor]:
    """The factors the authors' confidence masks reduce to, from the teacher's
    logits on the usual (weak) view: ``(samples, classes)``.

    The authors mask the samples whose teacher confidence (the top
    probability at T = 1) is at most its batch median (NumPy's 50th
    percentile, linear interpolation), and the classes whose summed
    probability over the batch is at most its median. Their per-level losses
    are already reduced to a scalar when the mask multiplies them, so
    ``(loss * mask).mean()`` is the loss times the fraction of the mask that
    is set: these two fractions (each at least one half). Detached.
    """
    dtype = torch.promote_types(logits_t.dtype, torch.float32)
    p = F.softmax(logits_t.detach().to(dtype), dim=1)
    conf = p.max(dim=1).values
    per_class = p.sum(dim=0)
    samples = (conf <= torch.quantile(conf, 0.5)).to(dtype).mean()
    classes = (per_class <= torch.quantile(per_class, 0.5)).to(dtype).mean()
    return samples, classes


def mlkd_loss(
    weak_s: Tensor,
    weak_t: Tensor,
    strong_s: Tensor,
    strong_t: Tensor,
    temperatures: tuple[float, ...] = MLKD_TEMPERATURES,
) -> dict[str, Tensor]:
    """MLKD's three distillation terms, unweighted: ``{"kd", "cc", "bc"}``.

    ``weak_*`` are the logits on the usual view, ``strong_*`` on the strong
    view (:func:`kdutils.augment.rand_augment`); student first, teacher
    second, all ``(B, K)``. With ``f_s, f_c`` the fractions of
    :func:`confidence_fractions` and ``T_1..T_5`` the five temperatures:

    - ``kd = f_s sum_i KD_Ti(weak) + sum_{i<=3} KD_Ti(strong) + sum_{i>3} KD_Ti(weak)``
    - ``cc = f_c sum_i CC_Ti(weak)``
    - ``bc = f_s sum_i BC_Ti(weak)``

    exactly as the authors' code computes them, which differs from the paper
    in three places: the masks only scale each term (see
    :func:`confidence_fractions`); the strong view's instance term uses the
    weak logits at the last two temperatures (2 and 6); and the strong view's
    class- and batch-level terms are computed but not added to the loss, so
    they are left out here. ``KD_T`` is :func:`kdutils.losses.kd_loss` (batch
    mean, times ``T**2``).
    """
    for s, t in ((weak_s, weak_t), (strong_s, strong_t), (weak_s, strong_s)):
        _check_pair(s, t)
    if len(temperatures) != 5:
        raise ValueError(
            f"temperatures must hold 5 values as the authors' code, got {temperatures!r}"
        )
    for T in temperatures:
        check_T(T)
    f_s, f_c = confidence_fractions(weak_t)
    kd_weak = sum(kd_loss(weak_s, weak_t, T) for T in temperatures)
    kd_strong = sum(kd_loss(strong_s, strong_t, T) for T in temperatures[:3]) + sum(
        kd_loss(weak_s, weak_t, T) for T in temperatures[3:]
    )
    cc = sum(class_correlation_loss(weak_s, weak_t, T) for T in temperatures)
    bc = sum(batch_correlation_loss(weak_s, weak_t, T) for T in temperatures)
    return {"kd": f_s * kd_weak + kd_strong, "cc": f_c * cc, "bc": f_s * bc}
