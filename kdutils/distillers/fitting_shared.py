"""Fitting feature maps by sharing or swapping layers, the third part of survey section 2.2.1.

The survey ends its section 2.2.1 with three methods in which the two
networks do not only compare their feature maps but *share* them: knowledge
projection feeds the teacher's lower layers, through a learned projection,
into the student's upper layers; rocket launching trains a light net and a
booster net together on shared lower layers; interactive KD swaps student
stages for the teacher's at random during training. The first two modules of
the family are :mod:`~kdutils.distillers.fitting` (FitNet, SSKD) and
:mod:`~kdutils.distillers.fitting_added` (AB, FT, VID).

The three methods cut a CIFAR ResNet (:class:`kdutils.models.ResNet`) at its
stages, ``stem``, ``layer1``, ``layer2``, ``layer3``, then ``pool`` and
``fc``; a network without them raises a ``ValueError``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int
from ..losses import rocket_hint_loss
from ..models import ResNet
from .base import Distiller, check_weights, register
from .features import layer_shapes
from .online import member_metrics

__all__ = ["KnowledgeProjection", "Rocket", "IAKD", "run_from"]

# A CIFAR ResNet's forward, in order: the points where these methods cut it.
STAGES = ("stem", "layer1", "layer2", "layer3")
_HEAD = ("pool", "fc")


def _check_resnet(model: nn.Module, what: str) -> None:
    missing = [n for n in (*STAGES, *_HEAD) if not hasattr(model, n)]
    if missing:
        raise ValueError(
            f"the {what} ({type(model).__name__}) has no {missing}: these methods "
            "cut a CIFAR ResNet at its stages"
        )


def _check_stage(layer: str, allowed: tuple[str, ...], name: str) -> None:
    if layer not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {layer!r}")


def run_from(model: nn.Module, layer: str, h: Tensor) -> Tensor:
    """The logits of ``model`` when the output of ``layer`` is ``h``: the rest of its forward."""
    for name in (*STAGES[STAGES.index(layer) + 1 :], *_HEAD):
        h = getattr(model, name)(h)
    return h


def _linear_decay(start: float, epoch: int, epochs: int) -> float:
    # ``start`` at epoch 0, falling linearly to 0 at epoch ``epochs`` (0: no decay).
    if epochs == 0:
        return start
    return start * max(0.0, 1.0 - epoch / epochs)


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out))


@register(
    "kp",
    section="2.2.1",
    status="stand-in",
    note=(
        "knowledge projection (Zhang, Ning & He 2017): one fixed "
        "teacher layer and injection point instead of the paper's search over "
        "layer pairs, and a linear decay of the projection route's weight for its "
        "iterative pruning of that route"
    ),
)
class KnowledgeProjection(Distiller):
    """Knowledge projection: the teacher's lower layers, projected, feed the student's upper layers.

    Two routes share the student's layers above ``layer``. The student's own
    route is the student; the *projection route* runs the frozen teacher up
    to ``layer``, projects its map ``f_T`` with a learned 1x1 convolution
    ``P`` (+ BN + ReLU) to the student's channels at ``layer`` and injects it
    there, in place of the student's own map: ``l_P = g_S(P(f_T))``, with
    ``g_S`` the student above ``layer``. The loss is

    ``L = ce_weight CE(l_S, t) + lambda(e) CE(l_P, t)``,

    with ``lambda(e)`` falling linearly from ``proj_weight`` at the first
    epoch to 0 at ``prune_epochs`` (of the reference 240, scaled to the run):
    the projection route teaches the upper layers first and is then cut away,
    leaving the student to train alone, the survey's two stages (teacher's
    lower part joined to the student's upper part, then the whole student).

    Choices of this book (the paper selects the teacher layer and the
    injection layer by evaluating the joint loss over candidate pairs, and
    prunes the route iteratively): the pair is fixed to the output of the
    same stage of both networks (``layer1`` by default: the teacher's shallow
    part, the student's deep part); the pruning is the linear decay over half
    of the reference run. The teacher stays frozen. Terms: ``ce`` and
    ``proj_ce`` (0 once the route is cut). Outside a schedule (before
    ``on_epoch``) the route has its full weight ``proj_weight``.
    """

    epoch_args = ("prune_epochs",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layer: str = "layer1",
        proj_weight: float = 1.0,
        ce_weight: float = 1.0,
        prune_epochs: int = 120,
    ) -> None:
        check_weights(proj_weight=proj_weight, ce_weight=ce_weight)
        _check_stage(layer, STAGES[:3], "layer")
        check_int("prune_epochs", prune_epochs, 0)
        super().__init__(student, teacher)
        _check_resnet(student, "student")
        _check_resnet(teacher, "teacher")
        self.layer, self.proj_weight, self.ce_weight = layer, proj_weight, ce_weight
        self.prune_epochs = prune_epochs
        self.teacher_layers = (layer,)
        self.route_weight = proj_weight
        self.projection: nn.Module | None = None

    def setup(self, data) -> None:
        (s,) = layer_shapes(self.student, [self.layer], data)
        (t,) = layer_shapes(self.teacher, [self.layer], data)
        if s[1:] != t[1:]:
            raise ValueError(
                f"knowledge projection is a 1x1 convolution: teacher {self.layer} "
                f"{t} and student {self.layer} {s} must have the same spatial size"
            )
        self.projection = nn.Sequential(*_conv_bn(t[0], s[0]), nn.ReLU())

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.route_weight = _linear_decay(self.proj_weight, epoch, self.prune_epochs)

    def projected(self, f_t: Tensor) -> Tensor:
        """``P(f_T)``: the teacher's map in the student's channels at ``layer``."""
        if self.projection is None:
            raise RuntimeError("call setup(data) first: it sizes the projection")
        return self.projection(f_t)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        terms = {"ce": self.ce_weight * F.cross_entropy(logits_s, y)}
        if self.route_weight > 0:
            t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
            logits_p = run_from(self.student, self.layer, self.projected(t[self.layer]))
            terms["proj_ce"] = self.route_weight * F.cross_entropy(logits_p, y)
        else:  # the route is cut: nothing runs through it
            terms["proj_ce"] = logits_s.new_zeros(())
        return logits_s, terms


class Booster(nn.Module):
    """Rocket launching's booster above the shared layers: its own stages, pool and fc."""

    def __init__(self, stages: dict[str, nn.Module], pool: nn.Module, fc: nn.Module):
        super().__init__()
        self.stages = nn.ModuleDict(stages)
        self.pool, self.fc = pool, fc

    def forward(self, h: Tensor) -> Tensor:
        for stage in self.stages.values():
            h = stage(h)
        return self.fc(self.pool(h))


@register("rocket", section="2.2.1")
class Rocket(Distiller):
    """Rocket launching (Zhou et al. 2018): a light net and a booster share lower layers and train together.

    No pre-trained teacher: the booster, a deeper network, is trained with
    the light net (the student), on the same batches. Both run on the output
    ``h`` of the shared layers, the student's own ``stem`` up to ``shared``
    (``layer1`` by default); above it the student keeps its stages and the
    booster has its own, with ``booster_scale`` times the student's residual
    blocks per stage (same widths), its own pool and fc. The loss is

    ``L = CE(z, t) + ce_weight CE(l, t) + hint_weight 1/B sum ||l - z||^2``

    with ``l`` the light net's logits and ``z`` the booster's
    (:func:`kdutils.losses.rocket_hint_loss`). With ``grad_block`` (the
    paper's gradient block) ``z`` is detached in the hint: the hint trains
    the light net and the shared layers, never the booster's own layers,
    which learn from the labels alone.

    Defaults from the authors' CIFAR code (``rocket_interval.py`` and its
    README): ``hint_weight`` = 0.03, unit cross-entropy weights, gradient
    block on; ``booster_scale`` = 3 is their booster's 6 blocks per stage over
    the light net's 2 (WRN-40 over WRN-16), so a ResNet20 student gets a
    ResNet56 booster (the survey's pair) and a ResNet8 a ResNet20.

    Where the layers are shared is this book's choice for the CIFAR ResNets.
    The authors' main CIFAR code shares the stem and the convolutions of the
    first blocks of every stage ("interval"), each net with its own batch
    norms; their "bottom" variant makes the light net the booster's first two
    stages with a head of its own. Here the student is a whole ResNet that
    is deployed alone, so the shared part is its lower stages, batch norms
    included, computed once per batch. Terms: ``ce`` and ``hint`` (the
    student's), ``booster_ce``. :meth:`members` gives both nets as
    classifiers; ``epoch_metrics`` measures them after every epoch.
    """

    needs_teacher = False

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None = None,
        shared: str = "layer1",
        booster_scale: int = 3,
        hint_weight: float = 0.03,
        ce_weight: float = 1.0,
        grad_block: bool = True,
    ) -> None:
        _check_stage(shared, STAGES[:3], "shared")
        check_int("booster_scale", booster_scale, 1)
        check_weights(hint_weight=hint_weight, ce_weight=ce_weight)
        if not isinstance(grad_block, bool):
            raise ValueError(f"grad_block must be True or False, got {grad_block!r}")
        super().__init__(student, None)
        _check_resnet(student, "student")
        self.shared, self.booster_scale = shared, booster_scale
        self.hint_weight, self.ce_weight, self.grad_block = (
            hint_weight,
            ce_weight,
            grad_block,
        )
        self.booster = self._build_booster(student)

    def _build_booster(self, student: nn.Module) -> Booster:
        blocks = len(student.layer1) * self.booster_scale
        conv0 = student.stem[0]
        # Drawn from a seed of torch's global stream, as the online methods' peers.
        seed = int(torch.randint(0, 2**62, (), device="cpu"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            full = ResNet(
                6 * blocks + 2,
                student.widths,
                num_classes=student.fc.out_features,
                in_channels=conv0.in_channels,
            )
        above = STAGES[STAGES.index(self.shared) + 1 :]
        return Booster({n: getattr(full, n) for n in above}, full.pool, full.fc)

    def shared_features(self, x: Tensor) -> Tensor:
        """``h``: the output of the shared layers (the student's, up to ``shared``)."""
        for name in STAGES[: STAGES.index(self.shared) + 1]:
            x = getattr(self.student, name)(x)
        return x

    def members(self) -> list[nn.Module]:
        """The light net (the student) and the booster, each a plain classifier."""
        lower = [
            getattr(self.student, n) for n in STAGES[: STAGES.index(self.shared) + 1]
        ]
        return [self.student, nn.Sequential(*lower, self.booster)]

    def epoch_metrics(self, test) -> dict[str, float]:
        """:func:`~kdutils.distillers.online.member_metrics`: ``acc0`` the light net's, ``acc1`` the booster's."""
        return member_metrics(self.members(), test)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        h = self.shared_features(x)
        logits_l = run_from(self.student, self.shared, h)
        logits_b = self.booster(h)
        target = logits_b.detach() if self.grad_block else logits_b
        return logits_l, {
            "ce": self.ce_weight * F.cross_entropy(logits_l, y),
            "hint": self.hint_weight * rocket_hint_loss(logits_l, target),
            "booster_ce": F.cross_entropy(logits_b, y),
        }


@register(
    "iakd",
    section="2.2.1",
    status="stand-in",
    note=(
        "interactive KD (Fu et al. 2021): the swap probability's "
        "schedule (0.5 falling linearly to 0 over the run) and the 1x1 "
        "connectors for unequal widths are this book's choices, not read from "
        "the paper"
    ),
)
class IAKD(Distiller):
    """Interactive KD (Fu et al. 2021): student stages are swapped for the teacher's at random.

    In every training step each of the student's three stages is replaced,
    independently with probability ``p``, by the teacher's stage of the same
    index (frozen: eval mode, no parameter updates, but gradients flow
    through it to the student's stages below). The hybrid network is trained
    on the task loss alone, ``CE(l_hybrid, t)``; the student's blocks learn to
    take the teacher's features as input and to produce features the
    teacher's blocks can continue from. Where the widths differ, a 1x1
    convolution + BN maps the student's map into the teacher stage and one
    maps the teacher stage's output back (trained with the student, used only
    in swapped steps); for the CIFAR ResNets of equal widths they are
    identities. Evaluation and deployment use the student alone.

    ``p`` falls linearly from ``swap_prob`` (0.5) at the first epoch to 0 at
    ``decay_epochs`` (240 of the reference 240: the whole run, scaled to the
    profile), so the student trains on its own more and more towards the
    end, where it is evaluated. These are this book's choices (the registry
    note says so). Outside a schedule (before ``on_epoch``) nothing is
    swapped. The fraction of stages swapped is recorded per epoch as
    ``metric_swapped``. Terms: ``ce``.
    """

    epoch_args = ("decay_epochs",)

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        swap_prob: float = 0.5,
        decay_epochs: int = 240,
    ) -> None:
        if not 0 <= swap_prob <= 1:
            raise ValueError(f"swap_prob must be in [0, 1], got {swap_prob}")
        check_int("decay_epochs", decay_epochs, 0)
        super().__init__(student, teacher)
        _check_resnet(student, "student")
        _check_resnet(teacher, "teacher")
        self.swap_prob, self.decay_epochs = swap_prob, decay_epochs
        self.p = 0.0  # outside a schedule: no swap
        self.into = nn.ModuleList(nn.Identity() for _ in STAGES[1:])
        self.back = nn.ModuleList(nn.Identity() for _ in STAGES[1:])

    def setup(self, data) -> None:
        s = layer_shapes(self.student, STAGES, data)
        t = layer_shapes(self.teacher, STAGES, data)
        for name, a, b in zip(STAGES, s, t, strict=True):
            if a[1:] != b[1:]:
                raise ValueError(
                    f"interactive KD swaps stages of equal map sizes: student {name} "
                    f"{a}, teacher {name} {b}"
                )
        # Stage k reads the previous stage's map (k = 1: the stem's).
        self.into = nn.ModuleList(
            nn.Identity() if s[k][0] == t[k][0] else _conv_bn(s[k][0], t[k][0])
            for k in range(3)
        )
        self.back = nn.ModuleList(
            nn.Identity() if s[k][0] == t[k][0] else _conv_bn(t[k][0], s[k][0])
            for k in range(1, 4)
        )

    def on_epoch(self, epoch: int, epochs: int) -> None:
        self.p = _linear_decay(self.swap_prob, epoch, self.decay_epochs)

    def hybrid(self, x: Tensor, swaps: list[bool]) -> Tensor:
        """The logits of the student with stage ``k`` the teacher's where ``swaps[k]``."""
        h = self.student.stem(x)
        for k, name in enumerate(STAGES[1:]):
            if swaps[k]:
                h = self.back[k](getattr(self.teacher, name)(self.into[k](h)))
            else:
                h = getattr(self.student, name)(h)
        return self.student.fc(self.student.pool(h))

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if self.training and self.p > 0:
            # One Bernoulli(p) draw per stage, from torch's global CPU stream.
            swaps = (torch.rand(3, device="cpu") < self.p).tolist()
        else:
            swaps = [False, False, False]
        logits = self.hybrid(x, swaps)
        self.step_metrics["swapped"] = torch.tensor(sum(swaps) / 3.0)
        return logits, {"ce": F.cross_entropy(logits, y)}
