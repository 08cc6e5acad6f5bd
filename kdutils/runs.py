"""What a run is: its identity (the cache key) and where it is kept.

A run's key is its configuration plus *declared versions* of the computation:

- :data:`CORE_VERSION`, the training computation every run shares (the data
  path, the models, the training loop), and
- ``Distiller.version``, one per method (a class attribute),

each bumped on purpose when what a run computes changes. Editing a docstring,
a log line or a neighbouring method changes no key; a changed computation
whose version was not bumped is caught by the golden fingerprints
(``tests/test_golden.py``), which retrain every method on a tiny run and
compare it with the numbers stored in ``tests/golden_fingerprints.json``.

A method registered outside kdutils (a notebook's, a user's script's) has no
such guard, so its key also hashes the class's source.

What only decides what is *measured or saved* (:data:`MEASURED_ONLY`:
``eval_every``, ``save_epochs``) is not in the key: a cached run serves any
request whose measurements it holds (:func:`covers`); otherwise the run is
trained again, measuring both (:func:`measure_both`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
from pathlib import Path

from .config import Config
from .distillers import get_method

__all__ = [
    "CORE_VERSION",
    "MEASURED_ONLY",
    "cache_dir",
    "covers",
    "identity",
    "measure_both",
    "measured_epochs",
    "run_dir",
    "run_key",
]

# Bump when the shared training computation changes what a run computes
# (data loading or normalisation, augmentation, models, the loop, the
# optimiser, the schedule, evaluation), and rewrite the golden fingerprints
# (python scripts/golden.py --write).
CORE_VERSION = 1

MEASURED_ONLY = ("eval_every", "save_epochs")


def identity(cfg: Config, channels_last: bool = True, amp: str | None = None) -> dict:
    """Everything that decides what a run computes, as a JSON-able dict."""
    config = {k: v for k, v in cfg.to_dict().items() if k not in MEASURED_ONLY}
    cls = get_method(cfg.method)
    method = {"name": cfg.method, "version": cls.version}
    if not cls.__module__.startswith("kdutils."):
        try:
            source = inspect.getsource(cls)
        except (OSError, TypeError):
            source = f"{cls.__module__}.{cls.__qualname__}"
        method["source"] = hashlib.sha256(source.encode()).hexdigest()[:16]
    return {
        "config": config,
        "core": CORE_VERSION,
        "method": method,
        "layout": "nhwc" if channels_last else "nchw",
        "amp": amp,
    }


def run_key(cfg: Config, channels_last: bool = True, amp: str | None = None) -> str:
    """The run's key: a hash of :func:`identity`."""
    text = json.dumps(identity(cfg, channels_last, amp), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where runs are cached: ``$KD_CACHE_DIR``, else ``~/.cache/kdutils``."""
    env = os.environ.get("KD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kdutils"


def run_dir(cfg: Config, channels_last: bool = True, amp: str | None = None) -> Path:
    return cache_dir() / "runs" / f"{cfg.name}-{run_key(cfg, channels_last, amp)}"


# --- what is measured ------------------------------------------------------------


def measured_epochs(cfg: Config) -> set[int]:
    """The epochs after which a run of ``cfg`` evaluates on the test set."""
    every = {e for e in range(1, cfg.epochs + 1) if e % cfg.eval_every == 0}
    return every | {cfg.epochs} | set(cfg.save_epochs)


def covers(history: list[dict], saved: set[int], cfg: Config) -> bool:
    """Whether a finished run (its per-epoch ``history`` and the epochs whose
    weights it kept) holds every measurement ``cfg`` asks for."""
    evaluated = {i + 1 for i, h in enumerate(history) if h.get("test_acc") is not None}
    return measured_epochs(cfg) <= evaluated and set(cfg.save_epochs) <= saved


def measure_both(asked: Config, had: Config) -> Config:
    """``asked``, measuring also what ``had`` measured: evaluation every
    gcd of the two ``eval_every`` epochs, and both sets of kept epochs."""
    return asked.replace(
        eval_every=math.gcd(asked.eval_every, had.eval_every),
        save_epochs=tuple(sorted({*asked.save_epochs, *had.save_epochs})),
    )
