"""kdutils: the package behind the runnable companion to Si & Qi (2023).

``import kdutils as kd`` gives the pieces a notebook needs::

    cfg = kd.make_config("quick", method="kd", seed=0)
    res = kd.run(cfg)            # trains, or loads the finished run from the cache
"""

from . import (
    appruns,
    augment,
    book,
    cost,
    data,
    dense_metrics,
    dense_train,
    detection,
    diagrams,
    distillers,
    face_train,
    gan,
    gan_train,
    inference,
    lm,
    lm_train,
    loop,
    losses,
    models,
    pipelines,
    plots,
    profiles,
    provenance,
    registry,
    reproduce,
    results,
    runs,
    scenes,
    score,
    segmentation,
    stats,
    teachers,
    text,
    train,
    verification,
)  # noqa: E402
from .book import glue  # noqa: E402
from .config import PROFILES, Config, make_config, teacher_config  # noqa: E402
from .distillers import METHODS, Distiller, build, get_method, register  # noqa: E402
from .inference import evaluate, predict_logits  # noqa: E402
from .loop import fit, load_split, seed_everything  # noqa: E402
from .models import (  # noqa: E402
    build_model,  # noqa: E402
    capture,
    create_model,
    num_params,
)
from .results import Result, load_results, summarize, survey_table1  # noqa: E402
from .runs import load_run, run_id  # noqa: E402
from .train import load_distiller, run  # noqa: E402
from .version import __version__  # noqa: E402, F401

__all__ = [
    "appruns",
    "augment",
    "book",
    "PROFILES",
    "Config",
    "make_config",
    "teacher_config",
    "METHODS",
    "Distiller",
    "build",
    "get_method",
    "register",
    "capture",
    "create_model",
    "num_params",
    "Result",
    "load_results",
    "summarize",
    "survey_table1",
    "evaluate",
    "fit",
    "glue",
    "predict_logits",
    "run",
    "build_model",
    "load_distiller",
    "load_run",
    "load_split",
    "run_id",
    "seed_everything",
    "cost",
    "data",
    "dense_metrics",
    "dense_train",
    "detection",
    "diagrams",
    "distillers",
    "face_train",
    "gan",
    "gan_train",
    "inference",
    "lm",
    "lm_train",
    "loop",
    "losses",
    "models",
    "pipelines",
    "plots",
    "profiles",
    "provenance",
    "registry",
    "reproduce",
    "results",
    "runs",
    "scenes",
    "score",
    "segmentation",
    "stats",
    "teachers",
    "text",
    "train",
    "verification",
]
