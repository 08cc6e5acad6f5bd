"""KD-guided architecture search and reading its results: survey section 3.1.

:func:`kd_search` scores candidates of a small :class:`SearchSpace` by a
short KD run and by their cost, in the spirit of "search to distill" (Liu et
al. 2020b); :func:`with_latency` measures the candidates' latency, and
:func:`pareto_front`, :func:`mnas_reward` and :func:`candidates_table` read
the scores. Every candidate is an ordinary cached :func:`kdutils.run` (a
:class:`~kdutils.pipelines.candidates.Candidate`).

Imports: ``kdutils`` modules below ``kdutils.pipelines``, and
``.candidates`` and ``.registry`` of this package.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..config import Config
from ..cost import measure_latency
from ..results import Result
from ..train import run
from .candidates import Candidate, _input_shape, train_candidate
from .registry import pipeline

__all__ = [
    "SearchSpace",
    "kd_search",
    "pareto_front",
    "mnas_reward",
    "with_latency",
    "candidates_table",
]


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
