"""Knowledge extracted from feature maps, guided by the task or by a matching: survey 2.2.2.

The third module of the extracting family (survey Eq. (3), ``L_KD =
DF(sum_i alpha_i f_S^i, sum_j beta_j f_T^j)``): methods that decide *which*
features to compare before comparing them. TOFD (Zhang et al. 2020a) lets
auxiliary classifiers on each stage pick the task-oriented features; MGD
(Yue et al. 2020) matches teacher channels to student channels by a bipartite
assignment and reduces the matched channels to one. The fixed summaries are
in :mod:`~kdutils.distillers.extracting`, the learned weights in
:mod:`~kdutils.distillers.extracting_learned`; all draw on the losses of
:mod:`kdutils.losses.extracting`.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import normalize
from ..losses.extracting import (
    mgd_loss,
    orthogonal_loss,
    overhaul_margin,
    tofd_feature_loss,
    tofd_kd_loss,
)
from ..models import capture
from .base import Distiller, check_weights, pretrain, register
from .features import check_init, paired_shapes, student_features, teacher_features

__all__ = ["TOFD", "MGD", "mgd_assignment"]

_AUX = ("layer1", "layer2")  # the stages that get an auxiliary classifier


def _sep_conv(c_in: int, c_out: int) -> nn.Sequential:
    """TOFD's ``SepConv``: two depthwise-separable 3x3 convolutions, the first of stride 2."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, 2, 1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_in, 1, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_in, 3, 1, 1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class AuxClassifier(nn.Module):
    """A TOFD auxiliary classifier on stage ``i``: SepConvs down to the last stage, pool, linear.

    One ``SepConv`` per later stage (channels and stride as the network's
    stages), global average pooling, a linear layer. ``forward`` returns the
    logits and the pooled task-oriented feature ``(B, C_last)``.
    """

    def __init__(self, channels: list[int], num_classes: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(
            *(_sep_conv(a, b) for a, b in zip(channels, channels[1:], strict=False))
        )
        self.fc = nn.Linear(channels[-1], num_classes)
        for m in self.convs.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        emb = F.adaptive_avg_pool2d(self.convs(h), 1).flatten(1)
        return self.fc(emb), emb


class _LabelsAside:
    """A loader for :func:`pretrain` (which reads images only) that keeps each batch's labels."""

    def __init__(self, loader) -> None:
        self.loader, self.y = loader, None

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.loader.set_epoch(epoch)

    def __iter__(self):
        for x, y, idx in self.loader:
            self.y = y
            yield x, y, idx


@register("tofd", section="2.2.2")
class TOFD(Distiller):
    """Task-oriented feature distillation (Zhang et al. 2020a): fit the features auxiliary classifiers use.

    Student and teacher get an :class:`AuxClassifier` on stages 1 and 2; the
    network's own pooling and classifier serve stage 3. For each of the three
    classifiers ``i``: ``CE(l_S^i, t)``, the soft cross-entropy to the
    teacher's classifier ``i`` at temperature ``T(e) = 1 + T_rise (e + 1) /
    E`` (rising over the run), and ``||W_i e_S^i - e_T^i||_2`` between the
    task-oriented features, through a linear resizing layer ``W_i`` (no
    bias); plus the orthogonal loss on every ``W_i``. ``L = ce_weight sum CE
    + kd_weight sum soft-CE + tofd_weight sum ||.|| + orth_weight orth``.

    Defaults: the authors' ``distill.py`` (alpha 0.05, beta 0.03, t 3, every
    classifier's CE and soft-CE weighted 1; their 250 epochs give ``E``), a
    step per batch (their released file steps once per epoch, an indentation
    slip). Difference: their teacher checkpoint holds trained auxiliary
    classifiers; the book's teacher is a plain network, so its classifiers
    are trained in :meth:`prepare` on the frozen teacher, on the labels, for
    ``init_epochs`` (SGD at ``init_lr``; a choice of this book, scaled like
    FSP's stage). The student's are trained with it; all are dropped at
    deployment.
    """

    epoch_args = ("init_epochs",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        kd_weight: float = 1.0,
        tofd_weight: float = 0.05,
        orth_weight: float = 0.03,
        T_rise: float = 3.0,
        init_epochs: int = 30,
        init_lr: float = 0.05,
    ) -> None:
        check_weights(
            ce_weight=ce_weight,
            kd_weight=kd_weight,
            tofd_weight=tofd_weight,
            orth_weight=orth_weight,
        )
        if T_rise < 0:
            raise ValueError(f"T_rise must be >= 0, got {T_rise}")
        check_init(init_epochs, init_lr)
        super().__init__(student, teacher)
        self.ce_weight, self.kd_weight = ce_weight, kd_weight
        self.tofd_weight, self.orth_weight, self.T_rise = (
            tofd_weight,
            orth_weight,
            T_rise,
        )
        self.init_epochs, self.init_lr = int(init_epochs), init_lr
        self.student_layers = ("layer1", "layer2", "pool")
        self.teacher_layers = ("layer1", "layer2", "pool")
        self.T = 1.0 + T_rise  # the last epoch's; set by on_epoch in training

    def setup(self, data) -> None:
        shapes_s, shapes_t = paired_shapes(
            self, data, ("layer1", "layer2", "layer3"), ("layer1", "layer2", "layer3")
        )
        k = data.info.classes
        c_s, c_t = [s[0] for s in shapes_s], [s[0] for s in shapes_t]
        device = next(self.student.parameters()).device
        self.heads_s = nn.ModuleList(AuxClassifier(c_s[i:], k) for i in (0, 1))
        self.heads_t = nn.ModuleList(AuxClassifier(c_t[i:], k) for i in (0, 1))
        self.links = nn.ModuleList(
            nn.Linear(c_s[-1], c_t[-1], bias=False) for _ in range(3)
        )
        self.heads_s.to(device), self.heads_t.to(device), self.links.to(device)
        # The teacher's classifiers train only in prepare, then stay frozen
        # (and out of the optimiser, fresh or resumed).
        self.heads_t.requires_grad_(False)

    def train(self, mode: bool = True) -> TOFD:
        super().train(mode)
        if hasattr(self, "heads_t"):
            self.heads_t.eval()
        return self

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.T = 1.0 + self.T_rise * (epoch + 1) / epochs

    def teacher_classifiers(self, t: dict) -> tuple[list[Tensor], list[Tensor]]:
        """The teacher's three classifiers' logits and task-oriented features."""
        with torch.no_grad():
            out = [head(t[k]) for head, k in zip(self.heads_t, _AUX, strict=True)]
        return [o[0] for o in out] + [t["logits"]], [o[1] for o in out] + [t["pool"]]

    def prepare(self, loader, cfg=None) -> None:
        if self.init_epochs == 0:
            return
        self.heads_t.requires_grad_(True)
        self.heads_t.train()
        batch = _LabelsAside(loader)

        def head_loss(x: Tensor) -> Tensor:
            t = self.teacher_outputs(x)
            return sum(
                F.cross_entropy(head(t[k])[0], batch.y)
                for head, k in zip(self.heads_t, _AUX, strict=True)
            )

        pretrain(
            "tofd stage 1 (the teacher's auxiliary classifiers, on the labels)",
            batch,
            self.heads_t.parameters(),
            head_loss,
            self.init_epochs,
            self.init_lr,
            cfg=cfg,
        )
        self.heads_t.requires_grad_(False)
        self.heads_t.eval()

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        with capture(self.student, ("layer1", "layer2", "pool")) as f:
            logits_s = self.student(x)
        out_s = [head(f[k]) for head, k in zip(self.heads_s, _AUX, strict=True)]
        logits = [o[0] for o in out_s] + [logits_s]
        embs_s = [link(o[1]) for link, o in zip(self.links, out_s, strict=False)]
        embs_s.append(self.links[2](f["pool"]))
        logits_t, embs_t = self.teacher_classifiers(
            teacher_features(self, x, teacher_out)
        )
        return logits_s, {
            "ce": self.ce_weight * sum(F.cross_entropy(lg, y) for lg in logits),
            "kd": self.kd_weight
            * sum(
                tofd_kd_loss(s, t, self.T)
                for s, t in zip(logits, logits_t, strict=True)
            ),
            "tofd": self.tofd_weight * tofd_feature_loss(embs_s, embs_t),
            "orth": self.orth_weight * orthogonal_loss([w.weight for w in self.links]),
        }


def mgd_assignment(cost: np.ndarray, sparse: bool = False) -> np.ndarray:
    """MGD's matching: teacher channels assigned to student channels at least cost.

    ``cost`` ``(C_s, C_t)``, ``C_t >= C_s``. Without ``sparse``, the matrix is
    stacked ``C_t // C_s`` times (one copy per group) and restricted to its
    first ``G C_s`` teacher channels when ``C_s`` does not divide ``C_t`` (the
    code's "shave"); entry ``g C_s + c`` of the result is the teacher channel
    of student channel ``c`` in group ``g``, each teacher channel used once.
    With ``sparse``, one teacher channel per student channel, the rest unused.
    The Hungarian solution of SciPy on the float costs (the authors' OR-Tools
    solver rounds ``1e5`` times the cost to integers).
    """
    c_s, c_t = cost.shape
    if c_t < c_s:
        raise ValueError(
            f"MGD needs at least as many teacher channels as student channels, "
            f"got {c_t} teacher and {c_s} student channels"
        )
    if not sparse:
        groups = c_t // c_s
        cost = np.tile(cost, (groups, 1))[:, : groups * c_s]
    # imported here: SciPy's optimisers would add half a second to `import kdutils`
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


@register("mgd", section="2.2.2")
class MGD(Distiller):
    """Matching guided distillation (Yue et al. 2020): matched teacher channels, reduced, then partial L2.

    At each stage end (pre-ReLU, the last block's sum) the cost of pairing
    student channel ``c`` with teacher channel ``c'`` is ``2 - 2 cos`` of
    their spatially L2-normalised maps, averaged over the first 20000 training
    images (both networks in eval mode); :func:`mgd_assignment` solves the
    matching before the first epoch and then every ``update_freq`` epochs.
    Each step, the matched teacher channels are reduced to one per student
    channel (``reducer``: ``amp``, ``sp``, ``rd`` or ``sm``) and the student's
    maps, after a batch norm of MGD's own, are fitted by Heo et al.'s partial
    L2 with the teacher's margins (:func:`~kdutils.losses.mgd_loss`).
    ``L = ce_weight CE + mgd_weight mgd_loss``.

    Defaults: the authors' code (``--mgd-reducer amp``, ``--mgd-update-freq
    2``, no KD, stage weights 1/4, 1/2, 1). Their code has no CIFAR script; its
    ``--loss-factor 1e4`` is "for input size 224", so ``mgd_weight`` is 1e-3,
    the factor of Heo et al.'s CIFAR code on which MGD's loss builds.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        ce_weight: float = 1.0,
        mgd_weight: float = 1e-3,
        reducer: str = "amp",
        update_freq: int = 2,
    ) -> None:
        check_weights(ce_weight=ce_weight, mgd_weight=mgd_weight)
        if reducer not in ("amp", "sp", "rd", "sm"):
            raise ValueError(f"reducer must be amp, sp, rd or sm, got {reducer!r}")
        if update_freq < 1:
            raise ValueError(f"update_freq must be >= 1, got {update_freq}")
        super().__init__(student, teacher)
        self.ce_weight, self.mgd_weight = ce_weight, mgd_weight
        self.reducer, self.update_freq = reducer, int(update_freq)
        self.student_layers = tuple(student.stage_layers(pre_relu=True))
        self.teacher_layers = tuple(teacher.stage_layers(pre_relu=True))
        n = len(teacher.layer1)
        for i, stage in enumerate((teacher.layer1, teacher.layer2, teacher.layer3)):
            bn = stage[n - 1].bn2  # the batch norm before the stage's last ReLU
            self.register_buffer(f"margin{i}", overhaul_margin(bn.weight, bn.bias))
        self._data = None

    def setup(self, data) -> None:
        shapes_s, shapes_t = paired_shapes(
            self, data, self.student_layers, self.teacher_layers
        )
        device = next(self.student.parameters()).device
        for i, (ss, st) in enumerate(zip(shapes_s, shapes_t, strict=True)):
            if ss[1:] != st[1:] or st[0] < ss[0]:
                raise ValueError(
                    f"MGD: stage {i + 1} has student {ss} and teacher {st}; MGD needs "
                    "one spatial size and at least as many teacher channels"
                )
            rows = ss[0] if self.reducer == "sm" else st[0] // ss[0] * ss[0]
            # Until the first matching: teacher channel r for row r.
            self.register_buffer(f"guided{i}", torch.arange(rows, device=device))
        self.bns = nn.ModuleList(nn.BatchNorm2d(s[0]) for s in shapes_s).to(device)
        self._data = data

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{i}") for i in range(3)]

    def guided(self) -> list[Tensor]:
        return [getattr(self, f"guided{i}") for i in range(3)]

    @torch.no_grad()
    def matching_cost(self, images: Tensor, batch_size: int = 256) -> list[np.ndarray]:
        """Per stage, the mean ``2 - 2 cos`` cost ``(C_s, C_t)`` over ``images`` (normalised)."""
        was_training = self.student.training
        self.student.eval()
        device = next(self.student.parameters()).device
        costs: list = [0.0, 0.0, 0.0]
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device)
            _, fs = student_features(self, x, self.student_layers)
            with capture(self.teacher, self.teacher_layers) as ft:
                self.teacher.forward(x)
            for i, (s, k) in enumerate(zip(fs, self.teacher_layers, strict=True)):
                s = F.normalize(s.flatten(2).double(), dim=2)
                t = F.normalize(ft[k].flatten(2).double(), dim=2)
                costs[i] = costs[i] + (2 - 2 * s @ t.transpose(1, 2)).sum(0)
        self.student.train(was_training)
        return [(c / len(images)).cpu().numpy() for c in costs]

    def update_matching(self) -> None:
        """Solve the assignment on the first 20000 training images (the authors' cap)."""
        images = normalize(self._data.images[:20000], self._data.info)
        for i, cost in enumerate(self.matching_cost(images)):
            cols = mgd_assignment(cost, sparse=self.reducer == "sm")
            getattr(self, f"guided{i}").copy_(torch.from_numpy(cols))

    def on_epoch(self, epoch: int, epochs: int) -> None:
        if self._data is not None and epoch % self.update_freq == 0:
            self.update_matching()

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, feats_s = student_features(self, x, self.student_layers)
        t = teacher_features(self, x, teacher_out)
        feats_s = [bn(f) for bn, f in zip(self.bns, feats_s, strict=True)]
        feats_t = [t[k] for k in self.teacher_layers]
        loss = mgd_loss(feats_s, feats_t, self.margins(), self.guided(), self.reducer)
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "mgd": self.mgd_weight * loss,
        }
