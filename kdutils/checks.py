"""The value checks the methods and losses share (one place, one wording).

Each raises ``ValueError`` naming the argument, its value and what is allowed,
so that a bad hyperparameter fails when the method is built (on the meta
device, see ``config._check_values``), before any training. Imports nothing
from kdutils: the lowest layer, usable by losses and distillers alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "check_T",
    "check_int",
    "check_weights",
    "is_finite_real",
    "is_int",
    "is_real",
    "merge_args",
]


def is_int(v: Any) -> bool:
    """An integer, not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_real(v: Any) -> bool:
    """An int or a float, not a bool (NaN and infinities included)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite_real(v: Any) -> bool:
    """A finite int or float, not a bool."""
    return is_real(v) and math.isfinite(v)


def check_T(T: float, name: str = "T") -> None:
    """A softmax temperature (called ``name`` in the message): > 0."""
    if T <= 0:
        raise ValueError(f"temperature {name} must be > 0, got {T}")


def check_int(name: str, value, minimum: int) -> None:
    """An integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_weights(**weights: float) -> None:
    """Loss weights: each >= 0."""
    for k, v in weights.items():
        if v < 0:
            raise ValueError(f"{k} must be >= 0, got {v}")


def merge_args(method: str, args: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A method's ``args`` (a mapping or ``(name, value)`` pairs) over its
    ``defaults``, as a dict; ValueError for any other form or for a name the
    method does not take. The values are the caller's to check."""
    if isinstance(args, Mapping):
        given = dict(args)
    elif isinstance(args, Iterable) and not isinstance(args, (str, bytes)):
        try:
            given = dict(args)
        except (TypeError, ValueError):
            raise ValueError(
                f"args must be a mapping or (name, value) pairs, got {args!r}"
            ) from None
    else:
        raise ValueError(f"args must be a mapping or (name, value) pairs, got {args!r}")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(defaults) or f"none (method {method!r} takes no args)"
        raise ValueError(
            f"args: {method!r} has no argument(s) {unknown}; it takes {known}"
        )
    return {**defaults, **given}
