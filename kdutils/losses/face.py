"""Losses of face recognition and its distillation (survey section 5.3).

Pure functions on embeddings ``(B, D)`` and similarity vectors:

- :func:`arcface_loss` (with :func:`arcface_logits`): the additive angular
  margin softmax of ArcFace (Deng et al. 2019), the training loss of every
  embedding network of chapter 17, as TFace's ``head/localfc/arcface.py``
  computes it, followed by the mean cross-entropy;
- :func:`ddl_loss` (with :func:`ddl_histogram`, :func:`ddl_pos_similarities`
  and :func:`ddl_neg_similarities`): the distribution distillation loss of
  Huang et al. 2020, as the authors' code computes it (Tencent/TFace,
  ``recognition/torchkit/loss/ddl.py``, trained by ``tasks/ddl/train_ddl.py``
  of the repository's first commit);
- :func:`embedding_cosine_loss`: the plain embedding-distillation baseline,
  ``1 - mean cos(e_S, e_T)``, as TFace's ``tasks/ekd/distillation/
  cosine_distance.py`` (the feature-distillation baseline of Huang et al.
  2022's EKD code).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "arcface_logits",
    "arcface_loss",
    "ddl_histogram",
    "ddl_pos_similarities",
    "ddl_neg_similarities",
    "ddl_kl",
    "ddl_loss",
    "embedding_cosine_loss",
]


def _check_emb(name: str, *embs: Tensor) -> None:
    for e in embs:
        if not isinstance(e, Tensor) or e.dim() != 2 or e.shape[0] < 1:
            raise ValueError(
                f"{name}: embeddings must be (B, D) with B >= 1, got "
                f"{tuple(getattr(e, 'shape', ())) or type(e).__name__}"
            )
    if len({tuple(e.shape) for e in embs}) > 1:
        raise ValueError(
            f"{name}: embeddings must have one shape, got {[tuple(e.shape) for e in embs]}"
        )


def arcface_logits(
    emb: Tensor,
    weight: Tensor,
    labels: Tensor,
    scale: float = 64.0,
    margin: float = 0.5,
) -> Tensor:
    """ArcFace's logits ``(B, C)``: ``s cos(theta_y + m)`` for the true class,
    ``s cos(theta_j)`` for the others.

    ``cos(theta_j)`` is the cosine between the embedding and class centre
    ``j`` (the columns of ``weight``, ``(D, C)``), clamped to [-1, 1]. As in
    the authors' code (insightface, and TFace's ``ArcFace`` with
    ``easy_margin=False``): where ``theta_y + m`` would pass pi
    (``cos(theta_y) <= cos(pi - m)``), the target logit is
    ``cos(theta_y) - m sin(pi - m)`` instead, which keeps it decreasing in
    ``theta_y``. Defaults ``s = 64, m = 0.5`` are the paper's.
    """
    _check_emb("arcface_logits", emb)
    if weight.dim() != 2 or weight.shape[0] != emb.shape[1]:
        raise ValueError(
            f"arcface_logits: weight must be (D, C) with D = {emb.shape[1]}, got "
            f"{tuple(weight.shape)}"
        )
    if labels.shape != (emb.shape[0],):
        raise ValueError(
            f"arcface_logits: labels must be ({emb.shape[0]},), got {tuple(labels.shape)}"
        )
    if not (
        math.isfinite(scale)
        and scale > 0
        and math.isfinite(margin)
        and 0 <= margin < math.pi / 2
    ):
        raise ValueError(
            f"arcface_logits: scale must be > 0 and margin in [0, pi/2), got "
            f"{scale!r} and {margin!r}"
        )
    cos = (F.normalize(emb, dim=1) @ F.normalize(weight, dim=0)).clamp(-1, 1)
    target = cos.gather(1, labels.view(-1, 1))
    sin = torch.sqrt(1.0 - target.pow(2))
    cos_m = target * math.cos(margin) - sin * math.sin(margin)  # cos(theta + m)
    th, mm = math.cos(math.pi - margin), math.sin(math.pi - margin) * margin
    target_m = torch.where(target > th, cos_m, target - mm)
    return cos.scatter(1, labels.view(-1, 1), target_m) * scale


def arcface_loss(
    emb: Tensor,
    weight: Tensor,
    labels: Tensor,
    scale: float = 64.0,
    margin: float = 0.5,
) -> Tensor:
    """Mean cross-entropy of :func:`arcface_logits` over the batch."""
    return F.cross_entropy(arcface_logits(emb, weight, labels, scale, margin), labels)


# The authors' histogram: bin centres 0, 0.001, ..., 0.999 and a Gaussian kernel
# of standard deviation 0.1 (ddl.py's `t` and `_histogram`).
_BIN_STEP = 0.001
_SIGMA = 0.1


def ddl_histogram(sims: Tensor) -> Tensor:
    """The soft histogram of similarities ``(N,)`` -> ``(1, 1000)``, summing to 1.

    Bin ``k`` (centre ``t_k = k / 1000``) gets ``sum_i exp(-(s_i - t_k)^2 / (2 * 0.1^2))``;
    the row is then divided by its sum. A Gaussian kernel, not a triangular
    one: every similarity feeds every bin, so the histogram is differentiable
    in each ``s_i``. Similarities below 0 feed only through the kernel's tail.
    """
    if sims.dim() != 1 or sims.numel() == 0:
        raise ValueError(
            f"ddl_histogram: sims must be a non-empty 1-D tensor, got {tuple(sims.shape)}"
        )
    t = torch.arange(0, 1.0, _BIN_STEP, device=sims.device, dtype=sims.dtype).view(
        1, -1
    )
    h = torch.exp(-0.5 * ((sims.view(-1, 1) - t) / _SIGMA).pow(2)).sum(0, keepdim=True)
    return h / h.sum(1)


def ddl_pos_similarities(
    first: Tensor, second: Tensor, threshold: float = 0.0
) -> Tensor:
    """Cosine similarities of the positive pairs ``(first[i], second[i])``,
    keeping only those above ``threshold`` (0 in the authors' code, whose
    ``positive_threshold`` argument is never passed on)."""
    _check_emb("ddl_pos_similarities", first, second)
    s = (F.normalize(first, dim=1) * F.normalize(second, dim=1)).sum(1)
    return s[s > threshold]


def ddl_neg_similarities(emb: Tensor, labels: Tensor | None = None) -> Tensor:
    """The hardest negative of each sample, ``(B,)``, as the authors' code finds it.

    Their batch holds one image per identity, so every pair is negative; for
    sample ``i`` they take the largest entry of row ``i`` of the upper
    triangle (diagonal excluded) of the cosine matrix, *zeros included*: the
    result is ``max(0, max_{j > i} cos(e_i, e_j))``, and 0 for the last
    sample. With ``labels``, pairs of the same label are not negatives and are
    set to 0 too (chapter 17's batches repeat classes); without, every pair
    counts, which is their code exactly.
    """
    _check_emb("ddl_neg_similarities", emb)
    e = F.normalize(emb, dim=1)
    sim = torch.triu(e @ e.t(), diagonal=1)
    if labels is not None:
        if labels.shape != (emb.shape[0],):
            raise ValueError(
                f"ddl_neg_similarities: labels must be ({emb.shape[0]},), got "
                f"{tuple(labels.shape)}"
            )
        sim = sim.masked_fill(labels.view(-1, 1) == labels.view(1, -1), 0.0)
    return sim.max(1).values


def ddl_kl(anchor: Tensor, dist: Tensor) -> Tensor:
    """``KL(anchor || dist)`` of two histograms ``(1, K)``, as the authors'
    ``F.kl_div(log(dist + 1e-9), anchor + 1e-9, reduction="batchmean")``:
    ``sum_k (a_k + 1e-9) (log(a_k + 1e-9) - log(d_k + 1e-9))`` (the batch
    dimension is 1)."""
    return F.kl_div(torch.log(dist + 1e-9), anchor + 1e-9, reduction="batchmean")


def ddl_loss(
    neg_s: Tensor,
    pos_s: Tensor,
    neg_t: Tensor,
    pos_t: Tensor,
    pos_kl_weight: float = 0.1,
    neg_kl_weight: float = 0.02,
    order_weight: float = 0.5,
) -> dict[str, Tensor]:
    """Distribution distillation (Huang et al. 2020), weighted terms by name.

    The "student" is the distribution of the hard samples' similarities
    (``neg_s``, ``pos_s``), the "teacher" that of the easy samples
    (``neg_t``, ``pos_t``); both come from the *same* network on the same
    step. With ``P`` the :func:`ddl_histogram` of each:

    - ``ddl_pos = 0.1 KL(P+_easy || P+_hard)``,
    - ``ddl_neg = 0.02 KL(P-_easy || P-_hard)``,
    - ``ddl_order = 0.5 sum_{i, j in {easy, hard}} (mean S-_i - mean S+_j)``,
      the order loss: every negative mean below every positive mean.

    As in the authors' code, the easy ("teacher") histograms are not
    detached: gradients flow into both. Weights are theirs (``ddl.py``'s
    defaults, and ``TrainDDLTask``'s).
    """
    for name, v in (
        ("neg_s", neg_s),
        ("pos_s", pos_s),
        ("neg_t", neg_t),
        ("pos_t", pos_t),
    ):
        if v.dim() != 1 or v.numel() == 0:
            raise ValueError(
                f"ddl_loss: {name} must be a non-empty 1-D tensor of similarities, "
                f"got shape {tuple(v.shape)} (no positive pair above the threshold?)"
            )
    negs: Sequence[Tensor] = (neg_t, neg_s)
    poss: Sequence[Tensor] = (pos_t, pos_s)
    order = sum(n.mean() - p.mean() for n in negs for p in poss)
    return {
        "ddl_pos": pos_kl_weight * ddl_kl(ddl_histogram(pos_t), ddl_histogram(pos_s)),
        "ddl_neg": neg_kl_weight * ddl_kl(ddl_histogram(neg_t), ddl_histogram(neg_s)),
        "ddl_order": order_weight * order,
    }


def embedding_cosine_loss(emb_s: Tensor, emb_t: Tensor) -> Tensor:
    """``1 - mean_i cos(e_S_i, e_T_i)``: the student's embedding pointed where
    the frozen teacher's points (TFace EKD's ``CosineDistance``; the caller
    detaches ``emb_t``). Both must have the same width ``D`` (chapter 17's
    networks share the embedding width, as face networks share 512)."""
    _check_emb("embedding_cosine_loss", emb_s, emb_t)
    cos = F.cosine_similarity(
        F.normalize(emb_s, dim=1), F.normalize(emb_t, dim=1), dim=1, eps=1e-8
    )
    return 1 - cos.mean()
