"""Channel planting, growing a student while KD improves it: survey section 3.1.

:func:`channel_planting` grows a thin student group by group and keeps a
growth only while the KD-trained student improves (Mitsuno et al. 2021). Every
candidate is an ordinary cached :func:`kdutils.run` (a
:class:`~kdutils.pipelines.candidates.Candidate`); the outcome is a
:class:`Planting`.

Imports: ``kdutils`` modules below ``kdutils.pipelines``, and
``.candidates`` and ``.registry`` of this package.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ..config import Config
from ..models import model_depth
from ..results import Result
from ..train import run
from .candidates import Candidate, train_candidate
from .registry import pipeline

__all__ = ["Planting", "channel_planting"]


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
