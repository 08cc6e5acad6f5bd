"""Distillation losses as pure tensor functions.

Conventions (DESIGN.md): student argument first, teacher second; the caller
treats teacher tensors as constants (computed under ``torch.no_grad`` or
detached); each function matches the reduction and scaling of the original
authors' reference code, and says so.

One module per kind of knowledge, all re-exported here (``kd.losses.at_loss``):
``output`` (logits, sections 1 and 2.1), ``feature`` (feature maps, 2.2.1 and
2.2.2), ``relation`` (structure between samples, 2.2.3).
"""

from .feature import *  # noqa: F403
from .feature import __all__ as _feature
from .output import *  # noqa: F403
from .output import __all__ as _output
from .relation import *  # noqa: F403
from .relation import __all__ as _relation

__all__ = [*_output, *_feature, *_relation]
