"""Distillation losses as pure tensor functions.

Conventions (DESIGN.md): student argument first, teacher second; the caller
treats teacher tensors as constants (computed under ``torch.no_grad`` or
detached); each function matches the reduction and scaling of the original
authors' reference code, and says so.

One module per kind of knowledge, all re-exported here (``kd.losses.at_loss``):
``output`` (Hinton's soft targets, section 1), ``improved`` (better output
losses, 2.1), ``feature`` (fitting feature maps, 2.2.1), ``extract`` (knowledge
extracted from feature maps, 2.2.2), ``relation`` (structure between samples,
2.2.3). A method's cached runs depend only on the modules it imports.
"""

from .adversarial import *  # noqa: F403
from .adversarial import __all__ as _adversarial
from .extract import *  # noqa: F403
from .extract import __all__ as _extract
from .feature import *  # noqa: F403
from .feature import __all__ as _feature
from .improved import *  # noqa: F403
from .improved import __all__ as _improved
from .multi import *  # noqa: F403
from .multi import __all__ as _multi
from .online import *  # noqa: F403
from .online import __all__ as _online
from .output import *  # noqa: F403
from .output import __all__ as _output
from .progressive import *  # noqa: F403
from .progressive import __all__ as _progressive
from .relation import *  # noqa: F403
from .relation import __all__ as _relation
from .selfkd import *  # noqa: F403
from .selfkd import __all__ as _selfkd

__all__ = [
    *_output,
    *_improved,
    *_feature,
    *_extract,
    *_relation,
    *_online,
    *_selfkd,
    *_multi,
    *_progressive,
    *_adversarial,
]
