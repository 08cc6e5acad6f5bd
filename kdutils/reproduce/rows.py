"""Table 1's rows and what each runs: its config, its plan, its execution.

``table1_rows()`` reads the survey's rows (``kdutils/survey_table1.csv``) into
:class:`TableRow`, which makes a row's config for a profile and seed, lists the
runs it makes (``plan``) and runs it (``execute``). What changes with the
profile (the pipelines' models, which rows evaluate only after their last
epoch) is read from ``kdutils.profiles``, and a method's schedule is scaled
by the method itself (``Distiller.epoch_args``), so a row asks for exactly the
runs its chapter asks for. When a saved row counts as done
(``_comparable``) is here too.

The trainer is ``run`` of this module, looked up when called (``_kd_run``):
tests replace ``kdutils.reproduce.rows.run`` to count or interrupt runs.
"""

from __future__ import annotations

import contextlib
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import pipelines
from ..config import Config, make_config, teacher_config
from ..distillers import METHODS
from ..profiles import FINAL_EVAL_ONLY, PIPELINE_MODELS, pipeline_models
from ..results import Result, survey_table1
from ..runs import MEASURED_ONLY, run_dir
from ..train import run


def _pipeline_fn(name: str) -> Callable[..., list[Result]]:
    return getattr(pipelines, name)


def _execute(
    cfg: Config, pipeline: str, models: Sequence[str], run: Callable[..., Result]
) -> Result:
    """One row's run: ``cfg`` itself, or its pipeline's last stage (the student)."""
    if not pipeline:
        return run(cfg, progress=False)
    return _pipeline_fn(pipeline)(cfg, list(models), run=run, progress=False)[-1]


@dataclass(frozen=True)
class TableRow:
    """One row of Table 1 and how to run it.

    ``method`` is what the row's student runs; ``pipeline`` names the
    ``kdutils.pipelines`` function that produces it when the row is a chain
    of runs (TAKD, ALTKD), else "".
    """

    family: str
    row: str
    method: str
    survey_acc: float
    note: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    pipeline: str = ""

    @property
    def slug(self) -> str:
        return self.row.lower().replace(" ", "-")

    @property
    def available(self) -> bool:
        return self.method in METHODS and (
            not self.pipeline or self.pipeline in PIPELINE_MODELS
        )

    @property
    def is_teacher_row(self) -> bool:
        return self.family == "direct training" and self.row != "ResNet20"

    def pipeline_models(self, profile: str) -> list[str]:
        """The models this pipeline row passes its pipeline in ``profile``."""
        if not self.pipeline:
            return []
        try:
            return pipeline_models(self.pipeline, profile)
        except ValueError as e:
            raise ValueError(f"row {self.row}: {e}") from None

    def config(self, profile: str, seed: int, **overrides: Any) -> Config:
        """This row's run at ``seed`` in ``profile`` (a pipeline row: its input)."""
        if self.is_teacher_row:
            # The teacher trained alone, one run per seed (Table 1's ResNet56).
            # Seed 0 is the very run that teaches every student.
            base = make_config(profile, method="kd", **overrides)
            return teacher_config(base).replace(seed=seed)
        cfg = make_config(
            profile, method=self.method, seed=seed, **self.args, **overrides
        )
        final_only = (
            self.pipeline in FINAL_EVAL_ONLY["pipelines"]
            or self.method in FINAL_EVAL_ONLY["methods"]
        )
        if final_only and "eval_every" not in overrides:
            cfg = cfg.replace(eval_every=cfg.epochs)
        return cfg

    def plan(self, cfg: Config, amp: str | None = None) -> list[Config]:
        """Every run this row makes from ``cfg``, in order; the last is its Result's.

        A plain row: ``[cfg]`` (its teacher, if any, is trained by ``kd.run``).
        A pipeline row: the pipeline's stages, found by calling it with a
        ``run`` that trains nothing (each stage's run id is its cache folder's
        name, which ``run_dir`` computes without training; under ``amp`` the
        stages are other runs, in other folders).
        """
        if not self.pipeline:
            return [cfg]
        planned: list[Config] = []

        def dry_run(c: Config, **_: Any) -> Result:
            planned.append(c)
            return Result(
                name=c.name,
                key="",
                config=c.to_dict(),
                history=[],
                final={"test_acc": math.nan, "train_seconds": 0.0},
                provenance={},
                path=str(run_dir(c, amp=amp)),
            )

        models = self.pipeline_models(cfg.profile)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                _pipeline_fn(self.pipeline)(cfg, models, run=dry_run)
        except ValueError as e:
            raise ValueError(
                f"Table-1 row {self.row} ({self.pipeline} with {models}): {e}"
            ) from None
        return planned

    def execute(self, cfg: Config, run: Callable[..., Result] | None = None) -> Result:
        """Run this row from ``cfg`` (finished stages come from the run cache)."""
        if run is None:
            run = _kd_run()
        return _execute(cfg, self.pipeline, self.pipeline_models(cfg.profile), run)


def _kd_run() -> Callable[..., Result]:
    """``kd.run``, looked up when called (tests replace this module's ``run``
    to count runs)."""
    return run


def table1_rows() -> list[TableRow]:
    """Table 1's rows, in the survey's order."""
    return [
        TableRow(
            r["family"],
            r["row"],
            r["method"],
            r["survey_acc"],
            r["note"],
            {},
            r.get("pipeline") or "",
        )
        for r in survey_table1()
    ]


EXTRA_FAMILY = "after the survey"


def extra_rows() -> list[TableRow]:
    """Optional rows beside Table 1, never in it: every registered method
    published after the survey (registry status ``after``), in registry order.
    They have no survey number (NaN) and run with the profile's defaults, as
    chapter 15 runs them."""
    return [
        TableRow(
            EXTRA_FAMILY,
            name,
            name,
            math.nan,
            f"after the survey ({cls.status_year})",
        )
        for name, cls in METHODS.items()
        if cls.status == "after"
    ]


# A run id's cache key (``run_id``: "<name>-<12 hex>", maybe "@e<N>" after).
_RUN_KEY = re.compile(r"-[0-9a-f]{12}(?=(@e\d+)?$)")


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config with its ``teacher_runs`` named without their cache keys,
    and without what only decides what is measured (``runs.MEASURED_ONLY``).

    A saved row counts as done when its config is the one the row would run
    now. The keys in ``teacher_runs`` (a pipeline's earlier stages) also hash
    the training code, which a plain row's config does not; compared without
    them, a pipeline row goes stale when its stages' configs change, and not
    when only the code does, like a plain row.
    """
    runs = config.get("teacher_runs") or []
    kept = {k: v for k, v in config.items() if k not in MEASURED_ONLY}
    return {**kept, "teacher_runs": [_RUN_KEY.sub("", r) for r in runs]}
