"""Losses on the structure between samples: survey section 2.2.3, Eq. (4).

The losses of :mod:`kdutils.distillers.relation`. Every function here
compares a relation ``M`` computed among the samples of a batch (distances,
angles, similarities, a graph, class centres) between the student and the
teacher, ``L_KD = DF(M(f_S^1, f_S^2, ...), M(f_T^1, f_T^2, ...))``. Because
only relations are compared, the student's and teacher's feature widths may
differ; the batch sizes must agree. CRD's relations are between a sample and
a memory of embeddings for the whole training set: its loss and memory are
the second module of the family, :mod:`kdutils.losses.relation_contrastive`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "rkd_distance_loss",
    "rkd_angle_loss",
    "rkd_loss",
    "sp_loss",
    "pkt_loss",
    "cc_loss",
    "irg_vertex_loss",
    "irg_edge_loss",
    "irg_transform_loss",
    "category_structure_losses",
]


def _check_pair(a: Tensor, b: Tensor, what: str, dims: int | None = 2) -> None:
    """Same batch size (and rank ``dims``), or a ValueError naming both shapes."""
    if dims is not None and (a.dim() != dims or b.dim() != dims):
        raise ValueError(
            f"{what}: expected {dims}-d tensors, got student {tuple(a.shape)} "
            f"and teacher {tuple(b.shape)}"
        )
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{what}: batch sizes differ, student {tuple(a.shape)} "
            f"vs teacher {tuple(b.shape)}"
        )
    if a.shape[0] < 2:
        raise ValueError(f"{what}: relations need a batch of at least 2 samples")


def _pdist(e: Tensor, squared: bool = False, eps: float = 1e-12) -> Tensor:
    """Pairwise Euclidean distances ``(B, D) -> (B, B)``, zero diagonal.

    As in the RKD authors' code: ``|a|^2 + |b|^2 - 2ab`` clamped at ``eps``
    before the square root (so distinct rows are never exactly 0 apart).
    """
    sq = e.pow(2).sum(1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps)
    if not squared:
        d = d.sqrt()
    return d * (1 - torch.eye(len(e), dtype=e.dtype, device=e.device))


def rkd_distance_loss(emb_s: Tensor, emb_t: Tensor) -> Tensor:
    """RKD's distance-wise term: smooth L1 between normalised distance matrices.

    ``psi(i, j) = |e_i - e_j| / mu`` with ``mu`` the mean over the non-zero
    entries of the ``(B, B)`` matrix; smooth L1 averaged over all B^2 entries.
    Shapes ``(B, Ds), (B, Dt) -> ()``. Reference: ``park2019relational``; survey 2.2.3.
    """
    _check_pair(emb_s, emb_t, "rkd_distance_loss")
    d_t = _pdist(emb_t)
    d_t = d_t / d_t[d_t > 0].mean()
    d_s = _pdist(emb_s)
    d_s = d_s / d_s[d_s > 0].mean()
    return F.smooth_l1_loss(d_s, d_t)


def _angles(e: Tensor) -> Tensor:
    # diff[i, j] = e_j - e_i, unit length: (B, B, D); cos at vertex i: (B, B, B)
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2))


def rkd_angle_loss(emb_s: Tensor, emb_t: Tensor) -> Tensor:
    """RKD's angle-wise term: smooth L1 between the cosines of all triplet angles.

    ``psi(i, j, k) = <(e_j - e_i)/|e_j - e_i|, (e_k - e_i)/|e_k - e_i|>`` for
    all B^3 triplets (degenerate ones, j = i or k = i, are 0); smooth L1
    averaged over them. Shapes ``(B, Ds), (B, Dt) -> ()``.
    Reference: ``park2019relational``; survey 2.2.3.
    """
    _check_pair(emb_s, emb_t, "rkd_angle_loss")
    return F.smooth_l1_loss(_angles(emb_s), _angles(emb_t))


def rkd_loss(
    emb_s: Tensor,
    emb_t: Tensor,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
) -> Tensor:
    """Relational KD: ``distance_weight * L_dist + angle_weight * L_angle``.

    See :func:`rkd_distance_loss` and :func:`rkd_angle_loss`. The weights are
    the paper's (25 and 50, also RepDistiller's). Shapes ``(B, Ds), (B, Dt)
    -> ()``; the loss is invariant to scaling either embedding.
    Reference: ``park2019relational``; survey 2.2.3.
    """
    return distance_weight * rkd_distance_loss(
        emb_s, emb_t
    ) + angle_weight * rkd_angle_loss(emb_s, emb_t)


def _as_list(feats: Tensor | Sequence[Tensor]) -> list[Tensor]:
    return [feats] if isinstance(feats, Tensor) else list(feats)


def sp_loss(
    feats_s: Tensor | Sequence[Tensor], feats_t: Tensor | Sequence[Tensor]
) -> Tensor:
    """Similarity-preserving KD: batch Gram matrices of student and teacher.

    Per pair: ``G = f f^T`` of the flattened ``(B, C*H*W)`` features, each row
    L2-normalised; ``|G_t - G_s|_F^2 / B^2``; summed over pairs. A pair may
    differ in channels and size (G is ``(B, B)``). Reference:
    ``tung2019similarity``; survey 2.2.3.
    """
    fs, ft = _as_list(feats_s), _as_list(feats_t)
    if len(fs) != len(ft):
        raise ValueError(
            f"sp_loss: {len(fs)} student features vs {len(ft)} teacher features"
        )
    total = fs[0].new_zeros(())
    for i, (s, t) in enumerate(zip(fs, ft, strict=True)):
        _check_pair(s, t, f"sp_loss pair {i}", dims=None)
        b = s.shape[0]
        g_s = F.normalize(s.reshape(b, -1) @ s.reshape(b, -1).t(), p=2, dim=1)
        g_t = F.normalize(t.reshape(b, -1) @ t.reshape(b, -1).t(), p=2, dim=1)
        total = total + (g_t - g_s).pow(2).sum() / b**2
    return total


def pkt_loss(emb_s: Tensor, emb_t: Tensor, eps: float = 1e-7) -> Tensor:
    """Probabilistic knowledge transfer: KL between cosine-kernel affinities.

    Rows L2-normalised (``x / (|x| + eps)``), cosine similarities mapped to
    ``(S + 1) / 2``, each row divided by its sum into a distribution; the loss
    is ``mean_ij p_t(ij) log((p_t(ij) + eps) / (p_s(ij) + eps))`` over all B^2
    entries, as the authors' code computes it. Shapes ``(B, Ds), (B, Dt) -> ()``.
    Reference: ``passalis2018learning``; not in the survey (a RepDistiller baseline).
    """
    _check_pair(emb_s, emb_t, "pkt_loss")

    def affinity(e: Tensor) -> Tensor:
        e = e / (e.norm(dim=1, keepdim=True) + eps)
        e = torch.nan_to_num(e, nan=0.0)
        k = (e @ e.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)

    p_s, p_t = affinity(emb_s), affinity(emb_t)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def cc_loss(
    emb_s: Tensor,
    emb_t: Tensor,
    form: str = "benchmark",
    gamma: float = 0.4,
    order: int = 2,
) -> Tensor:
    """Correlation congruence between student and teacher embeddings.

    ``form="benchmark"`` (default): the form in RepDistiller, which says it
    restructures code the CC authors shared: with ``delta = |e_s - e_t|``
    (same width), ``mean_i <delta_i, delta_{i+1}>`` over consecutive samples of
    the batch. ``form="rbf"``: the paper's correlation matrices, a Gaussian RBF
    kernel on L2-normalised embeddings approximated by its Taylor series,
    ``k(x, y) = sum_{p<=order} exp(-2 gamma) (2 gamma)^p / p! (x.y)^p``, and the
    loss ``|K_s - K_t|_F^2 / B^2`` (gamma 0.4, order 2 as in common ports).
    Shapes ``(B, D), (B, D) -> ()``. Reference: ``peng2019correlation``; not
    in the survey (a RepDistiller baseline).
    """
    _check_pair(emb_s, emb_t, "cc_loss")
    if form == "benchmark":
        if emb_s.shape != emb_t.shape:
            raise ValueError(
                "cc_loss (benchmark form) compares embeddings element-wise: "
                f"student {tuple(emb_s.shape)} vs teacher {tuple(emb_t.shape)}"
            )
        delta = (emb_s - emb_t).abs()
        return (delta[:-1] * delta[1:]).sum(1).mean()
    if form == "rbf":

        def corr(e: Tensor) -> Tensor:
            e = F.normalize(e, p=2, dim=1)
            sim = e @ e.t()
            return sum(
                math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim**p
                for p in range(order + 1)
            )

        return (corr(emb_s) - corr(emb_t)).pow(2).mean()
    raise ValueError(f"cc_loss: form must be 'benchmark' or 'rbf', got {form!r}")


def _euclidean_loss(a: Tensor, b: Tensor, num: int) -> Tensor:
    """Caffe's EuclideanLoss, used by the IRG authors: ``sum (a - b)^2 / (2 num)``."""
    return (a - b).pow(2).sum() / (2 * num)


def _max_normalised(d: Tensor) -> Tensor:
    return d / d.max().clamp_min(1e-12)


def irg_vertex_loss(logits_s: Tensor, logits_t: Tensor) -> Tensor:
    """IRG's vertex term at the logits: ``sum |l_s - l_t|^2 / (2B)``.

    Shapes ``(B, K), (B, K) -> ()``. Reference: ``liu2019knowledge``; survey 2.2.3.
    """
    _check_pair(logits_s, logits_t, "irg_vertex_loss")
    if logits_s.shape != logits_t.shape:
        raise ValueError(
            f"irg_vertex_loss: logits {tuple(logits_s.shape)} vs "
            f"{tuple(logits_t.shape)}"
        )
    return _euclidean_loss(logits_s, logits_t, len(logits_s))


def irg_edge_loss(emb_s: Tensor, emb_t: Tensor) -> Tensor:
    """IRG's edge term: max-normalised squared-distance graphs of the batch.

    ``A_ij = |e_i - e_j|^2 / max_ij |e_i - e_j|^2`` (a ``(B, B)`` matrix) for
    each network; the authors' Caffe loss ``sum (A_s - A_t)^2 / (2B)``. Shapes
    ``(B, Ds), (B, Dt) -> ()``. Reference: ``liu2019knowledge``; survey 2.2.3.
    """
    _check_pair(emb_s, emb_t, "irg_edge_loss")
    a_s = _max_normalised(_pdist(emb_s, squared=True))
    a_t = _max_normalised(_pdist(emb_t, squared=True))
    return _euclidean_loss(a_s, a_t, len(emb_s))


def _transform(f_in: Tensor, f_out: Tensor) -> Tensor:
    """Per-sample squared distance between a layer's pooled input and output.

    Both maps are globally average-pooled to ``(B, C)``; a wider output is
    brought to the input's width by averaging adjacent channel pairs (as
    common PyTorch ports of IRG do). Returns ``(B,)``, max-normalised.
    """
    a = f_in.mean((2, 3)) if f_in.dim() == 4 else f_in
    b = f_out.mean((2, 3)) if f_out.dim() == 4 else f_out
    while b.shape[1] > a.shape[1] and b.shape[1] % 2 == 0:
        b = (b[:, 0::2] + b[:, 1::2]) / 2
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"irg_transform_loss: cannot match widths {tuple(f_in.shape)} -> "
            f"{tuple(f_out.shape)}"
        )
    return _max_normalised((a - b).pow(2).sum(1))


def irg_transform_loss(feats_s: Sequence[Tensor], feats_t: Sequence[Tensor]) -> Tensor:
    """IRG transformation: how each net moves every sample between its layers.

    For consecutive feature maps ``f^l, f^{l+1}`` of one network, the vector of
    per-sample distances ``|pool(f^{l+1}) - pool(f^l)|^2``, max-normalised (see
    ``_transform``); per consecutive pair, the authors' Caffe loss
    ``sum_b (v_s - v_t)^2 / 2``; summed over pairs. Student and teacher give
    the same number of maps (widths may differ). Reference:
    ``liu2019knowledge``; survey 2.2.3.
    """
    fs, ft = list(feats_s), list(feats_t)
    if len(fs) != len(ft) or len(fs) < 2:
        raise ValueError(
            "irg_transform_loss: needs the same number (>= 2) of student and "
            f"teacher feature maps, got {len(fs)} and {len(ft)}"
        )
    total = fs[0].new_zeros(())
    for i in range(len(fs) - 1):
        _check_pair(fs[i], ft[i], f"irg_transform_loss map {i}", dims=None)
        v_s = _transform(fs[i], fs[i + 1])
        v_t = _transform(ft[i], ft[i + 1])
        total = total + _euclidean_loss(v_s, v_t, 1)
    return total


def category_structure_losses(
    emb_s: Tensor, emb_t: Tensor, labels: Tensor
) -> tuple[Tensor, Tensor]:
    """Category structure (Chen et al. 2020c): intra- and inter-class relations.

    Class centres ``c_k`` are the batch means of each class's embeddings.
    Intra-class structure: each sample's distance to its class centre,
    ``|e_i - c_{y_i}|``, normalised by the batch mean of the non-zero
    distances; inter-class structure: the distances between the centres of the
    classes present, normalised by their mean. Each is compared between
    student and teacher with a smooth L1 averaged over entries, as RKD does.
    Returns ``(intra, inter)``; shapes ``(B, Ds), (B, Dt), (B,) -> (), ()``.
    This is our reading of the paper (no authors' code is public).
    Reference: ``chen2020improving``; survey 2.2.3.
    """
    _check_pair(emb_s, emb_t, "category_structure_losses")
    if labels.shape != emb_s.shape[:1]:
        raise ValueError(
            f"category_structure_losses: labels {tuple(labels.shape)} for a "
            f"batch of {emb_s.shape[0]}"
        )
    _, inverse = labels.unique(return_inverse=True)
    onehot = F.one_hot(inverse).to(emb_s.dtype)  # (B, K') classes present
    counts = onehot.sum(0)[:, None]

    def structure(e: Tensor) -> tuple[Tensor, Tensor]:
        centres = onehot.t().to(e.dtype) @ e / counts.to(e.dtype)  # (K', D)
        intra = (e - centres[inverse]).norm(dim=1)  # (B,)
        intra = intra / intra[intra > 0].mean() if (intra > 0).any() else intra
        inter = _pdist(centres)  # (K', K')
        inter = inter / inter[inter > 0].mean() if (inter > 0).any() else inter
        return intra, inter

    intra_s, inter_s = structure(emb_s)
    intra_t, inter_t = structure(emb_t)
    return F.smooth_l1_loss(intra_s, intra_t), F.smooth_l1_loss(inter_s, inter_t)
