"""Distillers for small networks: survey section 3.2 (early-stopped KD, DGKD).

Both keep the book's KD term (:func:`kdutils.losses.kd_loss`: KL summed over
classes, averaged over the batch, times T^2) and ``kd``'s weights (RepDistiller's defaults), so that
each reduces exactly to ``kd`` in its limit (ESKD that never stops, DGKD with
one guide) and the chapter's comparisons differ only in what the methods add.
Teacher assistants (TAKD) need no Distiller of their own: they are a chain of
``kd`` runs, :func:`kdutils.pipelines.takd`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..losses import kd_loss
from .base import Distiller, check_weights, register


@register("eskd", section="3.2")
class ESKD(Distiller):
    """Early-stopped KD (Cho & Hariharan 2019): KD first, then the labels alone.

    In epoch ``e`` (0-based) of ``E`` the loss is Eq. (1),
    ``ce_weight * CE + kd_weight * kd_loss(l_S, l_T, T)``, while
    ``e < stop * E``, and the plain cross-entropy ``CE`` (weight 1) afterwards:
    the teacher's supervision is switched off and the student finishes on the
    labels, as the survey (section 3.2) describes the method. ``stop=1`` is
    ``kd``; ``stop=0`` is ``ce``. After the switch the ``kd`` term is reported
    as 0, so a run's history shows the epoch it happened.

    ``stop=0.5`` is our default: the paper chooses the stopping point per
    experiment (its headline variant also stops the *teacher's* own training
    early, which is a shorter teacher run: ``teacher_epochs``). T and the
    weights are ``kd``'s. Reference: ``cho2019efficacy``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        stop: float = 0.5,
    ) -> None:
        check_T(T)
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        if not 0.0 <= stop <= 1.0:
            raise ValueError(f"stop is a fraction of the epochs in [0, 1], got {stop}")
        super().__init__(student, teacher)
        self.T, self.ce_weight, self.kd_weight, self.stop = (
            T,
            ce_weight,
            kd_weight,
            stop,
        )
        # Until the trainer calls ``on_epoch``, KD is on (or off for stop=0).
        self.kd_on = stop > 0

    @staticmethod
    def kd_epochs(stop: float, epochs: int) -> int:
        """How many of ``epochs`` use KD: the epochs ``e`` with ``e < stop * epochs``."""
        return min(epochs, math.ceil(stop * epochs - 1e-9))

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.kd_on = epoch < self.kd_epochs(self.stop, epochs)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        ce = F.cross_entropy(logits_s, y)
        if not self.kd_on:
            # The labels alone; the teacher is not even run.
            return logits_s, {"ce": ce, "kd": torch.zeros((), device=ce.device)}
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        return logits_s, {
            "ce": self.ce_weight * ce,
            "kd": self.kd_weight * kd_loss(logits_s, t["logits"], self.T),
        }


@register("dgkd", section="3.2")
class DGKD(Distiller):
    """Densely guided KD (Son et al. 2021): every larger network guides the student.

    ``teacher`` is one network or an ``nn.ModuleList`` of guides (the teacher
    and the assistants, largest first; ``teacher_runs`` with several run ids
    gives one). On every batch ``drop_num`` guides, drawn uniformly without
    replacement from the global torch generator, are dropped (the authors'
    stochastic DGKD; their script drops one), always keeping at least one;
    the loss is ``ce_weight * CE + kd_weight * sum_{kept i} kd_loss(l_S, l_i, T)``,
    summed over the kept guides as in the authors' code. With one guide nothing
    is dropped and DGKD is ``kd``.

    Defaults: ``drop_num=1`` is the authors' script's; T=4, 0.1/0.9 are Table
    1's KD values (the script's own, T=5 and lambda=1, i.e. no label term, go
    with a KL averaged over classes as well as samples, which is the book's
    ``kd_loss`` divided by the number of classes). The dropped guides are not
    run at all. ``teacher_outputs`` stacks the guides' logits, ``(G, B, K)``.
    ``last_kept`` holds the indices of the guides the last batch used.
    Reference: ``son2021densely``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        drop_num: int = 1,
    ) -> None:
        check_T(T)
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        if int(drop_num) != drop_num or drop_num < 0:
            raise ValueError(f"drop_num must be an integer >= 0, got {drop_num}")
        super().__init__(student, teacher)
        self.T, self.ce_weight, self.kd_weight = T, ce_weight, kd_weight
        self.drop_num = int(drop_num)
        self.last_kept: list[int] = []

    @property
    def guides(self) -> list[nn.Module]:
        t = self.teacher
        return list(t) if isinstance(t, nn.ModuleList) else [t]

    def draw_kept(self) -> list[int]:
        """The guides kept for one batch: all but ``min(drop_num, G - 1)`` of them."""
        n = len(self.guides)
        dropped = min(self.drop_num, n - 1)
        if dropped == 0:
            return list(range(n))
        return sorted(torch.randperm(n)[dropped:].tolist())

    @torch.no_grad()
    def teacher_outputs(self, x: Tensor) -> dict[str, Tensor]:
        if not isinstance(self.teacher, nn.ModuleList):
            return {"logits": self.teacher(x)}
        return {"logits": torch.stack([g(x) for g in self.teacher])}  # (G, B, K)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        kept = self.last_kept = self.draw_kept()
        if teacher_out is not None:
            logits_t = teacher_out["logits"]
            logits_t = logits_t[None] if logits_t.dim() == 2 else logits_t
            if logits_t.shape[0] != len(self.guides):
                raise ValueError(
                    f"teacher_out['logits'] holds {logits_t.shape[0]} guides' logits "
                    f"{tuple(logits_t.shape)}, but DGKD has {len(self.guides)} guides"
                )
            kept_logits = [logits_t[i] for i in kept]
        else:
            with torch.no_grad():
                guides = self.guides
                kept_logits = [guides[i](x) for i in kept]
        kd = sum(kd_loss(logits_s, t, self.T) for t in kept_logits)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd,
        }
