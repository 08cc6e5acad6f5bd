"""One trained student architecture and its cost: survey section 3.1.

The unit both KD-in-the-loop searches of section 3.1 work with:
:func:`train_candidate` trains (or loads) a student named by depth and widths
(see :func:`kdutils.models.model_name`) with a config's method for a few
epochs, as an ordinary cached :func:`kdutils.run`, and returns a
:class:`Candidate` with its accuracy and exact parameter and MAC counts.
:func:`kdutils.pipelines.channel_planting` grows one candidate into the next;
:func:`kdutils.pipelines.kd_search` draws candidates from a search space.

Imports: ``kdutils`` modules below ``kdutils.pipelines`` only (no other
pipeline module); ``planting``, ``search`` and ``surgery`` import from here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .. import data as kdata
from ..config import Config
from ..cost import count_macs
from ..models import ResNet, create_model, model_name, num_params
from ..results import Result
from ..train import run

__all__ = ["Candidate", "candidate_config", "train_candidate"]


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
