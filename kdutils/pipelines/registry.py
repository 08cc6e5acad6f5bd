"""Where each pipeline comes from: its survey section and status, as for methods.

A pipeline (a function that chains ``kd.run`` calls) declares itself with
``@pipeline("takd", section="3.2")``, as a Distiller does with ``register``;
``python -m kdutils methods`` lists both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..distillers.base import check_status

__all__ = ["PIPELINES", "Pipeline", "pipeline"]


@dataclass(frozen=True)
class Pipeline:
    name: str
    fn: Callable
    section: str
    status: str
    note: str


PIPELINES: dict[str, Pipeline] = {}


def pipeline(
    name: str, section: str, *, status: str = "survey", note: str = ""
) -> Callable[[Callable], Callable]:
    """Function decorator: record a pipeline's section and status (see ``register``)."""
    check_status(name, status, note)

    def deco(fn: Callable) -> Callable:
        if name in PIPELINES:
            raise ValueError(f"pipeline {name!r} is already registered")
        PIPELINES[name] = Pipeline(name, fn, section, status, note)
        return fn

    return deco
