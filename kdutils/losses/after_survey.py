"""Logit losses of methods newer than the survey's references (2022-2024), beside its section 2.1.

The losses of :mod:`kdutils.distillers.after_survey`: decoupled KD (DKD), DIST's
correlation losses, logit standardisation, normalized KD (NKD) and the
learned temperature of curriculum temperature KD (CTKD). Each
function is pure (student first, teacher second; teacher tensors are constants
for the caller) and follows its authors' public code; its docstring names the
code base and every detail that differs from the paper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_T

__all__ = [
    "dkd_loss",
    "pearson_correlation",
    "dist_loss",
    "standardize_logits",
    "nkd_loss",
    "gradient_reversal",
    "cosine_reversal",
    "ctkd_temperature",
    "kd_loss_learned_T",
]


def _check_pair(logits_s: Tensor, logits_t: Tensor) -> None:
    """Two ``(B, K)`` tensors of the same shape, or a ValueError naming both."""
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            f"logits_s {tuple(logits_s.shape)} and logits_t {tuple(logits_t.shape)} "
            "must both be (B, K) with the same shape"
        )


def _check_target(logits: Tensor, target: Tensor) -> None:
    """Integer class indices ``(B,)`` for ``(B, K)`` logits (their range is not
    read here: that would synchronise a GPU on every step)."""
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"target {tuple(target.shape)} must be (B,) for logits "
            f"{tuple(logits.shape)}"
        )
    if target.dtype.is_floating_point or target.dtype == torch.bool:
        raise ValueError(f"target must hold class indices, got dtype {target.dtype}")


def dkd_loss(
    logits_s: Tensor,
    logits_t: Tensor,
    target: Tensor,
    alpha: float = 1.0,
    beta: float = 8.0,
    T: float = 4.0,
) -> Tensor:
    """Decoupled KD: KD's loss split into a target-class and a non-target part.

    ``alpha * TCKD + beta * NCKD``, each ``T**2 * sum_b KL(. || .) / B``:

    - TCKD compares the *binary* distributions ``b = (p(y), 1 - p(y))`` of
      teacher and student, ``p = softmax(logits / T)``: how sure each is of
      the label;
    - NCKD compares the distributions over the *other* classes, renormalised
      among themselves: what the teacher's "dark knowledge" looks like.

    Hinton's KD equals ``TCKD + (1 - p_t(y)) * NCKD``, so it weighs the
    non-target part down exactly where the teacher is confident; DKD gives the
    two parts their own weights. ``target`` holds the labels. Shapes
    ``(B, K), (B, K), (B,) -> ()``. Defaults: mdistiller's configuration
    (alpha 1, beta 8, T 4); its ResNet56 -> ResNet20 setting is beta = 2.

    As in the authors' code (mdistiller, ``dkd_loss``): the binary student
    distribution is logged without an epsilon, and NCKD removes the target
    class by subtracting 1000 from its tempered logit before the softmax
    (not by dropping the column; the two agree to ``exp(-1000)``).

    Reference: ``zhao2022decoupled`` (CVPR 2022); beside survey 2.1.
    """
    _check_pair(logits_s, logits_t)
    _check_target(logits_s, target)
    check_T(T)
    mask = F.one_hot(target, logits_s.shape[1]).to(logits_s.dtype)  # (B, K)
    n = logits_s.shape[0]

    def binary(p: Tensor) -> Tensor:  # (B, K) -> (B, 2): p(y), the rest
        on = (p * mask).sum(dim=1, keepdim=True)
        return torch.cat([on, (p * (1 - mask)).sum(dim=1, keepdim=True)], dim=1)

    b_s = binary(F.softmax(logits_s / T, dim=1))
    b_t = binary(F.softmax(logits_t / T, dim=1))
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * T**2 / n
    log_q_s = F.log_softmax(logits_s / T - 1000.0 * mask, dim=1)
    q_t = F.softmax(logits_t / T - 1000.0 * mask, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * T**2 / n
    return alpha * tckd + beta * nckd


def pearson_correlation(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``.

    The cosine of the two rows after each is centred on its own mean:
    ``<a - mean(a), b - mean(b)> / (|a - mean(a)| * |b - mean(b)| + eps)``,
    with DIST's ``eps = 1e-8`` added to the product of the norms (so a
    constant row has correlation 0, not NaN). Shapes ``(N, M), (N, M) -> (N,)``.
    Invariant to a positive scale and a shift of either row.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"a {tuple(a.shape)} and b {tuple(b.shape)} must both be (N, M) "
            "with the same shape"
        )
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(
    logits_s: Tensor,
    logits_t: Tensor,
    beta: float = 1.0,
    gamma: float = 1.0,
    tau: float = 1.0,
) -> Tensor:
    """DIST: match the teacher's relations between classes and between samples.

    With ``P = softmax(logits / tau)`` (a row per sample):

    - inter-class relation ``1 - mean_b rho(P_s[b], P_t[b])``: how each sample
      ranks the classes, compared sample by sample;
    - intra-class relation ``1 - mean_k rho(P_s[:, k], P_t[:, k])``: how each
      class's probability varies over the batch, compared class by class;

    ``rho`` the Pearson correlation (:func:`pearson_correlation`). Returns
    ``beta * tau**2 * inter + gamma * tau**2 * intra``. A correlation ignores
    the scale and the offset of the predictions, so the student need not
    match a much stronger teacher's confidence exactly, only its relations.
    Shapes ``(B, K), (B, K) -> ()``; the intra-class term needs ``B >= 2``
    (with one sample each column is constant and the term is 1, no gradient).

    As in the authors' code (image_classification_sota's
    ``lib/models/losses/dist_kd.py``, which DIST_KD's classification code
    uses): ``eps = 1e-8`` added to the product of the norms of the centred
    vectors, and the ``tau**2`` factor, which the paper's equations omit.

    Reference: ``huang2022knowledge`` (NeurIPS 2022); beside survey 2.1.
    """
    _check_pair(logits_s, logits_t)
    check_T(tau, "tau")
    p_s = F.softmax(logits_s / tau, dim=1)
    p_t = F.softmax(logits_t / tau, dim=1)
    inter = 1 - pearson_correlation(p_s, p_t).mean()
    intra = 1 - pearson_correlation(p_s.transpose(0, 1), p_t.transpose(0, 1)).mean()
    return beta * (tau**2 * inter) + gamma * (tau**2 * intra)


def standardize_logits(z: Tensor, eps: float = 1e-7) -> Tensor:
    """Logit standardisation: the z-score of each row, ``(z - mean) / (eps + std)``.

    Over the last dimension (the classes): mean and the *sample* standard
    deviation (Bessel's ``K - 1``, ``torch.std``'s default), ``eps`` added to
    the deviation, as in the authors' code (logit-standardization-KD,
    ``normalize`` in ``mdistiller/distillers/KD.py``). Softmax at temperature
    ``T`` of the result is softmax of ``z / (T * (std + eps))``: a temperature
    per sample proportional to the spread of its logits, so a student need
    not match its teacher's logit range, only their relations.
    Logit-standardised KD is ``kd_loss(standardize_logits(l_s),
    standardize_logits(l_t), T)``. ``(..., K) -> (..., K)``, ``K >= 2``.

    Reference: ``sun2024logit`` (CVPR 2024); beside survey 2.1.
    """
    if z.dim() < 1 or z.shape[-1] < 2:
        raise ValueError(
            f"logits {tuple(z.shape)} need at least 2 classes in the last dimension"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    mean = z.mean(dim=-1, keepdim=True)
    std = z.std(dim=-1, keepdim=True)  # unbiased, as the authors'
    return (z - mean) / (eps + std)


def nkd_loss(
    logits_s: Tensor,
    logits_t: Tensor,
    target: Tensor,
    T: float = 1.0,
    gamma: float = 1.5,
) -> Tensor:
    """Normalized KD: the target class and the normalised non-target classes apart.

    ``-mean_b p_t(y) log p_s(y)  -  gamma * T**2 * mean_b sum_{k != y} q_t(k) log q_s(k)``
    where ``p = softmax(logits)`` (temperature 1) and ``q = softmax`` of the
    ``K - 1`` non-target logits at ``T``, i.e. the non-target probabilities
    at ``T`` renormalised to sum to 1 (the paper's ``N(.)``). KD's
    cross-entropy splits into the first term, the non-target term weighted by
    ``1 - p_t(y)`` and a term in ``log(1 - p_s(y))``; NKD keeps the first and
    gives the second a fixed weight. Both are cross-entropies (no teacher
    entropy subtracted), means over the batch. ``target`` holds the labels.
    Shapes ``(B, K), (B, K), (B,) -> ()``, ``K >= 2``. Defaults: the loss's
    (``temp=1.0, gamma=1.5``, ImageNet).

    As in the authors' code (yzd-v/cls_KD, ``NKDLoss`` in
    ``mmcls/models/dis_losses/nkd.py``, after its fix of October 2023 that
    removes the target column; before it the mask kept every class): the
    non-target distributions are softmaxes of the logits with the target's
    column dropped, and ``p_t(y)`` is detached.

    Reference: ``yang2023knowledge`` (ICCV 2023); beside survey 2.1.
    """
    _check_pair(logits_s, logits_t)
    _check_target(logits_s, target)
    check_T(T)
    n, k = logits_s.shape
    if k < 2:
        raise ValueError(f"NKD needs at least 2 classes, got logits {(n, k)}")
    label = target[:, None]  # (B, 1)
    log_p_s = F.log_softmax(logits_s, dim=1).gather(1, label)
    p_t = F.softmax(logits_t, dim=1).gather(1, label).detach()
    target_term = -(p_t * log_p_s).mean()
    rest = ~F.one_hot(target, k).bool()  # (B, K): every class but the label
    rest_s = logits_s[rest].reshape(n, k - 1)
    rest_t = logits_t[rest].reshape(n, k - 1)
    log_q_s = F.log_softmax(rest_s / T, dim=1)
    q_t = F.softmax(rest_t / T, dim=1)
    non_target = -gamma * T**2 * (q_t * log_q_s).sum(dim=1).mean()
    return target_term + non_target


class _ScaledGradient(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by ``lam``."""

    @staticmethod
    def forward(ctx, x: Tensor, lam: float) -> Tensor:
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad * ctx.lam, None


def gradient_reversal(x: Tensor, lam: float) -> Tensor:
    """``x`` unchanged, but its gradient multiplied by ``lam`` on the way back.

    With ``lam < 0`` whatever lies before ``x`` ascends the loss the rest of the
    graph descends (Ganin & Lempitsky's gradient reversal layer, as CTKD's
    ``GradientReversalFunction``, which multiplies by ``lam`` as given: the
    sign is in ``lam``). Same shape as ``x``.
    """
    return _ScaledGradient.apply(x, float(lam))


def cosine_reversal(
    epoch: int, epochs: int = 10, start: float = 0.0, end: float = -1.0
) -> float:
    """CTKD's curriculum: the reversal strength ``lambda`` of epoch ``epoch``.

    ``end + (start - end) * (cos(pi * min(epoch, epochs) / epochs) + 1) / 2``:
    from ``start`` (0: the temperature is not trained) at epoch 0 down to
    ``end`` (-1: fully adversarial) at ``epochs`` and after, along half a
    cosine, as the authors' ``CosineDecay`` (``decay_max`` 0, ``decay_min``
    -1, ``decay_loops`` 10, read at the 1-based epoch). ``epochs = 0`` gives
    ``end`` at once.
    """
    if epochs <= 0:
        return float(end)
    e = min(max(epoch, 0), epochs)
    return end + (start - end) * (math.cos(math.pi * e / epochs) + 1.0) / 2.0


def ctkd_temperature(
    theta: Tensor, lam: float, t_start: float = 1.0, t_end: float = 20.0
) -> Tensor:
    """CTKD's global temperature: ``t_start + t_end * sigmoid(theta)``.

    ``theta`` (the learned parameter, shape ``(1,)``) passes through
    :func:`gradient_reversal` with ``lam`` first, so the temperature moves to
    *raise* the distillation loss while the student lowers it. Values in
    ``(t_start, t_start + t_end)``: (1, 21) with the authors' defaults.
    """
    return t_start + t_end * torch.sigmoid(gradient_reversal(theta, lam))


def kd_loss_learned_T(logits_s: Tensor, logits_t: Tensor, T: Tensor) -> Tensor:
    """Hinton's KD at a temperature tensor that the gradient reaches.

    ``T**2 * mean_b KL(softmax(l_t / T) || softmax(l_s / T))``, as
    :func:`kdutils.losses.kd_loss`, but ``T`` is a tensor (``()`` or ``(1,)``,
    e.g. :func:`ctkd_temperature`) and carries a gradient through both
    softmaxes and the ``T**2`` factor, as in CTKD's ``DistillKL``. Its value
    is not checked (that would synchronise a GPU): keep it positive.
    Shapes ``(B, K), (B, K), (1,) -> ()``.
    """
    _check_pair(logits_s, logits_t)
    if T.numel() != 1:
        raise ValueError(f"T must hold one temperature, got shape {tuple(T.shape)}")
    T = T.reshape(())
    log_p_s = F.log_softmax(logits_s / T, dim=1)
    log_p_t = F.log_softmax(logits_t / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T**2
