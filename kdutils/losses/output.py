"""Better output-based losses: survey section 2.1, the losses of :mod:`kdutils.distillers.output`.

Each function is pure (student first, teacher second; teacher tensors are
constants for the caller) and follows its authors' definition; where the
authors' code was not available the docstring says what the definition rests on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "conditional_ts_loss",
    "teacher_correct",
    "dtd_weights",
    "dtd_temperatures",
    "dtd_loss",
    "probability_shift",
    "pad_loss",
    "triplet_kd_loss",
    "prediction_entropy",
    "unix_mixing_weights",
    "mixup_cross_entropy",
]


def _check_logits(name_s: str, a: Tensor, name_t: str, b: Tensor) -> None:
    """Two ``(B, K)`` tensors of the same shape, or a ValueError naming both."""
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(
            f"{name_s} {tuple(a.shape)} and {name_t} {tuple(b.shape)} must both be "
            "(B, K) with the same shape"
        )


def _check_labels(logits: Tensor, y: Tensor) -> None:
    if y.shape != logits.shape[:1]:
        raise ValueError(
            f"labels {tuple(y.shape)} must be (B,) for logits {tuple(logits.shape)}"
        )


def teacher_correct(logits_t: Tensor, y: Tensor) -> Tensor:
    """Whether the teacher's top class is the label: ``(B, K), (B,) -> (B,)`` bool."""
    _check_labels(logits_t, y)
    return logits_t.argmax(dim=1) == y


def conditional_ts_loss(logits_s: Tensor, logits_t: Tensor, y: Tensor) -> Tensor:
    """Conditional teacher-student learning: the teacher where it is right, else the label.

    ``mean_b [ c_b * (-sum_k p_t(k) log p_s(k)) + (1 - c_b) * (-log p_s(y_b)) ]``
    with ``p = softmax(logits)`` (no temperature) and ``c_b = 1`` when the
    teacher's top class is the label. The soft term is the cross-entropy with the
    teacher's posteriors, as in the paper (it differs from KL(p_t || p_s) by the
    teacher's entropy, a constant for the student). Shapes ``(B, K), (B, K),
    (B,) -> ()``.

    Reference: ``meng2019conditional`` (no public code); survey 2.1.
    """
    _check_logits("logits_s", logits_s, "logits_t", logits_t)
    correct = teacher_correct(logits_t, y)  # (B,)
    log_p_s = F.log_softmax(logits_s, dim=1)
    soft = -(F.softmax(logits_t, dim=1) * log_p_s).sum(dim=1)  # (B,)
    hard = -log_p_s.gather(1, y[:, None]).squeeze(1)  # (B,)
    return torch.where(correct, soft, hard).mean()


@torch.no_grad()
def dtd_weights(logits_s: Tensor, logits_t: Tensor, gamma: float = 1.0) -> Tensor:
    """Focal-loss-style confusion weight of each sample: ``(1 - cos(l_s, l_t))^gamma``.

    The cosine of the student's and the teacher's logit vectors: near 1 when
    the two agree, lower on samples the student finds confusing. Detached.
    Shapes ``(B, K), (B, K) -> (B,)``, values in ``[0, 2^gamma]``.

    Reference: ``wen2021preparing`` (FLSW weights); survey 2.1.
    """
    _check_logits("logits_s", logits_s, "logits_t", logits_t)
    cos = F.cosine_similarity(logits_s, logits_t, dim=1)
    return (1.0 - cos).clamp_min(0.0) ** gamma


@torch.no_grad()
def dtd_temperatures(
    logits_s: Tensor,
    logits_t: Tensor,
    T: float = 4.0,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> Tensor:
    """Dynamic temperature of each sample: ``T + beta * (mean_batch(w) - w_b)``.

    ``w = dtd_weights(logits_s, logits_t, gamma)``. A sample more confusing
    than the batch average gets a temperature below ``T`` (sharper targets);
    an easy one gets a hotter temperature. Detached. ``(B, K), (B, K) -> (B,)``.

    Reference: ``wen2021preparing`` (dynamic temperature distillation);
    survey 2.1.
    """
    if T <= 0:
        raise ValueError(f"base temperature T must be > 0, got {T}")
    w = dtd_weights(logits_s, logits_t, gamma)
    tau = T + beta * (w.mean() - w)
    if (tau <= 0).any():
        raise ValueError(
            f"a per-sample temperature fell to {tau.min().item():.3g}; "
            f"use T > beta * 2**gamma (T={T}, beta={beta}, gamma={gamma})"
        )
    return tau


def dtd_loss(
    logits_s: Tensor,
    logits_t: Tensor,
    T: float = 4.0,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> Tensor:
    """KD with a temperature per sample: ``mean_b tau_b^2 KL(p_t(tau_b) || p_s(tau_b))``.

    ``tau = dtd_temperatures(logits_s, logits_t, T, beta, gamma)`` (constant
    for the gradient), ``p(tau) = softmax(logits / tau)``. Each sample keeps
    Hinton's ``tau^2`` factor, so with ``beta = 0`` this is ``kd_loss(.., T)``.
    Shapes ``(B, K), (B, K) -> ()``.

    Reference: ``wen2021preparing``; survey 2.1.
    """
    tau = dtd_temperatures(logits_s, logits_t, T, beta, gamma)[:, None]  # (B, 1)
    log_p_s = F.log_softmax(logits_s / tau, dim=1)
    log_p_t = F.log_softmax(logits_t / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)  # (B,)
    return (tau.squeeze(1) ** 2 * kl).mean()


def probability_shift(logits_t: Tensor, y: Tensor) -> Tensor:
    """Knowledge adjustment by probability shift: swap the top class and the label.

    Where the teacher's top class is not the label, the logits (hence the
    softened probabilities at any temperature) of the two classes are swapped,
    so the label becomes the maximum and the rest of the ranking is kept.
    ``(B, K), (B,) -> (B, K)``; a new tensor.

    Reference: ``wen2021preparing`` (KA, PS); survey 2.1.
    """
    _check_labels(logits_t, y)
    rows = torch.arange(len(y), device=y.device)
    top = logits_t.argmax(dim=1)
    out = logits_t.clone()
    out[rows, top] = logits_t[rows, y]
    out[rows, y] = logits_t[rows, top]
    return out


def pad_loss(
    out_s: Tensor, out_t: Tensor, log_var: Tensor, eps: float = 1e-5
) -> Tensor:
    """Prime-aware adaptive distillation: a Gaussian likelihood with learned variance.

    ``mean_{b,d} [ (s_bd - t_bd)^2 / (sigma_bd^2 + eps) + log sigma_bd^2 ]``
    with ``log_var = log sigma^2`` either one per sample and dimension
    ``(B, D)`` (the distiller's form) or one per sample ``(B,)``: twice the
    negative log-likelihood of the teacher's output under ``N(student's output,
    sigma^2)``, constants dropped. A sample with a small learned variance (a
    "prime" sample) weighs more. ``eps`` (1e-5, as in the public PAD code)
    bounds the weight ``1 / sigma^2`` so that a variance driven towards zero
    cannot blow the loss up. Shapes ``(B, D), (B, D), (B, D) or (B,) -> ()``.

    Reference: ``zhang2020prime`` (no public code from the authors); survey 2.1.
    """
    _check_logits("out_s", out_s, "out_t", out_t)
    if log_var.shape == out_s.shape[:1]:
        log_var = log_var[:, None]  # (B,) -> (B, 1): one variance per sample
    elif log_var.shape != out_s.shape:
        raise ValueError(
            f"log_var {tuple(log_var.shape)} must be (B,) or (B, D) for outputs "
            f"{tuple(out_s.shape)}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    sq = (out_s - out_t) ** 2  # (B, D)
    return (sq / (torch.exp(log_var) + eps) + log_var).mean()


def triplet_kd_loss(
    logits_s: Tensor, logits_t: Tensor, logits_neg: Tensor, margin: float = 5.0
) -> Tensor:
    """Triplet loss for KD: the student near the teacher, far from other classes.

    ``mean_b max(0, ||t_b - s_b|| - ||t_b - n_b|| + margin)``: anchor the
    teacher's logits of sample b, positive the student's logits of the same
    sample, negative the student's logits of a sample of another class;
    Euclidean distances as ``torch.nn.TripletMarginLoss`` (``p=2``,
    ``eps=1e-6`` added to the difference), the authors' choice, margin 5.
    Shapes ``(B, K)`` three times ``-> ()``.

    Reference: ``oki2020triplet`` (authors' code, i13abe/Triplet-Loss-for-
    Knowledge-Distillation); survey 2.1.
    """
    _check_logits("logits_s", logits_s, "logits_t", logits_t)
    _check_logits("logits_s", logits_s, "logits_neg", logits_neg)
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    d_pos = F.pairwise_distance(logits_t, logits_s, p=2.0, eps=1e-6)  # (B,)
    d_neg = F.pairwise_distance(logits_t, logits_neg, p=2.0, eps=1e-6)
    return F.relu(d_pos - d_neg + margin).mean()


def prediction_entropy(logits: Tensor) -> Tensor:
    """Entropy of ``softmax(logits)`` per sample, in nats: ``(B, K) -> (B,)``."""
    log_p = F.log_softmax(logits, dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


def unix_mixing_weights(n: int, b: int, w: float = 10.0) -> Tensor:
    """UNIX's mixing ramp over samples ranked by uncertainty: ``(n,)`` in (0, 1).

    ``sigmoid(w * (r / n - (2b - 1) / (2n)))`` for rank ``r = 0 .. n-1`` (0 is
    the most uncertain): about 0 for the ``b`` most uncertain samples (kept
    nearly clean), rising to 1 after them (mixed with a random partner); ``w``
    sets how sharp the step is. Multiplied by the mixup coefficient
    ``lambda ~ Beta(1, 1)`` it is each sample's share of its partner.

    Reference: ``xu2020computation`` (authors' code, xuguodong03/UNIXKD);
    survey 2.1.
    """
    if not 0 <= b <= n:
        raise ValueError(f"b must be in [0, n={n}], got {b}")
    r = torch.arange(n, dtype=torch.float32)
    return torch.sigmoid(w * (r / n - (2 * b - 1) / (2 * n)))


def mixup_cross_entropy(
    logits: Tensor, y_a: Tensor, y_b: Tensor, coef: Tensor
) -> Tensor:
    """Cross-entropy with mixed labels: ``mean_b [(1 - c_b) CE(y_a) + c_b CE(y_b)]``.

    ``coef`` is each sample's share of its partner ``y_b``. Shapes
    ``(B, K), (B,), (B,), (B,) -> ()``.

    Reference: ``xu2020computation``; survey 2.1.
    """
    _check_labels(logits, y_a)
    _check_labels(logits, y_b)
    if coef.shape != y_a.shape:
        raise ValueError(f"coef {tuple(coef.shape)} must be (B,) like the labels")
    ce_a = F.cross_entropy(logits, y_a, reduction="none")
    ce_b = F.cross_entropy(logits, y_b, reduction="none")
    return ((1 - coef) * ce_a + coef * ce_b).mean()
