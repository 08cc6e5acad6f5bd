"""Contrastive losses and memories: survey sections 2.1 and 2.2.3, Eq. (4).

The second module of the structural-knowledge losses (the first,
:mod:`kdutils.losses.relation`, compares relations among the samples of a
batch): contrastive representation distillation relates each sample to a
memory of embeddings for the whole training set (:class:`ContrastMemory`),
scored by :func:`crd_nce_loss`; both serve CRD in
:mod:`kdutils.distillers.relation`. Complementary relation contrastive
distillation scores *relations to anchors* against the same kind of memory
(:func:`crcd_relation_scores`, :class:`RelationContrastMemory`), for features
and for their gradients (:func:`ce_feature_grad`); they serve CRCD in
:mod:`kdutils.distillers.relation_contrastive`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "crd_nce_loss",
    "ContrastMemory",
    "crcd_relation_scores",
    "ce_feature_grad",
    "RelationContrastMemory",
]


def crd_nce_loss(probs: Tensor, n_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE loss for one anchor side (the authors' ``ContrastLoss``).

    ``probs`` ``(B, K+1)``: column 0 the positive pair's, the rest the K
    negatives' normalised scores ``exp(v.m / tau) / Z``. With the noise
    probability ``P_n = 1/N``: ``-(sum_b log(P_pos / (P_pos + K P_n + eps)) +
    sum_{b,k} log(K P_n / (P_neg + K P_n + eps))) / B``.
    Reference: ``tian2020contrastive``; survey 2.1 and 2.2.3.
    """
    if probs.dim() != 2 or probs.shape[1] < 2:
        raise ValueError(f"crd_nce_loss: expected (B, K+1) scores, got {probs.shape}")
    k = probs.shape[1] - 1
    noise = k / n_data
    log_d1 = torch.log(probs[:, 0] / (probs[:, 0] + noise + eps))
    log_d0 = torch.log(noise / (probs[:, 1:] + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / probs.shape[0]


class ContrastMemory(nn.Module):
    """CRD's memory banks: one embedding per training sample, for each network.

    Buffers (so checkpoints keep them and a resumed run continues exactly):
    ``memory_s``, ``memory_t`` ``(N, D)``, initialised uniformly in
    ``[-s, s]`` with ``s = 1/sqrt(D/3)`` as in the authors' code, updated with
    momentum and re-normalised after every batch; ``Z`` the two normalisation
    constants, set from the first batch (``Z = N * mean exp(v.m / tau)``) and
    then fixed, as in the authors' code; and the state of the negative sampler (a seed and a step counter, so the draws of a resumed
    run equal those of an uninterrupted one).

    Negatives are ``nce_k`` samples of *other* classes drawn by index, as the
    authors' data sampler does: without replacement when a class has at least
    ``nce_k`` negatives, else with replacement (e.g. 16384 negatives from a
    10k training set).
    """

    def __init__(
        self,
        dim: int,
        labels: Tensor,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if nce_k < 1 or nce_t <= 0 or not 0 <= nce_m < 1:
            raise ValueError(
                f"need nce_k >= 1, nce_t > 0, 0 <= nce_m < 1; got {nce_k}, {nce_t}, "
                f"{nce_m}"
            )
        n = len(labels)
        self.nce_k, self.nce_t, self.nce_m = nce_k, nce_t, nce_m
        stdv = 1.0 / math.sqrt(dim / 3)
        g = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "memory_s", torch.rand(n, dim, generator=g) * 2 * stdv - stdv
        )
        self.register_buffer(
            "memory_t", torch.rand(n, dim, generator=g) * 2 * stdv - stdv
        )
        self.register_buffer("Z", torch.full((2,), -1.0))
        self.register_buffer("sampler", torch.tensor([seed, 0], dtype=torch.long))
        # Labels stay on the CPU with the sampler; samples sorted by class make
        # "the j-th sample not of class c" a lookup.
        self.labels = labels.detach().long().cpu().clone()
        order = torch.sort(self.labels, stable=True).indices
        counts = torch.bincount(self.labels)
        self._order, self._counts = order, counts
        self._starts = torch.cumsum(counts, 0) - counts

    @property
    def n_data(self) -> int:
        return self.memory_s.shape[0]

    def sample(self, idx: Tensor) -> Tensor:
        """``(B,)`` dataset indices -> ``(B, K+1)``: each index, then K negatives."""
        idx = idx.cpu().long()
        seed, step = (int(v) for v in self.sampler)
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        self.sampler[1] += 1
        y = self.labels[idx]
        n_neg = self.n_data - self._counts[y]  # (B,) pool size per row
        out = torch.empty(len(idx), self.nce_k, dtype=torch.long)
        replace = self.nce_k > n_neg
        if replace.all():
            u = torch.rand(len(idx), self.nce_k, generator=g)
            # (float32 rounding could reach n itself: clamp to the last position)
            out = torch.minimum((u * n_neg[:, None]).long(), n_neg[:, None] - 1)
        else:
            for r in range(len(idx)):
                if replace[r]:
                    u = torch.rand(self.nce_k, generator=g)
                    out[r] = (u * n_neg[r]).long().clamp_(max=int(n_neg[r]) - 1)
                else:
                    out[r] = torch.randperm(int(n_neg[r]), generator=g)[: self.nce_k]
        # Position j among the other classes -> position in the class-sorted order.
        start, count = self._starts[y][:, None], self._counts[y][:, None]
        out = torch.where(out >= start, out + count, out)
        return torch.cat([idx[:, None], self._order[out]], dim=1)

    def forward(self, v_s: Tensor, v_t: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Scores of each anchor against the other network's memory.

        ``v_s, v_t`` ``(B, D)`` L2-normalised embeddings, ``idx`` ``(B,)`` their
        dataset indices. Returns ``(probs_s, probs_t)``, each ``(B, K+1)``:
        the student anchor against the teacher's memory, and the teacher anchor
        against the student's. In training mode the memories are then updated.
        """
        if v_s.shape != v_t.shape or v_s.shape[0] != len(idx):
            raise ValueError(
                f"ContrastMemory: embeddings {tuple(v_s.shape)}, {tuple(v_t.shape)} "
                f"for {len(idx)} indices"
            )
        contrast = self.sample(idx).to(self.memory_s.device)  # (B, K+1)
        probs_s = self._scores(v_s, self.memory_t, contrast)
        probs_t = self._scores(v_t, self.memory_s, contrast)
        if self.Z[0] < 0:
            self.Z.copy_(
                torch.stack([probs_s.mean(), probs_t.mean()]).detach() * self.n_data
            )
        probs_s, probs_t = probs_s / self.Z[0], probs_t / self.Z[1]
        if self.training:
            self._update(v_s, v_t, idx.to(self.memory_s.device))
        return probs_s, probs_t

    def _scores(self, v: Tensor, memory: Tensor, contrast: Tensor) -> Tensor:
        # exp(<v_b, m_j> / tau) for the sampled j. When the bank is small next
        # to B*(K+1) draws, scoring the whole bank once is much cheaper than
        # gathering (B, K+1, D) rows; both give the same values.
        if memory.shape[0] <= contrast.numel():
            logits = (v @ memory.detach().t()).gather(1, contrast)
        else:
            w = memory.detach()[contrast]  # (B, K+1, D)
            logits = torch.bmm(w, v[:, :, None]).squeeze(2)
        return torch.exp(logits / self.nce_t)

    @torch.no_grad()
    def _update(self, v_s: Tensor, v_t: Tensor, idx: Tensor) -> None:
        # Out of place: this step's scores still need the old banks for backward.
        for name, v in (("memory_s", v_s), ("memory_t", v_t)):
            memory = getattr(self, name)
            m = memory[idx] * self.nce_m + v.detach() * (1 - self.nce_m)
            setattr(
                self, name, memory.index_copy(0, idx, m / m.norm(dim=1, keepdim=True))
            )


def crcd_relation_scores(
    v: Tensor, bank: Tensor, anchor_idx: Tensor, contrast: Tensor, nce_t: float
) -> Tensor:
    """CRCD's scores of anchor relations (the authors' ``ContrastMemory``).

    ``v`` ``(B, D)`` one network's embeddings, ``bank`` ``(N, D)`` the other
    network's memory (a constant), ``anchor_idx`` ``(A,)`` the anchors' rows
    of ``bank`` (the batch's own indices in CRCD), ``contrast`` ``(B, K+1)``
    rows of ``bank`` per sample, column 0 its own. With ``a_j = bank[anchor_idx
    [j]]``, ``w_bk = bank[contrast[b, k]]`` and ``n(u) = u / ||u||``:

    ``out[b A + j, k] = exp(<n(w_bk - a_j), n(v_b - a_j)> / nce_t)``, ``(B A, K+1)``.

    The relation of sample ``b`` to anchor ``j`` on the embedding side is
    scored against the memory side's relation of the positive and of the K
    negatives to the same anchor. Computed from inner products (no ``(B, A,
    K+1, D)`` tensor). The authors add 1e-6 to every difference before
    normalising; that changes a score by O(1e-6) except where ``w_bk = a_j``
    (the same row), whose relation is then the direction of the all-ones
    vector: that limit is used for those entries, the shift nowhere else.
    Reference: ``zhu2021complementary``; survey 2.2.3.
    """
    if v.dim() != 2 or bank.dim() != 2 or v.shape[1] != bank.shape[1]:
        raise ValueError(
            f"crcd_relation_scores: embeddings {tuple(v.shape)} and bank "
            f"{tuple(bank.shape)} need shapes (B, D) and (N, D)"
        )
    if contrast.dim() != 2 or contrast.shape[0] != v.shape[0]:
        raise ValueError(
            f"crcd_relation_scores: contrast {tuple(contrast.shape)} must be "
            f"(B, K+1) with B = {v.shape[0]}"
        )
    if anchor_idx.dim() != 1 or nce_t <= 0:
        raise ValueError(
            "crcd_relation_scores: anchor_idx must be (A,) and nce_t > 0; got "
            f"{tuple(anchor_idx.shape)}, {nce_t}"
        )
    bank = bank.detach()
    anchors = bank[anchor_idx]  # (A, D)
    aa = (anchors * anchors).sum(1)  # (A,)
    with torch.no_grad():  # the memory side: constants, (B, A, K+1)
        if bank.shape[0] <= contrast.numel():
            # A small bank: take its products with the anchors whole, then gather.
            wa = (bank @ anchors.t())[contrast]  # (B, K+1, A)
            ww = (bank * bank).sum(1)[contrast]  # (B, K+1)
        else:
            w = bank[contrast]  # (B, K+1, D)
            wa, ww = w @ anchors.t(), w.pow(2).sum(2)
        wa = wa.transpose(1, 2)
        shift = aa[None, :, None] - wa  # <w - a, -a>
        # 1 / ||w_bk - a_j||, set to 0 where w_bk is a_j (filled in below).
        r1 = (ww[:, None, :] - 2 * wa + aa[None, :, None]).clamp_min_(1e-12).rsqrt_()
        same = (contrast[:, None, :] == anchor_idx[None, :, None]).nonzero(
            as_tuple=True
        )
        r1[same] = 0.0
    if bank.shape[0] <= contrast.numel():
        wv = (v @ bank.t()).gather(1, contrast)  # (B, K+1)
    else:
        wv = torch.bmm(bank[contrast], v[:, :, None])[..., 0]
    va = v @ anchors.t()  # (B, A)
    r2 = (v.pow(2).sum(1)[:, None] - 2 * va + aa[None, :]).clamp_min(1e-12).rsqrt()
    # <w - a, v - a> / (||w - a|| ||v - a||)
    cos = (wv[:, None, :] - va[:, :, None] + shift) * r1 * r2[:, :, None]
    # Where w_bk is a_j, the limit of the authors' shifted zero difference:
    # n(1) . n(v_b - a_j), the direction of the all-ones vector.
    ones = (v.sum(1)[:, None] - anchors.sum(1)[None, :]) * r2 / math.sqrt(v.shape[1])
    b, j, _ = same
    cos = cos.index_put(same, ones[b, j])
    return torch.exp(cos.clamp(-1.0, 1.0) / nce_t).reshape(-1, contrast.shape[1])


def ce_feature_grad(logits: Tensor, weight: Tensor, y: Tensor) -> Tensor:
    """CRCD's gradient element: d CE(logits, y) / d features, ``(B, D)``.

    For ``logits = features @ weight.T + bias`` (a network's last linear
    layer, ``weight`` ``(C, D)``) and the batch-mean cross-entropy, the
    gradient is ``(softmax(logits) - onehot(y)) @ weight / B``, what the
    authors take with ``torch.autograd.grad(..., create_graph=True)``; here it
    stays differentiable in ``logits`` and ``weight``, and needs no graph for a
    teacher whose outputs were computed beforehand.
    Reference: ``zhu2021complementary``.
    """
    if logits.dim() != 2 or weight.dim() != 2 or logits.shape[1] != weight.shape[0]:
        raise ValueError(
            f"ce_feature_grad: logits {tuple(logits.shape)} and weight "
            f"{tuple(weight.shape)} need shapes (B, C) and (C, D)"
        )
    if y.shape != logits.shape[:1]:
        raise ValueError(
            f"ce_feature_grad: labels {tuple(y.shape)} for {len(logits)} rows"
        )
    p = torch.softmax(logits, dim=1) - F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return p @ weight / logits.shape[0]


class RelationContrastMemory(ContrastMemory):
    """CRCD's memory: CRD's banks and sampler, scored on anchor relations.

    As :class:`ContrastMemory` (momentum updates, Z fixed at the first batch,
    negatives of other classes), except that the banks start at unit length,
    as in the authors' CRCD memory, and each anchor side is scored with
    :func:`crcd_relation_scores`, the batch's own memory entries being the
    anchors. Defaults are the authors' ``train_student.py``: 500 negatives,
    ``nce_t`` 0.05, momentum 0.5.
    """

    def __init__(
        self,
        dim: int,
        labels: Tensor,
        nce_k: int = 500,
        nce_t: float = 0.05,
        nce_m: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(dim, labels, nce_k, nce_t, nce_m, seed)
        self.memory_s = F.normalize(self.memory_s, dim=1)
        self.memory_t = F.normalize(self.memory_t, dim=1)

    def forward(
        self, v_s: Tensor, v_t: Tensor, idx: Tensor, contrast: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(probs_s, probs_t)``, each ``(B * B, K+1)``; ``contrast`` ``(B, K+1)``
        (drawn by :meth:`sample` when not given) lets two memories share draws.
        The student side's anchors and candidates come from the teacher's bank,
        and the other way round; in training mode the banks are then updated."""
        if v_s.shape != v_t.shape or v_s.shape[0] != len(idx):
            raise ValueError(
                f"RelationContrastMemory: embeddings {tuple(v_s.shape)}, "
                f"{tuple(v_t.shape)} for {len(idx)} indices"
            )
        if contrast is None:
            contrast = self.sample(idx)
        dev = self.memory_s.device
        contrast, idx_d = contrast.to(dev), idx.to(dev)
        probs_s = crcd_relation_scores(v_s, self.memory_t, idx_d, contrast, self.nce_t)
        probs_t = crcd_relation_scores(v_t, self.memory_s, idx_d, contrast, self.nce_t)
        if self.Z[0] < 0:
            self.Z.copy_(
                torch.stack([probs_s.mean(), probs_t.mean()]).detach() * self.n_data
            )
        probs_s, probs_t = probs_s / self.Z[0], probs_t / self.Z[1]
        if self.training:
            self._update(v_s, v_t, idx_d)
        return probs_s, probs_t
