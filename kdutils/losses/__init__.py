"""Distillation losses as pure tensor functions.

Conventions (DESIGN.md): student argument first, teacher second; the caller
treats teacher tensors as constants (computed under ``torch.no_grad`` or
detached); each function matches the reduction and scaling of the original
authors' reference code, and says so.

One module per family, all re-exported here (``kd.losses.at_loss``), named
as the family's distillers are: ``losses/X.py`` holds the losses of
``distillers/X.py`` (and of its second module ``distillers/X_*.py`` where a
family has two): ``traditional`` (Hinton's soft targets, section 1),
``output`` (better output losses, 2.1), ``fitting`` (fitting feature maps,
2.2.1), ``extracting`` (knowledge extracted from feature maps, 2.2.2),
``relation`` (structure between samples, 2.2.3; CRD's memory and loss in
``relation_contrastive``), ``online``, ``selfkd``, ``multi``, ``progressive``
and ``adversarial`` (2.3.1 to 2.3.5); ``after_survey`` (logit methods
published after the survey, 2022-2024, beside 2.1; multi-level logit
distillation in ``after_survey_levels``); ``dense`` (score and feature
maps of dense prediction, the applications of section 5.2); ``detection``
(object detection, section 5.1: Chen et al.'s hint, weighted soft targets and
teacher-bounded regression, Li et al.'s region mimicking, and fine-grained
imitation from beyond the survey's list); ``generation`` (image generation,
section 5.4: a GAN's losses and Chen et al. 2020b's distillation terms); ``language``
(language models, section 5.5: DistilBERT's soft targets, BERT-PKD, TinyBERT
and LRC-BERT); ``face`` (face recognition, section 5.3: ArcFace, Huang et
al.'s distribution distillation, the cosine embedding baseline).
``distillers/small.py``
(section 3.2) uses ``kd_loss``. A method's cached runs depend only on the
modules it imports.
"""

from .adversarial import *  # noqa: F403
from .adversarial import __all__ as _adversarial
from .after_survey import *  # noqa: F403
from .after_survey import __all__ as _after_survey
from .after_survey_levels import *  # noqa: F403
from .after_survey_levels import __all__ as _after_survey_levels
from .dense import *  # noqa: F403
from .dense import __all__ as _dense
from .detection import *  # noqa: F403
from .detection import __all__ as _detection
from .extracting import *  # noqa: F403
from .extracting import __all__ as _extracting
from .face import *  # noqa: F403
from .face import __all__ as _face
from .fitting import *  # noqa: F403
from .fitting import __all__ as _fitting
from .generation import *  # noqa: F403
from .generation import __all__ as _generation
from .language import *  # noqa: F403
from .language import __all__ as _language
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
from .relation_contrastive import *  # noqa: F403
from .relation_contrastive import __all__ as _relation_contrastive
from .selfkd import *  # noqa: F403
from .selfkd import __all__ as _selfkd
from .traditional import *  # noqa: F403
from .traditional import __all__ as _traditional

__all__ = [
    *_traditional,
    *_output,
    *_fitting,
    *_extracting,
    *_relation,
    *_relation_contrastive,
    *_online,
    *_selfkd,
    *_multi,
    *_progressive,
    *_adversarial,
    *_after_survey,
    *_after_survey_levels,
    *_dense,
    *_detection,
    *_generation,
    *_language,
    *_face,
]
