"""Pipelines that adjust the architecture with KD in the loop: survey section 3.1.

Three ways of letting distillation shape the student's architecture, each a
plain function a user can call with their own configs or models:

- :func:`channel_planting` grows a thin student group by group and keeps a
  growth only while the KD-trained student improves (Mitsuno et al. 2021).
- :func:`kd_search` scores candidates of a small search space by a short KD
  run and by their cost, in the spirit of "search to distill" (Liu et al.
  2020b); :func:`pareto_front` and :func:`mnas_reward` read the scores.
- :func:`prune_and_recover` prunes a trained network, inserts 1x1
  convolutions and recovers it from a few hundred samples with the unpruned
  network as teacher (few-sample KD, Li et al. 2020b).

Every candidate of the first two is an ordinary cached :func:`kdutils.run`
(a model named by depth and widths, see :func:`kdutils.models.model_name`);
the pruned network has no name and is trained with :func:`kdutils.fit`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .. import data as kdata
from ..config import Config
from ..cost import count_macs, measure_latency
from ..distillers import build
from ..models import ResNet, create_model, model_depth, model_name, num_params
from ..results import Result
from ..train import evaluate, fit, load_split, predict_logits, run, seed_everything
from .registry import pipeline

__all__ = [
    "Candidate",
    "Planting",
    "SearchSpace",
    "candidate_config",
    "train_candidate",
    "channel_planting",
    "kd_search",
    "pareto_front",
    "mnas_reward",
    "with_latency",
    "candidates_table",
    "ConvPointwise",
    "l1_filter_prune",
    "insert_pointwise",
    "absorb_pointwise",
    "fskd_least_squares",
    "recover",
    "prune_and_recover",
]


def _input_shape(dataset: str) -> tuple[int, int, int]:
    info = kdata.DATASETS[dataset]
    return (info.channels, info.size, info.size)


@dataclass
class Candidate:
    """One student architecture, its short-run accuracy (%) and its cost.

    ``params`` and ``macs`` are exact counts for one input of the dataset's
    size; ``latency_ms`` is measured (see :func:`with_latency`) and stays
    ``None`` until then. ``acc_ce`` is the same short run without a teacher,
    when the search was asked for that baseline.
    """

    name: str
    depth: int
    widths: tuple[int, int, int, int]
    dataset: str
    acc: float
    params: int
    macs: int
    result: Result = field(repr=False)
    acc_ce: float | None = None
    result_ce: Result | None = field(default=None, repr=False)
    latency_ms: float | None = None
    latency_iqr_ms: float | None = None

    def model(self) -> ResNet:
        """A freshly initialised model of this architecture (for costs)."""
        c, _, _ = _input_shape(self.dataset)
        return create_model(
            self.name, num_classes=kdata.DATASETS[self.dataset].classes, in_channels=c
        )

    @property
    def wall_seconds(self) -> float:
        """Training time the candidate's run(s) recorded (from the cache too)."""
        runs = [r for r in (self.result, self.result_ce) if r is not None]
        return sum(r.provenance.get("wall_seconds", 0.0) for r in runs)


def candidate_config(cfg: Config, name: str, epochs: int, method: str | None = None):
    """``cfg`` with student ``name`` trained for ``epochs`` (a short run).

    The teacher keeps ``cfg``'s training length (``teacher_epochs``), so a
    short candidate run reuses the teacher that the full-length runs cached.
    The test set is evaluated only after the last epoch.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    short = cfg.replace(
        student=name,
        epochs=epochs,
        eval_every=epochs,
        teacher_epochs=cfg.teacher_epochs or cfg.epochs,
    )
    if method is not None and method != cfg.method:
        short = short.replace(method=method)
    return short


def train_candidate(
    cfg: Config,
    depth: int,
    widths: Sequence[int],
    epochs: int,
    baseline: str | None = None,
    runner: Callable[..., Result] = run,
) -> Candidate:
    """Train (or load) one architecture with ``cfg``'s method for ``epochs``.

    ``baseline`` (e.g. ``"ce"``) trains the same architecture a second time
    with that method, for comparison.
    """
    name = model_name(depth, widths)
    res = runner(candidate_config(cfg, name, epochs), progress=False)
    res_ce = None
    if baseline is not None:
        res_ce = runner(candidate_config(cfg, name, epochs, baseline), progress=False)
    shape = _input_shape(cfg.dataset)
    with torch.device("meta"):
        params = num_params(
            create_model(name, kdata.DATASETS[cfg.dataset].classes, shape[0])
        )
    macs = count_macs(
        create_model(name, kdata.DATASETS[cfg.dataset].classes, shape[0]), shape
    )
    return Candidate(
        name=name,
        depth=depth,
        widths=tuple(int(w) for w in widths),
        dataset=cfg.dataset,
        acc=100 * res.test_acc,
        params=params,
        macs=macs,
        result=res,
        acc_ce=None if res_ce is None else 100 * res_ce.test_acc,
        result_ce=res_ce,
    )


@dataclass
class Planting:
    """The outcome of :func:`channel_planting`.

    ``path``: the accepted students, from the start to the final one.
    ``rounds``: every round's candidates (one per group). ``stopped``: why the
    growth ended. ``grown``: the group grown at each kept step.
    """

    path: list[Candidate]
    rounds: list[list[Candidate]]
    stopped: str
    groups: tuple[tuple[int, ...], ...]
    step: tuple[int, ...]
    grown: list[tuple[int, ...]] = field(default_factory=list)

    @property
    def final(self) -> Candidate:
        return self.path[-1]

    @property
    def candidates(self) -> list[Candidate]:
        """Every architecture trained, the start first."""
        return [self.path[0], *itertools.chain.from_iterable(self.rounds)]


def _check_groups(groups, step) -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    groups = tuple(tuple(int(i) for i in g) for g in groups)
    if not groups or any(not g for g in groups):
        raise ValueError(f"groups must be non-empty tuples of width indices: {groups}")
    flat = [i for g in groups for i in g]
    if any(i < 0 or i > 3 for i in flat):
        raise ValueError(
            f"group indices address the widths (stem, stage1, stage2, stage3) "
            f"and must be in 0..3, got {groups}"
        )
    if len(set(flat)) != len(flat):
        raise ValueError(f"groups must not overlap, got {groups}")
    steps = (step,) * len(groups) if isinstance(step, int) else tuple(step)
    if len(steps) != len(groups):
        raise ValueError(
            f"step has {len(steps)} entries but there are {len(groups)} groups"
        )
    if any(int(s) < 1 for s in steps):
        raise ValueError(f"step must be >= 1 channel, got {step}")
    return groups, tuple(int(s) for s in steps)


@pipeline(
    "channel_planting",
    section="3.1",
    status="stand-in",
    note="Mitsuno et al. 2021: greedy, every candidate trained from scratch "
    "instead of training only the planted channels",
)
def channel_planting(
    cfg: Config,
    start: Sequence[int],
    step: int | Sequence[int] = 4,
    groups: Sequence[Sequence[int]] = ((0, 1), (2,), (3,)),
    epochs: int = 3,
    max_rounds: int = 4,
    min_gain: float = 0.0,
    depth: int | None = None,
    runner: Callable[..., Result] = run,
) -> Planting:
    """Grow a thin student channel group by channel group while KD improves it.

    Channel planting (Mitsuno et al. 2021, :cite:`mitsuno2021channel`; survey
    section 3.1), greedy form: the student's widths ``(stem, stage1, stage2,
    stage3)`` start at ``start``; each round builds one candidate per group by
    adding ``step`` channels to every width in that group, trains each with
    ``cfg``'s method (KD against ``cfg``'s teacher) for ``epochs``, and keeps
    the most accurate candidate if it beats the current student by more than
    ``min_gain`` points; otherwise the growth stops. ``groups`` index the four
    widths; the default ties the stem to stage 1 and treats every stage as a
    group. Depth is ``cfg.student``'s unless ``depth`` is given.

    Unlike the paper, every candidate is trained from scratch (a cached
    :func:`kdutils.run`), not by training only the planted channels of the
    previous network with its weights frozen. Cost: ``1 + rounds * len(groups)``
    runs of ``epochs`` epochs.
    """
    if len(start) != 4 or min(start) < 1:
        raise ValueError(f"start must be 4 positive widths (stem, s1, s2, s3): {start}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")
    groups_t, steps = _check_groups(groups, step)
    depth = model_depth(cfg.student) if depth is None else depth
    current = train_candidate(cfg, depth, start, epochs, runner=runner)
    path, rounds, grown = [current], [], []
    stopped = f"reached max_rounds={max_rounds}"
    for r in range(max_rounds):
        cands = []
        for g, s in zip(groups_t, steps, strict=True):
            widths = [w + s if i in g else w for i, w in enumerate(current.widths)]
            cands.append(train_candidate(cfg, depth, widths, epochs, runner=runner))
        rounds.append(cands)
        i = max(range(len(cands)), key=lambda j: cands[j].acc)  # ties: earlier
        best = cands[i]
        if best.acc > current.acc + min_gain:
            path.append(best)
            grown.append(groups_t[i])
            current = best
        else:
            stopped = (
                f"round {r + 1}: no candidate beat {current.name} "
                f"({current.acc:.2f}%) by more than {min_gain:g} points"
            )
            break
    return Planting(path, rounds, stopped, groups_t, steps, grown)


@dataclass(frozen=True)
class SearchSpace:
    """CIFAR ResNets of ``depths`` and one width per stage (the stem = stage 1).

    The space is the product ``depths x stage1 x stage2 x stage3``; the
    default has 3 * 3 * 3 * 3 = 81 architectures, from 5 thousand to 270
    thousand parameters at 10 classes.
    """

    depths: tuple[int, ...] = (8, 14, 20)
    stage_widths: tuple[tuple[int, ...], ...] = ((4, 8, 16), (8, 16, 32), (16, 32, 64))

    def __post_init__(self) -> None:
        if not self.depths or any((d - 2) % 6 or d < 8 for d in self.depths):
            raise ValueError(f"depths must be 6n+2 >= 8, got {self.depths}")
        if len(self.stage_widths) != 3 or any(
            not ws or min(ws) < 1 for ws in self.stage_widths
        ):
            raise ValueError(
                "stage_widths must be three non-empty tuples of positive widths, "
                f"got {self.stage_widths}"
            )

    def architectures(self) -> list[tuple[int, tuple[int, int, int, int]]]:
        """Every ``(depth, (stem, s1, s2, s3))`` of the space, in a fixed order."""
        return [
            (d, (w1, w1, w2, w3))
            for d in self.depths
            for w1, w2, w3 in itertools.product(*self.stage_widths)
        ]

    @property
    def size(self) -> int:
        return len(self.depths) * len(list(itertools.product(*self.stage_widths)))

    def sample(self, n: int, seed: int = 0) -> list[tuple[int, tuple[int, ...]]]:
        """``n`` distinct architectures drawn uniformly (reproducible by ``seed``)."""
        if not 1 <= n <= self.size:
            raise ValueError(f"n must be in 1..{self.size} (the space's size), got {n}")
        return random.Random(seed).sample(self.architectures(), n)


@pipeline(
    "kd_search",
    section="3.1",
    status="stand-in",
    note="Liu et al. 2020b: random search over a small space instead of an "
    "RL controller with a latency reward",
)
def kd_search(
    cfg: Config,
    space: SearchSpace | None = None,
    n: int = 8,
    epochs: int = 3,
    seed: int = 0,
    baseline: str | None = None,
    runner: Callable[..., Result] = run,
) -> list[Candidate]:
    """Random search of student architectures, each scored by a short KD run.

    In the spirit of Liu et al. 2020b (:cite:`liu2020search`, survey section
    3.1): the reward of an architecture is the accuracy it reaches *when
    distilled* from ``cfg``'s teacher, not when trained alone. ``n``
    architectures are drawn uniformly from ``space`` (seeded by ``seed``) and
    each is trained with ``cfg``'s method for ``epochs`` epochs; ``baseline``
    (e.g. ``"ce"``) trains each a second time without the teacher, to see
    whether KD changes the ranking. The paper searches a large mobile space
    with a reinforcement-learning controller and a latency-aware reward
    (:func:`mnas_reward`); this is random search over a small space. Costs are
    attached with :func:`with_latency` and read with :func:`pareto_front`.
    Cost: ``n`` runs (``2n`` with a baseline) of ``epochs`` epochs.
    """
    space = space or SearchSpace()
    return [
        train_candidate(cfg, d, w, epochs, baseline=baseline, runner=runner)
        for d, w in space.sample(n, seed)
    ]


def _value(item: Any, key: str) -> float:
    v = item[key] if isinstance(item, dict) else getattr(item, key)
    if v is None:
        raise ValueError(f"{key} is not set for {item!r} (measure it first)")
    return float(v)


def pareto_front(items: Sequence[Any], cost: str = "macs", score: str = "acc") -> list:
    """The items no other item beats on both ``cost`` (lower) and ``score`` (higher).

    ``items`` are :class:`Candidate` objects or dicts; returned sorted by cost.
    An item is on the front when every cheaper-or-equal item scores strictly
    less (of equal-cost items, the best one is kept).
    """
    order = sorted(items, key=lambda it: (_value(it, cost), -_value(it, score)))
    front, best = [], float("-inf")
    for it in order:
        if _value(it, score) > best:
            front.append(it)
            best = _value(it, score)
    return front


def mnas_reward(
    acc: float, latency_ms: float, target_ms: float, w: float = -0.07
) -> float:
    """Latency-aware reward ``acc * (latency / target) ** w`` (MnasNet's form).

    Tan et al. 2019 (:cite:`tan2019mnasnet`) with their soft constraint
    ``w = -0.07``; AKD (Liu et al. 2020b) scores KD-trained students with this
    reward. Faster-than-target models gain a little, slower ones lose a little.
    """
    if latency_ms <= 0 or target_ms <= 0:
        raise ValueError(
            f"latency and target must be > 0, got {latency_ms} and {target_ms}"
        )
    return acc * (latency_ms / target_ms) ** w


def with_latency(
    candidates: Sequence[Candidate], batch_size: int = 1, repeats: int = 30
) -> list[Candidate]:
    """Copies of ``candidates`` with their measured CPU latency (median, IQR).

    The numbers depend on the machine and its load: never compare them across
    machines, and never assert them.
    """
    out = []
    for c in candidates:
        lat = measure_latency(
            c.model(), _input_shape(c.dataset), batch_size=batch_size, repeats=repeats
        )
        out.append(
            dataclasses.replace(
                c, latency_ms=lat["latency_ms"], latency_iqr_ms=lat["latency_iqr_ms"]
            )
        )
    return out


def candidates_table(candidates: Sequence[Candidate]):
    """A DataFrame: architecture, accuracies, parameters, MACs, latency if known."""
    import pandas as pd

    rows = []
    for c in candidates:
        row = {
            "student": c.name,
            "depth": c.depth,
            "widths": "-".join(map(str, c.widths)),
            "acc": c.acc,
        }
        if c.acc_ce is not None:
            row["acc_ce"] = c.acc_ce
        row.update(params=c.params, macs_M=c.macs / 1e6)
        if c.latency_ms is not None:
            row["latency_ms"] = c.latency_ms
        rows.append(row)
    return pd.DataFrame(rows)


class ConvPointwise(nn.Module):
    """A convolution followed by a 1x1 convolution ``pw`` (identity at first).

    Few-sample KD (Li et al. 2020b) fits ``pw`` so that the output matches the
    teacher's at ``target_channels``; with nothing between them, the two
    merge into one convolution of the original size (:func:`absorb_pointwise`).
    ``(B, C_in, H, W) -> conv -> (B, C, H', W') -> pw -> (B, C, H', W')``.
    """

    def __init__(self, conv: nn.Conv2d, target_channels: Tensor) -> None:
        super().__init__()
        if conv.bias is not None or conv.groups != 1:
            raise ValueError("ConvPointwise wraps a convolution without bias or groups")
        c = conv.out_channels
        if target_channels.shape != (c,):
            raise ValueError(
                f"target_channels must have one index per output channel ({c}), "
                f"got shape {tuple(target_channels.shape)}"
            )
        self.conv = conv
        like = dict(device=conv.weight.device, dtype=conv.weight.dtype)
        self.pw = nn.Conv2d(c, c, 1, bias=False, **like)
        with torch.no_grad():
            self.pw.weight.copy_(torch.eye(c, **like).view(c, c, 1, 1))
        self.register_buffer("target_channels", target_channels.clone().long())

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.conv(x))

    def merged(self) -> nn.Conv2d:
        """One convolution equal to ``pw(conv(x))``: ``W'[o] = sum_c Q[o, c] W[c]``."""
        conv = self.conv
        out = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=False,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        q = self.pw.weight.detach()[:, :, 0, 0]  # (C, C)
        with torch.no_grad():
            out.weight.copy_(torch.einsum("oc,cikl->oikl", q, conv.weight.detach()))
        return out


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if hasattr(m, "conv1") and hasattr(m, "conv2") and hasattr(m, "bn1")
    ]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def l1_filter_prune(
    model: nn.Module, ratio: float, blocks: Sequence[str] | None = None
) -> nn.Module:
    """A copy of ``model`` with the weakest filters of each block's first conv removed.

    L1-norm filter pruning (Li et al. 2017, :cite:`li2017pruning`), as that
    paper prunes ResNets: in each residual block the first convolution keeps
    the ``ceil((1 - ratio) * C)`` filters of largest L1 norm ``sum |W[c]|``;
    its batch norm and the second convolution's input channels follow. Block
    outputs keep their width, so the residual structure is unchanged.
    ``blocks`` names the blocks to prune (default: all). The copy records the
    kept filters in ``pruned_channels`` (``{"layer1.0.conv1": indices}``).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    pruned = copy.deepcopy(model)
    available = dict(_blocks(pruned))
    if not available:
        raise ValueError(
            f"{type(model).__name__} has no residual blocks (conv1, bn1, conv2)"
        )
    names = list(available) if blocks is None else list(blocks)
    missing = [b for b in names if b not in available]
    if missing:
        raise ValueError(
            f"no residual block(s) {missing}; blocks are {list(available)}"
        )
    kept: dict[str, Tensor] = {}
    for name in names:
        block = available[name]
        conv1, bn1, conv2 = block.conv1, block.bn1, block.conv2
        key = f"{name}.conv1" if name else "conv1"
        if key in getattr(model, "pruned_channels", {}) or not isinstance(
            conv1, nn.Conv2d
        ):
            raise ValueError(f"block {name} is already pruned")
        c = conv1.out_channels
        keep_n = max(1, c - int(ratio * c))
        norms = conv1.weight.abs().sum(dim=(1, 2, 3))  # (C,) L1 norm per filter
        idx = norms.topk(keep_n).indices.sort().values
        like = dict(device=conv1.weight.device, dtype=conv1.weight.dtype)
        new1 = nn.Conv2d(
            conv1.in_channels,
            keep_n,
            conv1.kernel_size,
            conv1.stride,
            conv1.padding,
            bias=False,
            **like,
        )
        new1.weight.copy_(conv1.weight[idx])
        newbn = nn.BatchNorm2d(keep_n, eps=bn1.eps, momentum=bn1.momentum, **like)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(newbn, attr).copy_(getattr(bn1, attr)[idx])
        newbn.num_batches_tracked.copy_(bn1.num_batches_tracked)
        new2 = nn.Conv2d(
            keep_n,
            conv2.out_channels,
            conv2.kernel_size,
            conv2.stride,
            conv2.padding,
            bias=False,
            **like,
        )
        new2.weight.copy_(conv2.weight[:, idx])
        block.conv1, block.bn1, block.conv2 = new1, newbn, new2
        kept[key] = idx.cpu()
    pruned.pruned_channels = {**getattr(model, "pruned_channels", {}), **kept}
    pruned.train(model.training)
    return pruned


def insert_pointwise(model: nn.Module) -> nn.Module:
    """A copy of a pruned ``model`` with a 1x1 conv after each conv of a pruned block.

    As few-sample KD does after pruning (Li et al. 2020b): the first
    convolution's 1x1 targets the teacher's kept filters, the second's (whose
    input lost channels) all of the teacher's. Each starts as the identity,
    so the copy computes exactly what ``model`` does.
    """
    kept = getattr(model, "pruned_channels", None)
    if not kept:
        raise ValueError("model has no pruned_channels: prune it with l1_filter_prune")
    out = copy.deepcopy(model)
    for conv1_name, idx in kept.items():
        block_name = conv1_name.rpartition(".")[0]
        block = out.get_submodule(block_name) if block_name else out
        if isinstance(block.conv1, ConvPointwise):
            raise ValueError(f"{block_name} already has 1x1 convolutions")
        block.conv1 = ConvPointwise(block.conv1, idx)
        c2 = block.conv2.out_channels
        block.conv2 = ConvPointwise(block.conv2, torch.arange(c2))
    return out


def absorb_pointwise(model: nn.Module) -> nn.Module:
    """A copy with every :class:`ConvPointwise` merged into one convolution."""
    out = copy.deepcopy(model)
    names = [n for n, m in out.named_modules() if isinstance(m, ConvPointwise)]
    for name in names:
        _set_submodule(out, name, out.get_submodule(name).merged())
    return out


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def _output(model: nn.Module, layer: str, x: Tensor, pre: bool = False) -> Tensor:
    """The output of ``layer`` (its input with ``pre``) for ``x``; the forward
    pass stops there."""
    got: list[Tensor] = []

    def hook(_m, inp, out=None):
        got.append(inp[0] if pre else out)
        raise _Stop

    sub = model.get_submodule(layer)
    handle = (
        sub.register_forward_pre_hook(hook) if pre else sub.register_forward_hook(hook)
    )
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def _batched(fn, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def fskd_least_squares(
    student: nn.Module,
    teacher: nn.Module,
    data: kdata.TensorData,
    batch_size: int = 250,
) -> nn.Module:
    """Fit every 1x1 conv of ``student`` by least squares to ``teacher``'s features.

    Few-sample KD (Li et al. 2020b, :cite:`li2020few`; survey section 3.1),
    as the authors' code does it: for each :class:`ConvPointwise` in forward
    order, with the earlier ones already fitted, collect the student's conv
    output ``X`` and the teacher's output of the same conv at
    ``target_channels`` ``Y`` (both ``(N * H * W, C)`` over the ``N`` images of
    ``data``; no labels are used) and set ``Q = argmin ||X Q^T - Y||^2``
    (float64, through the normal equations). Both networks run in eval mode.
    The residual blocks must run one after another (as in kdutils' ResNets):
    each block's input is kept for all images, so every layer costs a pass
    through its own block only. Returns a fitted copy; merge it with
    :func:`absorb_pointwise`.
    """
    out = copy.deepcopy(student).eval()
    teacher = teacher.eval()
    dev = next(out.parameters()).device
    x = kdata.normalize(data.images, data.info).to(dev)
    if not any(isinstance(m, ConvPointwise) for m in out.modules()):
        raise ValueError("student has no 1x1 convolutions: call insert_pointwise first")
    blocks = _blocks(out)
    first = blocks[0][0]
    # (N, C, H, W) inputs of the current block, in the student and the teacher
    h_s = _batched(lambda b: _output(out, first, b, pre=True), x, batch_size)
    h_t = _batched(lambda b: _output(teacher, first, b, pre=True), x, batch_size)
    for name, block in blocks:
        t_block = teacher.get_submodule(name)
        for sub, m in block.named_modules():
            if not isinstance(m, ConvPointwise):
                continue
            c = m.pw.out_channels
            # Normal equations, accumulated in float64: (X^T X) Q^T = X^T Y,
            # the least-squares solution when X has full column rank.
            xtx = torch.zeros(c, c, dtype=torch.float64, device=dev)
            xty = torch.zeros(c, c, dtype=torch.float64, device=dev)
            for i in range(0, len(x), batch_size):
                f_s = _output(block, f"{sub}.conv", h_s[i : i + batch_size])
                f_t = _output(t_block, sub, h_t[i : i + batch_size])
                xs = f_s.permute(0, 2, 3, 1).reshape(-1, c).double()  # (b*H*W, C)
                yt = f_t[:, m.target_channels].permute(0, 2, 3, 1).reshape(-1, c)
                xtx += xs.T @ xs
                xty += xs.T @ yt.double()
            q_t = torch.linalg.lstsq(xtx.cpu(), xty.cpu(), driver="gelsd").solution
            m.pw.weight.copy_(q_t.T.reshape(c, c, 1, 1).to(m.pw.weight))
        h_s = _batched(block, h_s, batch_size)
        h_t = _batched(t_block, h_t, batch_size)
    return out


def recover(
    student: nn.Module,
    teacher: nn.Module | None,
    data: kdata.TensorData,
    test: kdata.TensorData,
    cfg: Config,
    method: str = "kd",
    trainable: str = "pointwise",
    epochs: int = 30,
    lr: float = 0.01,
    batch_size: int = 50,
    **method_args: Any,
) -> tuple[nn.Module, list[dict]]:
    """Fine-tune a pruned ``student`` on the few samples ``data`` with SGD.

    ``method="kd"`` distils from ``teacher`` (the unpruned network; defaults
    ``ce_weight=0, kd_weight=1``: no labels, as few-sample KD assumes);
    ``"ce"`` uses the labels alone. ``trainable="pointwise"`` trains only the
    1x1 convolutions (the parameters few-sample KD fits); ``"all"`` trains
    every parameter. Everything else of the recipe (momentum, weight decay,
    schedule, seed) comes from ``cfg``. Returns a trained copy and its history.
    """
    if trainable not in ("pointwise", "all"):
        raise ValueError(f"trainable must be 'pointwise' or 'all', got {trainable!r}")
    model = copy.deepcopy(student)
    pw = [m.pw for m in model.modules() if isinstance(m, ConvPointwise)]
    if trainable == "pointwise" and not pw:
        raise ValueError(
            "trainable='pointwise' needs 1x1 convolutions: call insert_pointwise"
        )
    for p in model.parameters():
        p.requires_grad_(trainable == "all")
    for m in pw:
        m.weight.requires_grad_(True)
    if method == "kd":
        method_args = {"ce_weight": 0.0, "kd_weight": 1.0, **method_args}
    t = None if teacher is None else copy.deepcopy(teacher).eval()
    seed_everything(cfg.seed)
    distiller = build(method, model, t, **method_args)
    dev = next(model.parameters()).device
    t_out = None
    if distiller.teacher is not None:
        t_out = {"logits": predict_logits(distiller.teacher, data, device=dev)}
    loader = kdata.Loader(data, batch_size, shuffle=True, seed=cfg.seed, device=dev)
    rcfg = cfg.replace(
        epochs=epochs, lr=lr, batch_size=batch_size, eval_every=epochs, augment=False
    )
    history = fit(distiller, loader, test, rcfg, teacher_out=t_out, progress=False)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval(), history


def _stage(name: str, model: nn.Module, test, shape) -> dict[str, Any]:
    return {
        "stage": name,
        "acc": 100 * evaluate(model, test)["acc"],
        "params": num_params(model),
        "macs": count_macs(model, shape),
    }


@pipeline("prune_and_recover", section="3.1")
def prune_and_recover(
    model: nn.Module,
    cfg: Config,
    ratio: float = 0.5,
    n_samples: int = 500,
    epochs: int = 30,
    lr: float = 0.01,
    trainable: str = "pointwise",
    sample_seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, nn.Module]]:
    """Prune a trained network and recover it from ``n_samples`` images.

    Few-sample KD after pruning (Li et al. 2020b, :cite:`li2020few`; survey
    section 3.1). ``model`` is trained on ``cfg``'s data; it is pruned with
    :func:`l1_filter_prune` at ``ratio``, given 1x1 convolutions
    (:func:`insert_pointwise`), and the 1x1 convolutions are fitted on
    ``n_samples`` training images (a fixed subset drawn with ``sample_seed``)
    in three ways, each from the same pruned start: the paper's least squares
    on features (no labels, no SGD), SGD on the unpruned network's soft
    outputs (KD, no labels), and SGD on the labels alone (CE). Every fitted
    network is merged back (:func:`absorb_pointwise`), so it costs exactly
    what the pruned network costs.

    Returns rows ``{"stage", "acc" (%), "params", "macs"}`` in the order
    unpruned, pruned, least squares, KD, labels only, and the models by stage.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    train, test = load_split(cfg, True), load_split(cfg, False)
    if n_samples > len(train):
        raise ValueError(
            f"n_samples={n_samples} but the training set has {len(train)} images"
        )
    few = train.subset(n_samples, seed=sample_seed)
    shape = _input_shape(cfg.dataset)
    teacher = copy.deepcopy(model).eval()
    pruned = l1_filter_prune(teacher, ratio).eval()
    with_pw = insert_pointwise(pruned)
    models = {
        "unpruned": teacher,
        "pruned": pruned,
        "least squares (FSKD)": absorb_pointwise(
            fskd_least_squares(with_pw, teacher, few)
        ),
    }
    for stage, method, t in (("KD", "kd", teacher), ("labels only", "ce", None)):
        fitted, _ = recover(
            with_pw, t, few, test, cfg, method, trainable, epochs=epochs, lr=lr
        )
        models[stage] = absorb_pointwise(fitted)
    rows = [_stage(k, m, test, shape) for k, m in models.items()]
    return rows, models
