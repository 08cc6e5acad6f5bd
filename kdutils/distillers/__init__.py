"""Distillation methods: the base class, the registry, one module per family."""

# Importing a family's module registers its methods.
from . import (  # noqa: F401
    adversarial,
    extracting,
    fitting,
    multi,
    online,
    output,
    progressive,
    relation,
    selfkd,
    small,
    traditional,
)
from .base import (
    METHODS,
    STATUSES,
    Distiller,
    check_weights,
    describe_status,
    feature_shapes,
    get_method,
    register,
)
from .online import METRIC_IMAGES, member_metrics
from .progressive import cycle_starts

__all__ = [
    "METHODS",
    "STATUSES",
    "Distiller",
    "check_weights",
    "cycle_starts",
    "describe_status",
    "feature_shapes",
    "get_method",
    "member_metrics",
    "METRIC_IMAGES",
    "register",
    "build",
]


def build(name: str, student, teacher=None, **hparams) -> Distiller:
    """Build a registered method in one line: ``build("kd", s, t, T=4.0)``."""
    cls = get_method(name)
    return (
        cls(student, teacher, **hparams)
        if cls.needs_teacher
        else cls(student, **hparams)
    )
