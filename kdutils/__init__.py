"""kdutils: the package behind the runnable companion to Si & Qi (2023).

``import kdutils as kd`` gives the pieces a notebook needs::

    cfg = kd.make_config("quick", method="kd", seed=0)
    res = kd.run(cfg)            # trains, or loads the finished run from the cache
"""

from . import (
    cost,
    data,
    distillers,
    losses,
    models,
    pipelines,
    plots,
    reproduce,
    results,
    score,
)  # noqa: E402
from .config import PROFILES, Config, make_config, teacher_config  # noqa: E402
from .distillers import METHODS, Distiller, build, get_method, register  # noqa: E402
from .models import capture, create_model, num_params  # noqa: E402
from .results import Result, load_results, summarize, survey_table1  # noqa: E402
from .train import (  # noqa: E402
    build_model,
    evaluate,
    fit,
    load_distiller,
    load_run,
    load_split,
    predict_logits,
    run,
    run_id,
    seed_everything,
)
from .version import __version__  # noqa: E402, F401

__all__ = [
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
    "distillers",
    "losses",
    "models",
    "pipelines",
    "plots",
    "reproduce",
    "results",
    "score",
]
