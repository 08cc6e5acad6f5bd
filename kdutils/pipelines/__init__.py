"""Multi-stage methods as plain functions that chain ``kd.run`` calls.

``assistants``: distilling into small networks through intermediate models
(teacher assistants, survey section 3.2); ``multi_teacher``, ``born_again``
and ``progressive`` (section 2.3); adjusting the student's architecture with
KD in the loop (section 3.1): ``planting`` and ``search`` (students trained as
``candidates``) and ``surgery`` (pruning and few-sample recovery). Each
function takes configs or models a user can change, and returns the results
of every stage.
"""

from .assistants import *  # noqa: F403
from .assistants import __all__ as _assistants
from .born_again import *  # noqa: F403
from .born_again import __all__ as _born_again
from .candidates import *  # noqa: F403
from .candidates import __all__ as _candidates
from .multi_teacher import *  # noqa: F403
from .multi_teacher import __all__ as _multi_teacher
from .planting import *  # noqa: F403
from .planting import __all__ as _planting
from .search import *  # noqa: F403
from .search import __all__ as _search
from .surgery import *  # noqa: F403
from .surgery import __all__ as _surgery

# isort: split
# Imported last so that PIPELINES lists route_kd after the section 3.1
# pipelines, in the order it had before they were split out of one module.
from .progressive import *  # noqa: F403
from .progressive import __all__ as _progressive
from .registry import PIPELINES, Pipeline, pipeline

__all__ = [
    *_assistants,
    *_born_again,
    *_multi_teacher,
    *_candidates,
    *_planting,
    *_search,
    *_surgery,
    *_progressive,
    "PIPELINES",
    "Pipeline",
    "pipeline",
]
