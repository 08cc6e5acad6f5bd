"""Distillation methods: the base class, the registry, one module per family."""

# Importing a family's module registers its methods.
from ..registry import build
from . import (  # noqa: F401
    adversarial,
    adversarial_online,
    adversarial_stages,
    after_survey,
    after_survey_levels,
    extracting,
    extracting_guided,
    extracting_learned,
    fitting,
    fitting_added,
    fitting_shared,
    multi,
    online,
    online_branches,
    output,
    progressive,
    relation,
    relation_contrastive,
    selfkd,
    selfkd_refined,
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
from .features import conv_regressor
from .online import METRIC_IMAGES, member_metrics
from .progressive import cycle_starts

__all__ = [
    "METHODS",
    "STATUSES",
    "Distiller",
    "check_weights",
    "conv_regressor",
    "cycle_starts",
    "describe_status",
    "feature_shapes",
    "get_method",
    "member_metrics",
    "METRIC_IMAGES",
    "register",
    "build",
]
