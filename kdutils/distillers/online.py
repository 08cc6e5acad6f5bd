"""Online distillation, survey section 2.3.1, Eq. (5).

No pre-trained teacher: several students learn together and teach each other,
``L = sum_k L_t(l_k, t) + sum_{i<j} L_KD(l_i, l_j)``. The other students are
trainable submodules of the Distiller, so the trainer's optimizer trains them
with the student; checkpoints keep them. What is evaluated, reported and saved
is always one deployable network, ``self.student``:

- ``dml``: K independent peers of the student's architecture; peer 0 is the
  student.
- ``one``: a shared trunk (stem, layer1, layer2) with m branches (layer3, pool,
  fc); the student is the trunk plus branch 0.
- ``okddip``: a shared trunk with m peer branches and a group leader branch;
  the student is the trunk plus the leader (the paper deploys the leader).
- ``ffl``: a shared trunk with m branches and a classifier of their fused
  feature maps; the student is the trunk plus branch 0.

Every method names the student's terms ``ce`` and ``kl`` and the other
members' terms ``peers_*`` (``branches_*`` for ONE and FFL), so the student's
own training loss can be read apart from the group's. Each Distiller's
``members()`` gives every peer or branch as a plain classifier.

The family is split in two modules by how its students are built: this
one holds DML, whose students are independent peers, and what the family
shares (:func:`fresh_copy`, :func:`member_metrics`);
:mod:`~kdutils.distillers.online_branches` holds ONE, OKDDip and FFL, whose
students are branches on a shared trunk. Both draw on the losses of
:mod:`kdutils.losses.online`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_T
from ..inference import predict_logits
from ..losses import dml_kl_losses
from .base import Distiller, check_weights, register

__all__ = ["DML", "fresh_copy"]


def fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with newly drawn parameters.

    Initialised as :mod:`kdutils.models` initialises a ResNet (convolutions:
    Kaiming normal, fan-out; batch norms: 1 and 0, fresh running statistics;
    linear layers: PyTorch's default), from a seed drawn from torch's global
    generator, so runs are reproducible and the global stream moves by one
    draw per copy. Parameters are drawn on the CPU (the same values whatever
    the device); a module on the meta device is copied as it is.
    """
    clone = copy.deepcopy(module)
    seed = int(torch.randint(0, 2**62, (), device="cpu"))
    first = next(clone.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    if device.type == "meta":
        return clone
    clone.to("cpu")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for m in clone.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(
                        m.weight, mode="fan_out", nonlinearity="relu"
                    )
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    m.reset_parameters()
                elif hasattr(m, "reset_parameters") and any(
                    True for _ in m.parameters(recurse=False)
                ):
                    m.reset_parameters()
    return clone.to(device)


# Online methods measure their members after every epoch on this many test
# images (a fixed subset): about a second per epoch for three ResNet8s on a CPU.
METRIC_IMAGES = 2000


@torch.no_grad()
def member_metrics(members: list[nn.Module], test, n: int = METRIC_IMAGES) -> dict:
    """How a group of students agrees, on the first ``n`` test images of a
    fixed permutation: ``acc<i>`` (member i's accuracy; 0 is the student),
    ``ensemble_acc`` (the average of their probabilities), ``agreement`` (the
    fraction of images on which two members predict the same class, averaged
    over pairs) and ``pair_kl`` (KL(p_i || p_j) at T = 1, averaged over
    ordered pairs: how different their whole predictions are)."""

    sub = test.subset(n)
    y = sub.labels
    logits = [predict_logits(m, sub).double() for m in members]
    logp = [F.log_softmax(z, 1) for z in logits]
    out = {
        f"acc{i}": (z.argmax(1) == y).double().mean().item()
        for i, z in enumerate(logits)
    }
    probs = torch.stack([lp.exp() for lp in logp]).mean(0)
    out["ensemble_acc"] = (probs.argmax(1) == y).double().mean().item()
    pairs = [(i, j) for i in range(len(logits)) for j in range(len(logits)) if i != j]
    out["agreement"] = sum(
        (logits[i].argmax(1) == logits[j].argmax(1)).double().mean().item()
        for i, j in pairs
    ) / len(pairs)
    out["pair_kl"] = sum(
        (logp[i].exp() * (logp[i] - logp[j])).sum(1).mean().item() for i, j in pairs
    ) / len(pairs)
    return out


@register("dml", section="2.3.1")
class DML(Distiller):
    """Deep mutual learning: peers teach each other (Zhang et al. 2018).

    ``num_peers`` networks of the student's architecture, peer 0 being the
    student and the others fresh copies (:func:`fresh_copy`). Peer k's loss is
    ``ce_weight * CE(z_k, y) + kl_weight * T^2/(K-1) sum_{l != k} KL(p_l || p_k)``
    with the other peers' predictions detached (:func:`dml_kl_losses`).

    Update order: the paper updates the peers in turn, recomputing the
    predictions after each update; here all peers take one optimizer step on
    the summed losses. Because every target is detached, each peer's gradient
    is exactly that of its own loss with the others' current predictions,
    which is the paper's step for peer 1 and differs for the later peers only
    in that they see predictions from before, not after, the earlier peers'
    step on the same batch (the usual PyTorch implementation, and OKDDip's DML
    baseline). Defaults: the paper's T = 1 and unit weights; three peers as in
    Table 1's "DML (3 students)". Terms: ``ce`` and ``kl`` (the student),
    ``peers_ce`` and ``peers_kl`` (the other peers, summed).
    """

    needs_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        num_peers: int = 3,
        T: float = 1.0,
        ce_weight: float = 1.0,
        kl_weight: float = 1.0,
    ) -> None:
        check_int("num_peers", num_peers, 2)
        check_T(T)
        check_weights(ce_weight=ce_weight, kl_weight=kl_weight)
        super().__init__(student, None)
        self.num_peers, self.T = num_peers, T
        self.ce_weight, self.kl_weight = ce_weight, kl_weight
        self.peers = nn.ModuleList(fresh_copy(student) for _ in range(num_peers - 1))

    def members(self) -> list[nn.Module]:
        """Every peer as a plain classifier, the student first."""
        return [self.student, *self.peers]

    def epoch_metrics(self, test) -> dict[str, float]:
        """:func:`member_metrics` of the peers."""
        return member_metrics(self.members(), test)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits = [m(x) for m in self.members()]
        kls = dml_kl_losses(logits, self.T)
        ces = [F.cross_entropy(z, y) for z in logits]
        return logits[0], {
            "ce": self.ce_weight * ces[0],
            "kl": self.kl_weight * kls[0],
            "peers_ce": self.ce_weight * sum(ces[1:]),
            "peers_kl": self.kl_weight * sum(kls[1:]),
        }
