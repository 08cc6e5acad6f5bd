"""What a run is: its identity (the cache key) and where it is kept.

Also the cache's folders: where runs live (:func:`cache_dir`, :func:`run_dir`),
how a finished run is named and found again (:func:`run_id`, :func:`load_run`),
and the per-run lock that keeps two processes from training one run.

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

import contextlib
import hashlib
import inspect
import json
import math
import os
import platform
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .config import Config
from .errors import CacheUnwritable
from .registry import get_method
from .results import Result

__all__ = [
    "CORE_VERSION",
    "MEASURED_ONLY",
    "cache_dir",
    "check_cache_writable",
    "covers",
    "identity",
    "load_run",
    "measure_both",
    "measured_epochs",
    "run_dir",
    "run_id",
    "run_key",
    "run_lock",
]

# Bump when the shared training computation changes what a run computes
# (data loading or normalisation, augmentation, models, the loop, the
# optimiser, the schedule, evaluation), and rewrite the golden fingerprints
# (python scripts/golden.py --write).
CORE_VERSION = 1

MEASURED_ONLY = ("eval_every", "save_epochs")


def identity(
    cfg: Config,
    channels_last: bool = True,
    amp: str | None = None,
    teacher_views: str | None = None,
) -> dict:
    """Everything that decides what a run computes, as a JSON-able dict.

    ``teacher_views`` (the dtype of the teacher's stored per-view logits, see
    :func:`kdutils.train.run`) enters only when set, so the keys of runs with
    an online teacher are what they were before stored views existed."""
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
        **({"teacher_views": teacher_views} if teacher_views is not None else {}),
    }


def run_key(
    cfg: Config,
    channels_last: bool = True,
    amp: str | None = None,
    teacher_views: str | None = None,
) -> str:
    """The run's key: a hash of :func:`identity`."""
    ident = identity(cfg, channels_last, amp, teacher_views)
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_dir() -> Path:
    """Where runs are cached: ``$KD_CACHE_DIR``, else ``~/.cache/kdutils``."""
    env = os.environ.get("KD_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "kdutils"


def run_dir(
    cfg: Config,
    channels_last: bool = True,
    amp: str | None = None,
    teacher_views: str | None = None,
) -> Path:
    key = run_key(cfg, channels_last, amp, teacher_views)
    return cache_dir() / "runs" / f"{cfg.name}-{key}"


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


def check_cache_writable() -> Path:
    """The run cache, made if needed; :class:`CacheUnwritable` (one line with
    the path) if it cannot be created or written."""
    root = cache_dir()
    try:
        (root / "runs").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=root / "runs"):
            pass
    except OSError as e:
        raise CacheUnwritable(
            f"the run cache {root} cannot be written ({e.strerror or type(e).__name__}"
            f"{': ' + e.filename if e.filename else ''}); set KD_CACHE_DIR to a "
            "writable folder"
        ) from None
    return root


@contextlib.contextmanager
def run_lock(folder: Path, name: str) -> Iterator[None]:
    """Hold the run's lock (``<cache>/locks/<folder>.lock``) while training it.

    A second process asking for the same run says so in one line and waits;
    it then finds the run finished and loads it (or resumes its checkpoint
    if the first was interrupted). ``fcntl.flock``: the kernel drops the lock
    when its holder dies, even by ``kill -9``.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    locks = folder.parent.parent / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{folder.name}.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            print(f"[wait] {name} is being trained by {holder}; waiting for it")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(f"process {os.getpid()} on {platform.node()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_id(res: Result, epoch: int | None = None) -> str:
    """A finished run's identity (its cache folder name), for ``teacher_runs``.

    With ``epoch`` (one of the run's ``save_epochs``): ``"<folder>@e<epoch>"``,
    the student as it was after that epoch (an anchor of route-constrained KD).
    """
    if res.path is None:
        raise ValueError(f"{res.name} has no run folder")
    name = Path(res.path).name
    if epoch is None:
        return name
    if epoch not in res.cfg.save_epochs:
        raise ValueError(
            f"{res.name} kept no weights after epoch {epoch}; its save_epochs "
            f"are {list(res.cfg.save_epochs) or 'empty'}"
        )
    return f"{name}@e{epoch}"


def load_run(run_id: str) -> Result:
    """The finished run ``run_id`` from the cache (see :func:`run_id`).

    ``"<folder>@e<N>"`` is that run's student after epoch N: its
    ``load_model`` gives those weights and its ``test_acc`` that epoch's.
    """
    folder, sep, ep = run_id.partition("@e")
    path = cache_dir() / "runs" / folder / "result.json"
    if not path.exists():
        raise ValueError(
            f"run {folder!r} is not finished in the cache {cache_dir()}; "
            "run its config first"
        )
    res = Result.load(path)
    if sep:
        if not ep.isdigit() or int(ep) not in res.cfg.save_epochs:
            raise ValueError(
                f"{run_id!r}: the run kept weights only after epochs "
                f"{list(res.cfg.save_epochs) or '(none)'}"
            )
        res.epoch = int(ep)
    return res
