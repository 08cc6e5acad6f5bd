"""Losses on knowledge extracted from feature maps: survey section 2.2.2.

The losses of :mod:`kdutils.distillers.extracting`. Each compares a *summary*
of feature maps rather than the maps themselves (survey Eq. (3)): attention
maps (AT), flow matrices between two layers (FSP), the distribution of channel
activations (NST), channel-weighted normalised maps (AFD), attention-weighted
matches over all layer pairs (AFM) and pooled pyramids of fused features
(ReviewKD's HCL); and, for :mod:`~kdutils.distillers.extracting_guided`,
TOFD's fit of task-oriented features with its orthogonal penalty, and MGD's
channel reduction of matched teacher channels with its partial L2 distance.

Feature lists are ``feats_s`` / ``feats_t``: one ``(B, C, H, W)`` tensor per
layer, student first. Where a loss pools, the larger map is adaptive-average
pooled to the smaller one's size, as in the reference code; a mismatch that
pooling cannot resolve raises ``ValueError`` naming the pair and the shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "attention_map",
    "at_loss",
    "fsp_matrix",
    "fsp_loss",
    "nst_loss",
    "afd_loss",
    "afm_loss",
    "hcl_loss",
    "tofd_kd_loss",
    "tofd_feature_loss",
    "orthogonal_loss",
    "overhaul_margin",
    "partial_l2_loss",
    "mgd_reduce",
    "mgd_loss",
]


def _check_pairs(
    feats_s: Sequence[Tensor], feats_t: Sequence[Tensor], what: str
) -> None:
    """Same number of 4-D maps on each side, with equal batch sizes."""
    if len(feats_s) != len(feats_t):
        raise ValueError(
            f"{what}: {len(feats_s)} student maps but {len(feats_t)} teacher maps"
        )
    if not feats_s:
        raise ValueError(f"{what}: no feature maps given")
    for i, (f_s, f_t) in enumerate(zip(feats_s, feats_t, strict=True)):
        if f_s.dim() != 4 or f_t.dim() != 4 or f_s.shape[0] != f_t.shape[0]:
            raise ValueError(
                f"{what}: pair {i} must be (B, C, H, W) maps with one batch size, "
                f"got student {tuple(f_s.shape)} and teacher {tuple(f_t.shape)}"
            )


def _pool_to_smaller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool whichever of ``a``, ``b`` is spatially larger."""
    (ha, wa), (hb, wb) = a.shape[2:], b.shape[2:]
    if (ha, wa) == (hb, wb):
        return a, b
    if ha >= hb and wa >= wb:
        return F.adaptive_avg_pool2d(a, (hb, wb)), b
    if hb >= ha and wb >= wa:
        return a, F.adaptive_avg_pool2d(b, (ha, wa))
    raise ValueError(
        f"neither map is larger in both dimensions: {tuple(a.shape)} and "
        f"{tuple(b.shape)}; pooling would have to grow one of them"
    )


def attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """Activation-based attention map: ``normalize(mean_c f^p)``, ``(B, C, H, W) -> (B, H*W)``.

    L2-normalised per sample (Zagoruyko & Komodakis 2017, ``zagoruyko2017paying``).
    Like the authors' code, ``f^p`` is a plain power: use post-ReLU maps, or an
    even ``p``, so that it means ``|f|^p``.
    """
    return F.normalize(feat.pow(p).mean(1).flatten(1), dim=1)


def at_loss(
    feats_s: Sequence[Tensor], feats_t: Sequence[Tensor], p: float = 2.0
) -> Tensor:
    """Attention transfer: ``sum_pairs mean_(b, hw) (Q_S - Q_T)^2``, ``Q = attention_map(f, p)``.

    Maps ``(B, C, H, W)``; channel counts may differ; the larger map is pooled
    to the smaller. The reduction of the authors' code (a mean over batch and
    positions per layer, summed over layers) and of RepDistiller, which adds
    the pooling. Reference ``zagoruyko2017paying``, survey section 2.2.2.
    """
    _check_pairs(feats_s, feats_t, "at_loss")
    total = 0.0
    for f_s, f_t in zip(feats_s, feats_t, strict=True):
        f_s, f_t = _pool_to_smaller(f_s, f_t)
        total = total + (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()
    return total


def fsp_matrix(first: Tensor, second: Tensor) -> Tensor:
    """Flow of solution procedure: ``G_ij = mean_(h, w) F1_i F2_j``, ``-> (B, C1, C2)``.

    ``first`` ``(B, C1, H1, W1)`` and ``second`` ``(B, C2, H2, W2)``; the larger
    map is pooled to the smaller (RepDistiller). Reference ``yim2017gift``.
    """
    first, second = _pool_to_smaller(first, second)
    hw = first.shape[2] * first.shape[3]
    return first.flatten(2) @ second.flatten(2).transpose(1, 2) / hw


def fsp_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> Tensor:
    """FSP loss: ``sum_i mean (G_S(f_i, f_{i+1}) - G_T(f_i, f_{i+1}))^2`` over consecutive maps.

    ``feats_s`` and ``feats_t`` list the same number (>= 2) of ``(B, C, H, W)``
    maps with equal channel counts layer by layer; the mean is over batch and
    matrix entries (RepDistiller's reduction; the paper sums the entries).
    Reference ``yim2017gift``, survey section 2.2.2.
    """
    _check_pairs(feats_s, feats_t, "fsp_loss")
    if len(feats_s) < 2:
        raise ValueError("fsp_loss needs at least two consecutive feature maps")
    for i, (f_s, f_t) in enumerate(zip(feats_s, feats_t, strict=True)):
        if f_s.shape[1] != f_t.shape[1]:
            raise ValueError(
                f"fsp_loss: map {i} has {f_s.shape[1]} student channels but "
                f"{f_t.shape[1]} teacher channels (student {tuple(f_s.shape)}, "
                f"teacher {tuple(f_t.shape)}); FSP matrices must have one size"
            )
    total = 0.0
    for i in range(len(feats_s) - 1):
        g_s = fsp_matrix(feats_s[i], feats_s[i + 1])
        g_t = fsp_matrix(feats_t[i], feats_t[i + 1])
        total = total + (g_s - g_t).pow(2).mean()
    return total


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """``mean_(batch, i, j) (a_i . b_j)^2`` for ``a`` ``(B, N, D)``, ``b`` ``(B, M, D)``."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> Tensor:
    """Neuron selectivity transfer: ``sum_pairs MMD^2`` with ``k(a, b) = (a . b)^2``.

    Per pair, the larger map is pooled to the smaller; each channel's spatial
    vector is L2-normalised; ``MMD^2 = mean k(t, t') + mean k(s, s') - 2 mean
    k(s, t)``, each mean over the batch and all channel pairs. Channel counts
    may differ. RepDistiller's form of the authors' loss (which drops the
    constant teacher term). Reference ``huang2017like``.
    """
    _check_pairs(feats_s, feats_t, "nst_loss")
    total = 0.0
    for f_s, f_t in zip(feats_s, feats_t, strict=True):
        f_s, f_t = _pool_to_smaller(f_s, f_t)
        s = F.normalize(f_s.flatten(2), dim=2)  # (B, C_s, HW)
        t = F.normalize(f_t.flatten(2), dim=2)  # (B, C_t, HW)
        total = total + (
            _poly_kernel_mean(t, t)
            + _poly_kernel_mean(s, s)
            - 2 * _poly_kernel_mean(s, t)
        )
    return total


def afd_loss(
    feats_s: Sequence[Tensor],
    feats_t: Sequence[Tensor],
    rhos: Sequence[Tensor],
    eps: float = 1e-6,
) -> Tensor:
    """Attentive feature distillation: ``mean_pairs mean_b sum_c rho_c mean_hw (f^S_c - f^T_c)^2``.

    Maps ``(B, C, H, W)`` of equal shape per pair; each channel map divided by
    its L2 norm (+ ``eps``); ``rhos`` ``(B, C)`` are the channel weights (rows
    summing to 1, from the Distiller's attention). The form of the
    Knowledge-Distillation-Zoo implementation (the survey names no code).
    Reference ``wang2020pay``, survey section 2.2.2.
    """
    _check_pairs(feats_s, feats_t, "afd_loss")
    if len(rhos) != len(feats_s):
        raise ValueError(f"afd_loss: {len(rhos)} weight rows for {len(feats_s)} pairs")
    total = 0.0
    for i, (f_s, f_t, rho) in enumerate(zip(feats_s, feats_t, rhos, strict=True)):
        if f_s.shape != f_t.shape or rho.shape != f_s.shape[:2]:
            raise ValueError(
                f"afd_loss: pair {i} needs equal student and teacher shapes and "
                f"(B, C) weights, got {tuple(f_s.shape)}, {tuple(f_t.shape)} and "
                f"{tuple(rho.shape)}"
            )
        f_s = f_s / (f_s.norm(dim=(2, 3), keepdim=True) + eps)
        f_t = f_t / (f_t.norm(dim=(2, 3), keepdim=True) + eps)
        per_channel = (f_s - f_t).pow(2).mean(dim=(2, 3))  # (B, C)
        total = total + (rho * per_channel).sum(1).mean()
    return total / len(feats_s)


def afm_loss(
    values_s: Sequence[Tensor], values_t: Sequence[Tensor], att: Tensor
) -> Tensor:
    """Attention-based feature matching: ``sum_t mean_b sum_s a_bts mean_hw (v^S_bs - v^T_bt)^2``.

    ``values_t[t]`` ``(B, HW_t)`` is teacher layer t's normalised attention map;
    ``values_s[t]`` ``(B, S, HW_t)`` holds every student layer's map pooled to
    that size; ``att`` ``(B, T, S)`` the attention of teacher layer t over the
    student layers (rows sum to 1). Reference ``ji2021show``, survey 2.2.2.
    """
    if len(values_s) != len(values_t) or att.shape[1] != len(values_t):
        raise ValueError(
            f"afm_loss: {len(values_s)} student groups, {len(values_t)} teacher "
            f"maps and attention {tuple(att.shape)} must agree on T"
        )
    total = 0.0
    for i, (v_s, v_t) in enumerate(zip(values_s, values_t, strict=True)):
        if v_s.shape[::2] != v_t.shape or v_s.shape[:2] != att.shape[::2]:
            raise ValueError(
                f"afm_loss: teacher layer {i}: student maps {tuple(v_s.shape)}, "
                f"teacher map {tuple(v_t.shape)}, attention {tuple(att.shape)}"
            )
        diff = (v_s - v_t.unsqueeze(1)).pow(2).mean(2)  # (B, S)
        total = total + (diff * att[:, i]).sum(1).mean()
    return total


def hcl_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> Tensor:
    """Hierarchical context loss: ``sum_pairs sum_l w_l MSE(pool_l f_S, pool_l f_T) / sum_l w_l``.

    Levels: the full map (weight 1), then average pools to 4x4, 2x2, 1x1 that
    are smaller than the map (weights 1/2, 1/4, 1/8 in that order). Maps of
    equal shape per pair (the fused student features and the teacher's).
    Reference ``chen2021distilling`` (ReviewKD), survey section 2.2.2.
    """
    _check_pairs(feats_s, feats_t, "hcl_loss")
    total = 0.0
    for i, (f_s, f_t) in enumerate(zip(feats_s, feats_t, strict=True)):
        if f_s.shape != f_t.shape:
            raise ValueError(
                f"hcl_loss: pair {i} has student {tuple(f_s.shape)} and teacher "
                f"{tuple(f_t.shape)}; ReviewKD's fusion must produce the teacher's shape"
            )
        loss, weight, weights = F.mse_loss(f_s, f_t), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= f_s.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(
                F.adaptive_avg_pool2d(f_s, level), F.adaptive_avg_pool2d(f_t, level)
            )
            weights += weight
        total = total + loss / weights
    return total


def tofd_kd_loss(logits_s: Tensor, logits_t: Tensor, T: float) -> Tensor:
    """TOFD's logit term: soft cross-entropy ``-mean_b sum_k softmax(t/T)_k log softmax(s/T)_k``.

    No ``T^2`` factor and the teacher's entropy included (the authors' code's
    ``CrossEntropy``): the KL's gradient, a value that does not vanish for
    equal logits. Shapes ``(B, K), (B, K) -> ()``. Reference ``zhang2020task``.
    """
    if T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}")
    if logits_s.dim() != 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            "tofd_kd_loss: expected two (B, K) logit tensors of one shape, got "
            f"{tuple(logits_s.shape)} and {tuple(logits_t.shape)}"
        )
    q = F.softmax(logits_t / T, dim=1)
    return -(q * F.log_softmax(logits_s / T, dim=1)).sum(1).mean()


def tofd_feature_loss(embs_s: Sequence[Tensor], embs_t: Sequence[Tensor]) -> Tensor:
    """TOFD's feature term: ``sum_i ||e_S^i - e_T^i||_2`` over the auxiliary classifiers.

    ``embs_s[i]``, ``embs_t[i]`` ``(B, D)``: the student's task-oriented
    feature (after its resizing layer) and the teacher's. The norm of the whole
    batch's difference, neither squared nor averaged (``torch.dist`` in the
    authors' code). Reference ``zhang2020task``, survey section 2.2.2.
    """
    if len(embs_s) != len(embs_t) or not embs_s:
        raise ValueError(
            f"tofd_feature_loss: {len(embs_s)} student and {len(embs_t)} teacher "
            "features; give one pair per auxiliary classifier"
        )
    total = 0.0
    for i, (e_s, e_t) in enumerate(zip(embs_s, embs_t, strict=True)):
        if e_s.dim() != 2 or e_s.shape != e_t.shape:
            raise ValueError(
                f"tofd_feature_loss: pair {i} must be two (B, D) tensors of one "
                f"shape, got {tuple(e_s.shape)} and {tuple(e_t.shape)}"
            )
        total = total + (e_s - e_t).flatten().norm()
    return total


def orthogonal_loss(weights: Sequence[Tensor]) -> Tensor:
    """TOFD's orthogonal loss: ``sum_W ||W W^T - I||_F + ||W^T W - I||_F``.

    ``weights``: the ``(D_out, D_in)`` matrices of the feature-resizing layers;
    zero exactly when ``W`` is square and orthogonal. Not squared (the
    authors' ``distill.py``, which uses ``torch.dist``; their unused
    ``get_orth_loss`` squares it). Reference ``zhang2020task``.
    """
    if not weights or any(w.dim() != 2 for w in weights):
        raise ValueError("orthogonal_loss: give one or more 2-D weight matrices")
    total = 0.0
    for w in weights:
        eye_out = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        eye_in = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
        total = total + (w @ w.T - eye_out).norm() + (w.T @ w - eye_in).norm()
    return total


def overhaul_margin(bn_weight: Tensor, bn_bias: Tensor) -> Tensor:
    """Per channel, the mean of the negative responses: ``E[x | x < 0]``, ``x ~ N(beta, gamma^2)``.

    From the affine parameters of the batch norm before a ReLU (``gamma`` =
    ``bn_weight``, ``beta`` = ``bn_bias``): ``beta - |gamma| phi(beta/|gamma|)
    / Phi(-beta/|gamma|)``, or ``-3 |gamma|`` where ``Phi(-beta/|gamma|) <=
    0.001``. Heo et al.'s margin (``heo2019comprehensive``), as MGD's code
    computes it (``get_margin_from_BN``), in float64. Shapes ``(C,) -> (C,)``.
    """
    if bn_weight.shape != bn_bias.shape or bn_weight.dim() != 1:
        raise ValueError(
            "overhaul_margin: weight and bias must be two (C,) tensors, got "
            f"{tuple(bn_weight.shape)} and {tuple(bn_bias.shape)}"
        )
    s, m = bn_weight.double().abs(), bn_bias.double()
    cdf = torch.special.ndtr(-m / s)
    pdf = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    margin = torch.where(cdf > 0.001, m - s * pdf / cdf, -3 * s)
    return margin.to(bn_weight.dtype)


def partial_l2_loss(feat_s: Tensor, target: Tensor, margin: Tensor) -> Tensor:
    """Heo et al.'s partial L2: ``sum (s - t')^2 [s > t' or t' > 0]``, ``t' = max(t, m)``.

    ``feat_s``, ``target`` ``(B, C, H, W)`` pre-ReLU maps; ``margin``
    broadcastable to them (``(1, C, 1, 1)``). Where the teacher is off
    (``t' = m < 0``) a student response below the margin costs nothing. A sum
    over every element (MGD's ``distillation_loss``).
    """
    if feat_s.shape != target.shape:
        raise ValueError(
            f"partial_l2_loss: student {tuple(feat_s.shape)} and target "
            f"{tuple(target.shape)} differ"
        )
    target = torch.max(target, margin)
    mask = ((feat_s > target) | (target > 0)).to(feat_s.dtype)
    return ((feat_s - target).pow(2) * mask).sum()


def mgd_reduce(
    feat_t: Tensor, margin: Tensor, guided: Tensor, n_s: int, reducer: str = "amp"
) -> tuple[Tensor, Tensor]:
    """MGD's channel reduction: the teacher channels matched to each student channel, reduced to one.

    ``feat_t`` ``(B, C_t, H, W)``, ``margin`` ``(C_t,)``; ``guided`` ``(G *
    n_s,)`` lists the teacher channel matched to student channel ``c`` in
    group ``g`` at ``g * n_s + c`` (the assignment). Per student channel the
    ``G`` matched maps become one: ``"amp"`` keeps, at each position, the
    value of largest magnitude (margin: their mean); ``"sp"`` the maximum
    (margin: the maximum); ``"rd"`` one at random per position (margin: one
    at random per channel); ``"sm"`` (sparse matching, ``G = 1``) the one
    matched channel. Returns ``(B, n_s, H, W)`` and ``(1, n_s, 1, 1)``.
    Reference ``yue2020matching`` (the reducers of the authors' code).
    """
    if reducer not in ("amp", "sp", "rd", "sm"):
        raise ValueError(f"reducer must be amp, sp, rd or sm, got {reducer!r}")
    if n_s < 1 or guided.dim() != 1 or len(guided) % n_s:
        raise ValueError(
            f"mgd_reduce: {len(guided)} matched channels are not groups of {n_s}"
        )
    b, _, h, w = feat_t.shape
    groups = len(guided) // n_s
    if reducer == "sm" and groups != 1:
        raise ValueError("mgd_reduce: sparse matching keeps one channel per student")
    t = feat_t[:, guided].view(b, groups, n_s, h, w)
    m = margin[guided].view(groups, n_s)
    if reducer in ("amp", "sm"):
        pick = t.abs().argmax(1, keepdim=True)  # (B, 1, n_s, H, W)
        t, m = t.gather(1, pick).squeeze(1), m.mean(0)
    elif reducer == "sp":
        t, m = t.max(1).values, m.max(0).values
    else:
        pick = torch.randint(0, groups, (b, 1, n_s, h, w), device=t.device)
        t = t.gather(1, pick).squeeze(1)
        m = m.gather(0, torch.randint(0, groups, (1, n_s), device=m.device))[0]
    return t, m.view(1, n_s, 1, 1)


def mgd_loss(
    feats_s: Sequence[Tensor],
    feats_t: Sequence[Tensor],
    margins: Sequence[Tensor],
    guided: Sequence[Tensor],
    reducer: str = "amp",
) -> Tensor:
    """Matching guided distillation: ``sum_i partial_l2(S_i, reduce(T_i)) / 2^(n-1-i) / B``.

    ``feats_s`` the student's pre-ReLU maps after MGD's batch norm, ``(B,
    n_s, H, W)``; ``feats_t`` the teacher's pre-ReLU maps ``(B, C_t, H, W)``
    (``C_t >= n_s``), ``margins`` their :func:`overhaul_margin`; ``guided``
    the assignment of each stage (:func:`mgd_reduce`). Shallower stages are
    divided by powers of 2 (the deepest by 1), the sum by the batch size (the
    authors' code; their extra factor is the Distiller's weight).
    Reference ``yue2020matching``, survey section 2.2.2.
    """
    _check_pairs(feats_s, feats_t, "mgd_loss")
    if not len(margins) == len(guided) == len(feats_s):
        raise ValueError(
            f"mgd_loss: {len(feats_s)} pairs, {len(margins)} margins and "
            f"{len(guided)} assignments must agree"
        )
    n, total = len(feats_s), 0.0
    for i, (f_s, f_t, m, g) in enumerate(
        zip(feats_s, feats_t, margins, guided, strict=True)
    ):
        if f_s.shape[2:] != f_t.shape[2:]:
            raise ValueError(
                f"mgd_loss: pair {i} has student {tuple(f_s.shape)} and teacher "
                f"{tuple(f_t.shape)}; MGD compares maps of one spatial size"
            )
        target, margin = mgd_reduce(f_t, m, g, f_s.shape[1], reducer)
        loss = partial_l2_loss(f_s, target.detach(), margin.detach())
        total = total + loss / 2.0 ** (n - 1 - i)
    return total / feats_s[0].shape[0]
