"""Online distillation with branches on a shared trunk, survey section 2.3.1, Eq. (5).

The second module of the online family (see :mod:`~kdutils.distillers.online`
for the family and DML, whose students are independent peers): here the
students are branches on the student's trunk, ``stem``, ``layer1`` and
``layer2`` shared by branches of ``layer3``, ``pool`` and ``fc``.

- ``one``: m branches; the student is the trunk plus branch 0.
- ``okddip``: m peer branches and a group leader branch; the student is the
  trunk plus the leader (the paper deploys the leader).
- ``ffl``: m branches and a classifier of their fused feature maps; the
  student is the trunk plus branch 0.

Both modules draw on the losses of :mod:`kdutils.losses.online`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_T
from ..losses import (
    gated_ensemble,
    online_kl_loss,
    peer_attention_targets,
    sigmoid_rampup,
)
from ..models import capture
from .base import Distiller, check_weights, register
from .online import fresh_copy, member_metrics

__all__ = ["ONE", "OKDDip", "FFL", "FusionModule"]

# ONE's and OKDDip's code ramp their KL terms up over 80 of their 300 epochs;
# the fraction carries that schedule over to any number of epochs.
_RAMPUP = 80 / 300


def _check_rampup(rampup: float) -> None:
    if not 0 <= rampup <= 1:
        raise ValueError(
            f"rampup (a fraction of the epochs) must be in [0, 1], got {rampup}"
        )


def _check_branchable(model: nn.Module, method: str) -> int:
    """The model must have ``stem``, ``layer1``, ``layer2``, ``layer3``, ``pool``
    and a linear ``fc`` (a :class:`kdutils.models.ResNet`); returns the channel
    count of ``layer2``'s output (``layer3``'s input)."""
    names = ("stem", "layer1", "layer2", "layer3", "pool")
    missing = [n for n in names if not isinstance(getattr(model, n, None), nn.Module)]
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        missing.append("fc (a linear layer)")
    conv = None
    if not missing:
        layer3 = model.layer3.modules()
        conv = next((m for m in layer3 if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            missing.append("convolution in layer3")
    if missing:
        raise ValueError(
            f"{method} builds its branches on a CIFAR ResNet (a trunk of stem, "
            "layer1 and layer2 shared by branches of layer3, pool and fc); "
            f"{type(model).__name__} has no {', '.join(missing)}"
        )
    return conv.in_channels


class _Branch(nn.Module):
    """A plain classifier: the student's trunk (up to ``layer2``), then one
    branch's ``layer3``, the student's ``pool`` and the branch's ``fc``.

    Built on demand to evaluate a branch alone; it shares (does not copy) the
    modules, so it is never registered inside the Distiller."""

    def __init__(self, student: nn.Module, layer3: nn.Module, fc: nn.Module) -> None:
        super().__init__()
        self.student, self.layer3, self.fc = student, layer3, fc

    def forward(self, x: Tensor) -> Tensor:
        s = self.student
        h = s.layer2(s.layer1(s.stem(x)))
        return self.fc(s.pool(self.layer3(h)))


class _Branched(Distiller):
    """Online methods whose students are branches on the student's trunk.

    ``_add_branches(count)`` adds ``count`` freshly initialised ``layer3`` +
    ``fc`` branches; the KL weight ramps up over the first ``rampup`` of the
    epochs (``self.ramp``, set by ``on_epoch``).
    """

    needs_teacher = False

    def _add_branches(self, count: int) -> None:
        self.layer3s = nn.ModuleList(
            fresh_copy(self.student.layer3) for _ in range(count)
        )
        self.fcs = nn.ModuleList(fresh_copy(self.student.fc) for _ in range(count))
        self.ramp = 1.0

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.ramp = sigmoid_rampup(epoch, self.rampup * epochs)

    def members(self) -> list[nn.Module]:
        """The student, then every branch, as plain classifiers (sharing the trunk)."""
        return [self.student] + [
            _Branch(self.student, l3, fc)
            for l3, fc in zip(self.layer3s, self.fcs, strict=True)
        ]

    def epoch_metrics(self, test) -> dict[str, float]:
        """:func:`member_metrics` of the student and its branches."""
        return member_metrics(self.members(), test)


@register("one", section="2.3.1")
class ONE(_Branched):
    """On-the-fly native ensemble: gated branches teach each branch (Lan et al. 2018).

    The student's stem, layer1 and layer2 are a trunk shared by
    ``num_branches`` branches (layer3, pool, fc): branch 0 is the student's
    own, the others fresh copies. A gate (global average of the trunk's
    output -> linear -> batch norm -> ReLU -> softmax over branches, as in the
    authors' code) weights the branches' logits into the ensemble teacher
    ``z_e = sum_i g_i z_i``. Loss: ``ce_weight * sum_i CE(z_i, y) +
    ensemble_weight * CE(z_e, y) + kl_weight * w(epoch) * sum_i T^2 KL(q_e ||
    p_i)`` (:func:`online_kl_loss`, 1e-7 added to the ensemble's
    probabilities), with the ensemble detached in the KL terms (the authors'
    ``KLLoss``) so that only its CE trains the gate. ``w`` is the authors'
    sigmoid ramp-up, ``exp(-5 (1 - e/L)^2)`` over the first ``rampup`` of the
    epochs (their 80 of 300); it is 1 until the trainer's first ``on_epoch``.
    Defaults: the authors' code (T = 3, unit weights, three branches: Table 1's
    "3 students" for ONE). The deployed student is the trunk with
    branch 0. Terms: ``ce``, ``kl`` (branch 0), ``branches_ce``,
    ``branches_kl`` (the others, summed), ``ensemble_ce``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        num_branches: int = 3,
        T: float = 3.0,
        ce_weight: float = 1.0,
        ensemble_weight: float = 1.0,
        kl_weight: float = 1.0,
        rampup: float = _RAMPUP,
    ) -> None:
        check_int("num_branches", num_branches, 2)
        check_T(T)
        _check_rampup(rampup)
        check_weights(
            ce_weight=ce_weight, ensemble_weight=ensemble_weight, kl_weight=kl_weight
        )
        channels = _check_branchable(student, "ONE")
        super().__init__(student, None)
        self.num_branches, self.T, self.rampup = num_branches, T, rampup
        self.ce_weight, self.ensemble_weight = ce_weight, ensemble_weight
        self.kl_weight = kl_weight
        self._add_branches(num_branches - 1)
        self.gate = nn.Sequential(
            nn.Linear(channels, num_branches), nn.BatchNorm1d(num_branches), nn.ReLU()
        )

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """All branches' logits ``(B, m, K)`` and the gate ``(B, m)``."""
        if self.training and x.shape[0] < 2:
            raise ValueError(
                "ONE's gate has a batch norm: a training batch needs at least 2 samples"
            )
        with capture(self.student, ["layer2"]) as feats:
            z0 = self.student(x)
        h = feats["layer2"]
        pool = self.student.pool
        zs = [z0] + [
            fc(pool(l3(h))) for l3, fc in zip(self.layer3s, self.fcs, strict=True)
        ]
        gate = torch.softmax(self.gate(F.adaptive_avg_pool2d(h, 1).flatten(1)), dim=1)
        return torch.stack(zs, 1), gate

    @torch.no_grad()
    def ensemble_logits(self, x: Tensor) -> Tensor:
        """The gated ensemble's logits (the online teacher)."""
        return gated_ensemble(*self.branches(x))

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits, gate = self.branches(x)
        ensemble = gated_ensemble(logits, gate)
        target = ensemble.detach()
        ces = [F.cross_entropy(logits[:, i], y) for i in range(self.num_branches)]
        kls = [
            online_kl_loss(logits[:, i], target, self.T)
            for i in range(self.num_branches)
        ]
        kl_weight = self.kl_weight * self.ramp
        return logits[:, 0], {
            "ce": self.ce_weight * ces[0],
            "kl": kl_weight * kls[0],
            "branches_ce": self.ce_weight * sum(ces[1:]),
            "branches_kl": kl_weight * sum(kls[1:]),
            "ensemble_ce": self.ensemble_weight * F.cross_entropy(ensemble, y),
        }


@register("okddip", section="2.3.1")
class OKDDip(_Branched):
    """Online distillation with diverse peers and a group leader (Chen et al. 2020).

    The student's stem, layer1 and layer2 are a trunk shared by ``num_peers``
    peer branches (layer3, pool, fc; fresh copies) and the group leader, the
    student's own layer3, pool and fc. Two levels: each peer i learns from
    its own target ``t_i = sum_j alpha_ij z_j`` (:func:`peer_attention_targets`),
    ``alpha = softmax(q k^T)`` with ``q, k`` linear projections (no bias,
    ``C // proj_factor`` dimensions, shared by the peers) of the peers' pooled
    layer3 embeddings; the leader learns from the mean of the peers' logits.
    Loss, as in the authors' ``train_GL.py``: ``ce_weight * (sum_i CE(z_i, y)
    + CE(z_leader, y)) + kl_weight * w(epoch) * (sum_i KL_T(t_i || z_i) +
    KL_T(mean_i z_i || z_leader))`` with :func:`online_kl_loss` (T^2, 1e-7).
    Nothing is detached, as in their code: the peers' KL terms reach the
    other peers and the attention projections through the targets (the only
    way the projections learn), and the leader's term reaches the peers.
    ``w`` is the sigmoid ramp-up over the first ``rampup`` of the epochs
    (their 80 of 300; 1 until the trainer's first ``on_epoch``). Defaults:
    the authors' code (T = 3, alpha = ``kl_weight`` = 1, projection factor 8,
    four branches: three peers, as in Table 1's "OKDDip (3 students)", and
    the leader). The deployed student is the trunk with the leader, the
    network the paper uses for inference. Terms: ``ce``, ``kl`` (the leader),
    ``peers_ce``, ``peers_kl`` (the peers, summed).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        num_peers: int = 3,
        T: float = 3.0,
        ce_weight: float = 1.0,
        kl_weight: float = 1.0,
        rampup: float = _RAMPUP,
        proj_factor: int = 8,
    ) -> None:
        check_int("num_peers", num_peers, 2)
        check_int("proj_factor", proj_factor, 1)
        check_T(T)
        _check_rampup(rampup)
        check_weights(ce_weight=ce_weight, kl_weight=kl_weight)
        _check_branchable(student, "OKDDip")
        width = student.fc.in_features
        if width // proj_factor < 1:
            raise ValueError(
                f"proj_factor={proj_factor} leaves no dimension for the attention "
                f"projections of {width}-d embeddings"
            )
        super().__init__(student, None)
        self.num_peers, self.T, self.rampup = num_peers, T, rampup
        self.proj_factor = proj_factor
        self.ce_weight, self.kl_weight = ce_weight, kl_weight
        self._add_branches(num_peers)
        self.query = nn.Linear(width, width // proj_factor, bias=False)
        self.key = nn.Linear(width, width // proj_factor, bias=False)
        self.last_attention: Tensor | None = None

    def group(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Leader logits ``(B, K)``, peer logits ``(B, m, K)``, the peers'
        targets ``(B, m, K)`` and attention ``(B, m, m)``."""
        with capture(self.student, ["layer2"]) as feats:
            leader = self.student(x)
        h = feats["layer2"]
        embs = torch.stack([self.student.pool(l3(h)) for l3 in self.layer3s], 1)
        peers = torch.stack([fc(embs[:, i]) for i, fc in enumerate(self.fcs)], 1)
        targets, attention = peer_attention_targets(
            peers, self.query(embs), self.key(embs)
        )
        return leader, peers, targets, attention

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        leader, peers, targets, attention = self.group(x)
        self.last_attention = attention.detach()
        m, kl_weight = self.num_peers, self.kl_weight * self.ramp
        peers_ce = sum(F.cross_entropy(peers[:, i], y) for i in range(m))
        peers_kl = sum(
            online_kl_loss(peers[:, i], targets[:, i], self.T) for i in range(m)
        )
        return leader, {
            "ce": self.ce_weight * F.cross_entropy(leader, y),
            "kl": kl_weight * online_kl_loss(leader, peers.mean(1), self.T),
            "peers_ce": self.ce_weight * peers_ce,
            "peers_kl": kl_weight * peers_kl,
        }


class FusionModule(nn.Module):
    """FFL's fusion classifier: the branches' last feature maps, concatenated
    (``m C`` channels), a depthwise 3x3 convolution, batch norm and ReLU, a
    1x1 convolution to ``C`` channels, batch norm and ReLU, global average
    pooling and a linear classifier (the authors' ``Fusion_module``)."""

    def __init__(self, channels: int, branches: int, num_classes: int) -> None:
        super().__init__()
        wide = channels * branches
        self.conv1 = nn.Conv2d(wide, wide, 3, 1, 1, groups=wide, bias=False)
        self.bn1 = nn.BatchNorm2d(wide)
        self.conv2 = nn.Conv2d(wide, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)
        for m in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, maps: list[Tensor]) -> Tensor:
        x = F.relu(self.bn1(self.conv1(torch.cat(maps, 1))))
        x = F.relu(self.bn2(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


@register("ffl", section="2.3.1")
class FFL(_Branched):
    """Feature fusion learning: a fused classifier and its branches (Kim et al. 2021).

    The student's stem, layer1 and layer2 are a trunk shared by
    ``num_branches`` branches (layer3, pool, fc; branch 0 is the student's,
    the others fresh copies). A :class:`FusionModule` classifies the
    concatenation of the branches' layer3 maps. Loss, as in the authors'
    ``train_FFL.py``: ``ce_weight * sum_i CE(z_i, y) + fusion_weight *
    CE(z_f, y) + kl_weight * w(epoch) * (sum_i KL_T(z_f || z_i) +
    KL_T(mean_i z_i || z_f))`` with :func:`online_kl_loss` (T^2, 1e-7) and
    both targets detached (their ``KLLoss``): the fused classifier teaches
    every branch, the branches' ensemble teaches the fused classifier. ``w``
    is the sigmoid ramp-up over the first ``rampup`` of the epochs (their 80
    of 300; 1 until the trainer's first ``on_epoch``). Defaults: the
    authors' CIFAR code (two branches, T = 3, unit weights). One difference:
    their fusion module has its own optimizer with weight decay 1e-5; here
    the trainer's single optimizer applies the config's weight decay to
    every parameter. The deployed student is the trunk with branch 0.
    Terms: ``ce``, ``kl`` (branch 0), ``branches_ce``, ``branches_kl`` (the
    others, summed), ``fusion_ce``, ``fusion_kl``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        num_branches: int = 2,
        T: float = 3.0,
        ce_weight: float = 1.0,
        fusion_weight: float = 1.0,
        kl_weight: float = 1.0,
        rampup: float = _RAMPUP,
    ) -> None:
        check_int("num_branches", num_branches, 2)
        check_T(T)
        _check_rampup(rampup)
        check_weights(
            ce_weight=ce_weight, fusion_weight=fusion_weight, kl_weight=kl_weight
        )
        _check_branchable(student, "FFL")
        super().__init__(student, None)
        self.num_branches, self.T, self.rampup = num_branches, T, rampup
        self.ce_weight, self.fusion_weight = ce_weight, fusion_weight
        self.kl_weight = kl_weight
        self._add_branches(num_branches - 1)
        fc = student.fc
        self.fusion = FusionModule(fc.in_features, num_branches, fc.out_features)

    def branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """All branches' logits ``(B, m, K)`` and the fused classifier's ``(B, K)``."""
        with capture(self.student, ["layer2", "layer3"]) as feats:
            z0 = self.student(x)
        h, maps = feats["layer2"], [feats["layer3"]]
        zs = [z0]
        for l3, fc in zip(self.layer3s, self.fcs, strict=True):
            maps.append(l3(h))
            zs.append(fc(self.student.pool(maps[-1])))
        return torch.stack(zs, 1), self.fusion(maps)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits, fused = self.branches(x)
        target = fused.detach()
        ces = [F.cross_entropy(logits[:, i], y) for i in range(self.num_branches)]
        kls = [
            online_kl_loss(logits[:, i], target, self.T)
            for i in range(self.num_branches)
        ]
        kl_weight = self.kl_weight * self.ramp
        ensemble = logits.mean(1).detach()
        return logits[:, 0], {
            "ce": self.ce_weight * ces[0],
            "kl": kl_weight * kls[0],
            "branches_ce": self.ce_weight * sum(ces[1:]),
            "branches_kl": kl_weight * sum(kls[1:]),
            "fusion_ce": self.fusion_weight * F.cross_entropy(fused, y),
            "fusion_kl": kl_weight * online_kl_loss(fused, ensemble, self.T),
        }
