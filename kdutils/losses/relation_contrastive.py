"""CRD's contrastive loss and memory: survey sections 2.1 and 2.2.3, Eq. (4).

The second module of the structural-knowledge losses (the first,
:mod:`kdutils.losses.relation`, compares relations among the samples of a
batch): contrastive representation distillation relates each sample to a
memory of embeddings for the whole training set (:class:`ContrastMemory`),
scored by :func:`crd_nce_loss`. Both serve CRD in
:mod:`kdutils.distillers.relation`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["crd_nce_loss", "ContrastMemory"]


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
