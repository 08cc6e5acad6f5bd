"""Progressive distillation, survey section 2.3.4, Eq. (8).

The student learns from the teacher's *training path*, not from one finished
teacher:

- ``snapshot``: snapshot distillation (Yang et al. 2019). One run in cycles;
  the network's state at the end of a cycle is the frozen teacher of the
  next cycle. No separate teacher.
- ``rco``: route-constrained optimisation (Jin et al. 2019). A sequence of
  frozen teachers, anchor points along a teacher's training, each teaching
  the student for an equal share of the epochs, earliest first; the
  pipeline :func:`kdutils.pipelines.route_kd` makes the anchors.
- ``prokt``: "follow your path" (Shi et al. 2021). A teacher of the
  teacher's architecture is trained from scratch alongside the student; its
  own loss keeps it close to the student, and the student learns from it.
- ``collab``: a stand-in for collaborative teaching (Zhao et al. 2019): a
  teacher trained from scratch beside the student teaches its outputs, a
  pretrained expert teacher its attention maps.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int
from ..losses import at_loss, kd_loss, prokt_teacher_loss, snapshot_kd_loss
from ..models import capture
from .base import Distiller, check_weights, register
from .extracting import _check_poolable
from .features import paired_shapes, student_features, teacher_features
from .online import fresh_copy, member_metrics

__all__ = ["Snapshot", "RCO", "ProKT", "Collab", "cycle_starts"]


def cycle_starts(epochs: int, cycles: int) -> list[int]:
    """First epoch (0-based) of each of ``cycles`` near-equal cycles of ``epochs``.

    ``[round(k * epochs / cycles) for k in range(cycles)]``; raises
    ``ValueError`` when a cycle would have no epoch (``cycles > epochs``).
    """
    check_int("cycles", cycles, 1)
    check_int("epochs", epochs, 1)
    if cycles > epochs:
        raise ValueError(
            f"{cycles} cycles do not fit in {epochs} epochs: each cycle needs at "
            "least one epoch"
        )
    return [round(k * epochs / cycles) for k in range(cycles)]


@register("snapshot", section="2.3.4")
class Snapshot(Distiller):
    """Snapshot distillation: earlier states of the same run teach it (Yang et al. 2019).

    The run is split into ``cycles`` near-equal cycles of whole epochs
    (:func:`cycle_starts`). In the first cycle the network learns from the
    labels alone (``ce``, weight 1). At the start of every later cycle its
    current state is copied into ``self.snapshot``, a frozen copy of the
    student in eval mode, which teaches the whole cycle:
    ``ce_weight * CE(z, y) + kd_weight * KL(softmax(z_snap / T) ||
    softmax(z))`` (:func:`~kdutils.losses.snapshot_kd_loss`: only the teacher
    is softened, no T^2). The snapshot and the epoch it was taken at (the
    buffer ``snapshot_epoch``, -1 before the first) are part of the
    checkpoints, so a resumed run continues exactly; there is no separate
    teacher (``needs_teacher = False``; give ``teacher=None`` in the config).

    Defaults: the paper's authors did not release code; these are those of a
    public re-implementation of the paper (4 equal cycles, T = 3, lambda_S =
    1 + 1/T for the label term, lambda_T = 1), ``ce_weight=None`` meaning
    1 + 1/T. The paper takes snapshots at iteration granularity; here a cycle
    is a whole number of epochs.

    The learning rate. The paper's cycles each follow their own cosine,
    restarted high at each snapshot, so that the student moves away from its
    teacher (the paper's requirement that teacher and student differ enough)
    and each snapshot is taken at a low learning rate (a well-optimised
    teacher). With ``cyclic_lr`` (the default) :meth:`lr_factor` multiplies
    the run's scheduled rate by ``(1 + cos(pi * t / n)) / 2`` in epoch ``t``
    of a cycle of ``n`` epochs: with a constant run schedule (``schedule =
    "step"``, no milestones) that is the paper's cyclic cosine, at epoch
    rather than iteration granularity; with a cosine run schedule the
    restarts sit on top of the overall decay. ``cyclic_lr=False`` keeps the
    run's schedule alone. Terms: ``ce`` and ``kd`` (0 in the first cycle,
    so every epoch's history has both).
    """

    needs_teacher = False
    cache_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        cycles: int = 4,
        T: float = 3.0,
        ce_weight: float | None = None,
        kd_weight: float = 1.0,
        cyclic_lr: bool = True,
    ) -> None:
        check_int("cycles", cycles, 2)
        if not isinstance(cyclic_lr, bool):
            raise ValueError(f"cyclic_lr must be True or False, got {cyclic_lr!r}")
        if T <= 0:
            raise ValueError(f"temperature T must be > 0, got {T}")
        ce_w = 1.0 + 1.0 / T if ce_weight is None else ce_weight
        check_weights(ce_weight=ce_w, kd_weight=kd_weight)
        super().__init__(student, None)
        self.cycles, self.T = cycles, T
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        self.cyclic_lr = cyclic_lr
        self.snapshot = copy.deepcopy(student)
        for p in self.snapshot.parameters():
            p.requires_grad_(False)
        self.snapshot.eval()
        self.register_buffer("snapshot_epoch", torch.tensor(-1, dtype=torch.long))

    @property
    def label_weight(self) -> float:
        """The label term's weight once a snapshot teaches (1 + 1/T by default)."""
        return 1.0 + 1.0 / self.T if self.ce_weight is None else self.ce_weight

    def lr_factor(self, epoch: int, epochs: int) -> float:
        """The cycle's own cosine, ``(1 + cos(pi * t / n)) / 2`` (1 without ``cyclic_lr``)."""
        if not self.cyclic_lr:
            return 1.0
        starts = [*cycle_starts(epochs, self.cycles), epochs]
        k = max(i for i, s in enumerate(starts[:-1]) if s <= epoch)
        t, n = epoch - starts[k], starts[k + 1] - starts[k]
        return 0.5 * (1.0 + math.cos(math.pi * t / n))

    def train(self, mode: bool = True) -> Snapshot:
        super().train(mode)
        self.snapshot.eval()
        return self

    def on_epoch(self, epoch: int, epochs: int) -> None:
        starts = cycle_starts(epochs, self.cycles)
        current = max(s for s in starts if s <= epoch)
        if current > 0 and int(self.snapshot_epoch) != current:
            # A new cycle: the network as it ends the last one is the teacher.
            # (On a resumed run that stopped inside a cycle, the checkpoint's
            # snapshot is already this cycle's and is kept.)
            self.snapshot.load_state_dict(self.student.state_dict())
            self.snapshot_epoch.fill_(current)

    @property
    def has_teacher(self) -> bool:
        return int(self.snapshot_epoch) >= 0

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        ce = F.cross_entropy(logits_s, y)
        if not self.has_teacher:
            return logits_s, {"ce": ce, "kd": logits_s.new_zeros(())}
        with torch.no_grad():
            logits_t = self.snapshot(x)
        return logits_s, {
            "ce": self.label_weight * ce,
            "kd": self.kd_weight * snapshot_kd_loss(logits_s, logits_t, self.T),
        }


@register("rco", section="2.3.4", status="added")
class RCO(Distiller):
    """Route-constrained optimisation: a teacher's training path, anchor by anchor (Jin et al. 2019).

    ``teacher`` is an ``nn.ModuleList`` of frozen teachers, the *anchors*,
    earliest first (one model is one anchor: plain KD). The epochs are split
    into ``len(teacher)`` near-equal stages (:func:`cycle_starts`, the
    paper's "equal epoch interval" choice); in stage k the student learns
    from anchor k with Hinton's loss, ``ce_weight * CE + kd_weight *
    kd_loss(z_s, z_anchor, T)``, so it follows the teacher's route from an
    easy, unconverged teacher to the final one. Defaults: ``kd``'s (T = 4, 0.1 / 0.9,
    RepDistiller's KD defaults), RCO's mimicking loss being Hinton's KD loss.

    With ``Config.teacher_runs`` naming several finished runs the trainer
    passes them as a ``ModuleList``; :func:`kdutils.pipelines.route_kd`
    trains the anchors. Which anchor teaches changes with the epoch, so the
    teacher's outputs are never precomputed (``cache_teacher = False``);
    the anchors are frozen and restored from their runs, and the current
    anchor follows from the epoch, so a resumed run continues exactly.
    Terms: ``ce``, ``kd``. ``anchor`` is the index of the current teacher.
    """

    cache_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
    ) -> None:
        if T <= 0:
            raise ValueError(f"temperature T must be > 0, got {T}")
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        if teacher is not None and not isinstance(teacher, nn.ModuleList):
            teacher = nn.ModuleList([teacher])
        if teacher is not None and len(teacher) == 0:
            raise ValueError("rco needs at least one anchor teacher")
        super().__init__(student, teacher)
        self.T, self.ce_weight, self.kd_weight = T, ce_weight, kd_weight
        self.anchor = 0

    def on_epoch(self, epoch: int, epochs: int) -> None:
        starts = cycle_starts(epochs, len(self.teacher))
        self.anchor = max(k for k, s in enumerate(starts) if s <= epoch)

    @torch.no_grad()
    def teacher_outputs(self, x: Tensor) -> dict[str, Tensor]:
        """The current anchor's logits (and ``teacher_layers`` outputs)."""
        t = self.teacher[self.anchor]
        with capture(t, self.teacher_layers) as feats:
            logits = t(x)
        return {"logits": logits, **feats}

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd_loss(logits_s, t["logits"], self.T),
        }


@register("prokt", section="2.3.4")
class ProKT(Distiller):
    """Follow your path: a teacher trained with the student, held close to it (Shi et al. 2021).

    ``self.mentor`` is a network of the teacher's architecture with freshly
    drawn weights (:func:`~kdutils.distillers.online.fresh_copy` of the given
    teacher, whose trained weights are not used), trained together with the
    student. On every batch:

    - the teacher's loss, :func:`~kdutils.losses.prokt_teacher_loss`:
      ``(1 - lambda) CE(z_t, y) + lambda KL(p_s || p_t)`` with the student's
      prediction detached, ``lambda = move_back_weight``: a label step,
      projected back towards what the student can currently reach (the
      paper's approximate mirror descent);
    - the student's loss: ``kd_weight * KL(p_t || p_s)`` at ``T`` with the
      teacher detached (:func:`~kdutils.losses.kd_loss`, with its T^2), plus
      ``ce_weight * CE(z_s, y)``.

    Defaults follow the authors' public code (text classification; no image
    code is public): ``move_back_weight = 0.4`` (their example), T = 1, and a
    student that learns from the teacher alone (``ce_weight = 0``,
    ``kd_weight = 1``: their student criterion puts weight 1 on the KL). The
    code starts the teacher from a generic pretrained language model (not
    trained on the task); here it starts from random weights, as the survey
    describes ProKT ("舍弃了预训练模型", no pretrained model).

    Update order. The code steps the teacher first and then the student
    against the *updated* teacher, with two optimisers (teacher learning rate
    3e-5, student 1e-4, Adam, for BERT). Here both take one step of the
    run's optimiser on the summed terms: every target is detached, so each
    network's gradient is exactly that of its own loss, and the student sees
    the teacher of before, not after, its step on the same batch (one step of
    lag, as in ``dml``). Terms: ``ce``, ``kd`` (the student),
    ``teacher_ce`` and ``teacher_kl`` (the mentor's two weighted parts).
    ``epoch_metrics``: the two networks' test accuracies (``acc0`` student,
    ``acc1`` teacher) and their agreement.
    """

    cache_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        move_back_weight: float = 0.4,
        T: float = 1.0,
        ce_weight: float = 0.0,
        kd_weight: float = 1.0,
    ) -> None:
        if not 0.0 <= move_back_weight <= 1.0:
            raise ValueError(
                f"move_back_weight must be in [0, 1], got {move_back_weight}"
            )
        if T <= 0:
            raise ValueError(f"temperature T must be > 0, got {T}")
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        super().__init__(student, teacher)
        self.move_back_weight, self.T = move_back_weight, T
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        # Only the architecture of the given teacher is used: a fresh copy
        # that trains (the trainer's optimiser takes its parameters).
        self.mentor = fresh_copy(teacher).requires_grad_(True)
        self.teacher = None

    def epoch_metrics(self, test) -> dict[str, float]:
        """:func:`~kdutils.distillers.online.member_metrics` of student and teacher."""
        return member_metrics([self.student, self.mentor], test)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        logits_t = self.mentor(x)
        lam = self.move_back_weight
        # prokt_teacher_loss's two parts, reported apart: lambda = 0 is its
        # label term, lambda = 1 its KL towards the (detached) student.
        target = logits_s.detach()
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd_loss(logits_s, logits_t.detach(), self.T),
            "teacher_ce": (1.0 - lam) * prokt_teacher_loss(target, logits_t, y, 0.0),
            "teacher_kl": lam * prokt_teacher_loss(target, logits_t, y, 1.0),
        }


@register(
    "collab",
    section="2.3.4",
    status="stand-in",
    note="Zhao et al. 2019 (collaborative teaching): built from "
    "the paper's abstract; its loss weights, temperature and attention layers "
    "could not be read, so KD's and AT's defaults are used",
)
class Collab(Distiller):
    """Collaborative teaching, two teachers at once (after Zhao et al. 2019).

    A *scratch teacher* (``self.scratch``, the teacher's architecture with
    freshly drawn weights) trains on the labels beside the student and
    teaches it its current outputs, step by step along its own training; the
    given, pretrained *expert teacher* (frozen) teaches the student where to
    look, through the attention maps of the three stages. The student
    minimises ``ce_weight * CE(z_s, y) + kd_weight * kd_loss(z_s, z_scratch,
    T) + at_weight * at_loss(stages_s, stages_expert, p)``, the scratch
    teacher ``CE(z_scratch, y)``; the scratch teacher's logits are detached
    in the student's term. One step of the run's optimiser trains both.

    A stand-in: the paper's exact loss could not be read, so the structure is
    its abstract's and the survey's (a teacher trained along with the student
    guides the output layer, a pretrained one the intermediate layers) and
    the defaults are those of the two losses it combines: Hinton's term with
    RepDistiller's T = 4 and weights 0.1 (CE) and 0.9 (KD), attention
    transfer with the authors' p = 2 and weight 1000. Terms: ``ce``, ``kd``,
    ``at`` (the student), ``teacher_ce`` (the scratch teacher).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        T: float = 4.0,
        p: float = 2.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        at_weight: float = 1000.0,
    ) -> None:
        if T <= 0:
            raise ValueError(f"temperature T must be > 0, got {T}")
        if p <= 0:
            raise ValueError(f"p must be > 0, got {p}")
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight, at_weight=at_weight)
        super().__init__(student, teacher)
        self.T, self.p = T, p
        self.ce_weight, self.kd_weight, self.at_weight = ce_weight, kd_weight, at_weight
        self.student_layers = tuple(student.stage_layers())
        self.teacher_layers = tuple(teacher.stage_layers())
        self.scratch = fresh_copy(teacher).requires_grad_(True)

    def setup(self, data) -> None:
        shapes = paired_shapes(self, data, self.student_layers, self.teacher_layers)
        _check_poolable(
            "collab", self.student_layers, shapes[0], self.teacher_layers, shapes[1]
        )

    def epoch_metrics(self, test) -> dict[str, float]:
        """:func:`~kdutils.distillers.online.member_metrics` of student and scratch teacher."""
        return member_metrics([self.student, self.scratch], test)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = student_features(self, x, self.student_layers)
        expert = teacher_features(self, x, teacher_out)
        logits_scratch = self.scratch(x)
        feats_t = [expert[k] for k in self.teacher_layers]
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "kd": self.kd_weight * kd_loss(logits_s, logits_scratch.detach(), self.T),
            "at": self.at_weight * at_loss(feats_s, feats_t, self.p),
            "teacher_ce": F.cross_entropy(logits_scratch, y),
        }
