"""Multi-stage methods as plain functions that chain ``kd.run`` calls.

``assistants``: distilling into small networks through intermediate models
(teacher assistants, survey section 3.2); ``multi_teacher``, ``born_again``
and ``progressive`` (section 2.3); ``nas``: adjusting the student's
architecture with KD in the loop (section 3.1). Each function takes configs or
models a user can change, and returns the results of every stage.
"""

from .assistants import *  # noqa: F403
from .assistants import __all__ as _assistants
from .born_again import *  # noqa: F403
from .born_again import __all__ as _born_again
from .multi_teacher import *  # noqa: F403
from .multi_teacher import __all__ as _multi_teacher
from .nas import *  # noqa: F403
from .nas import __all__ as _nas
from .progressive import *  # noqa: F403
from .progressive import __all__ as _progressive
from .registry import PIPELINES, Pipeline, pipeline

__all__ = [
    *_assistants,
    *_born_again,
    *_multi_teacher,
    *_nas,
    *_progressive,
    "PIPELINES",
    "Pipeline",
    "pipeline",
]
