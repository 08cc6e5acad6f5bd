"""Figures for the book. Each function returns a matplotlib ``Figure``.

``core`` holds the figures every chapter uses (training curves, accuracy bars,
sweeps, the taxonomy) and chapter 1's; each family of methods has its own
module, all re-exported here (``kd.plots.attention_maps``).
"""

from .assistants import *  # noqa: F403
from .assistants import __all__ as _assistants
from .compression import *  # noqa: F403
from .compression import __all__ as _compression
from .core import *  # noqa: F403
from .core import __all__ as _core
from .extract import *  # noqa: F403
from .extract import __all__ as _extract
from .features import *  # noqa: F403
from .features import __all__ as _features
from .outputs import *  # noqa: F403
from .outputs import __all__ as _outputs
from .relations import *  # noqa: F403
from .relations import __all__ as _relations

__all__ = [
    *_core,
    *_outputs,
    *_features,
    *_extract,
    *_relations,
    *_compression,
    *_assistants,
]
