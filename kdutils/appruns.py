"""Cached, locked, resumable runs for the application chapters (survey §5.3–5.5).

The language models, the verification embeddings and the generators of the
application chapters are not classifiers trained by :func:`kdutils.train.run`,
but each of their runs needs what a classification run has: one cache entry
per configuration, a lock so two notebooks never train it twice, a checkpoint
after every epoch so an interrupted run resumes, a tqdm bar, a checked record
with provenance, and one line that says whether it was trained or loaded.
:func:`run_app` gives them that; an application supplies only its
computation, as a :class:`Session`.

A run's key hashes ``kind``, the application's declared ``version``,
:data:`kdutils.runs.CORE_VERSION` and the config (less what only decides what
is measured: ``eval_every``). It lives in ``<cache>/<kind>/<name>-<key>``; a
folder with ``result.json`` is finished, one with only ``checkpoint.pt`` is
resumed after its last complete epoch. Resuming ends with the weights of a
run never interrupted, bit for bit: the initial weights depend only on the
config's seed (the engine seeds torch before :func:`Session` setup), and each
epoch gets a generator and a global torch seed that depend only on
``(seed, epoch)``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from .errors import CorruptArtifact
from .loop import (
    CheckpointError,
    NonFiniteLoss,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    seed_everything,
)
from .provenance import machine_provenance
from .results import (
    atomic_write_bytes,
    remove_checked,
    set_aside,
    sha256_file,
    verify_file,
)
from .runs import CORE_VERSION, cache_dir, check_cache_writable, run_lock

__all__ = [
    "AppResult",
    "Session",
    "app_dir",
    "app_key",
    "check_finite",
    "evaluated_epochs",
    "run_app",
]

# Config fields that decide only what is measured, not what is computed.
_MEASURED_ONLY = ("eval_every",)


class Session(Protocol):
    """One run's computation, made by the application's ``setup(cfg, device)``.

    - ``state``: the objects to checkpoint after each epoch, by name (modules,
      optimisers, schedulers: anything with ``state_dict``/``load_state_dict``).
    - ``steps_per_epoch``: the optimiser steps of one epoch (for the bar).
    - ``train_epoch(epoch, gen, tick)``: one epoch (``epoch`` counts from 0);
      draw every random choice from ``gen`` (seeded by ``(seed, epoch)``);
      call ``tick()`` after each step; return the epoch's mean training
      losses by name (floats).
    - ``evaluate()``: the held-out metrics by name (floats).
    - ``files()``: what the finished run keeps, ``{file name: state_dict}``.
    - ``info()``: what the record says about the models (JSON-able): sizes,
      FLOPs, the teacher's run.
    """

    state: dict[str, Any]
    steps_per_epoch: int

    def train_epoch(
        self, epoch: int, gen: torch.Generator, tick: Callable[[], None]
    ) -> dict[str, float]: ...

    def evaluate(self) -> dict[str, float]: ...

    def files(self) -> dict[str, dict]: ...

    def info(self) -> dict[str, Any]: ...


def _config_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        return dict(cfg.to_dict())
    if dataclasses.is_dataclass(cfg):
        return dataclasses.asdict(cfg)
    raise ValueError(f"a run config must be a dataclass, got {type(cfg).__name__}")


def app_key(cfg: Any, kind: str, version: int) -> str:
    """The run's cache key (12 hex digits)."""
    d = {k: v for k, v in _config_dict(cfg).items() if k not in _MEASURED_ONLY}
    ident = {"kind": kind, "version": version, "core": CORE_VERSION, "config": d}
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def app_dir(cfg: Any, kind: str, version: int) -> Path:
    """Where the run lives: ``<cache>/<kind>/<name>-<key>``."""
    return cache_dir() / kind / f"{cfg.name}-{app_key(cfg, kind, version)}"


def evaluated_epochs(epochs: int, eval_every: int | None) -> set[int]:
    """The epochs (from 1) after which a run evaluates: every ``eval_every``-th
    and always the last."""
    every = eval_every or epochs
    return {e for e in range(1, epochs + 1) if e % every == 0} | {epochs}


def check_finite(total: torch.Tensor, parts: Mapping[str, float]) -> float:
    """``total`` as a float; :class:`NonFiniteLoss` (naming the parts) if it is
    NaN or infinite."""
    value = float(total.detach()) if isinstance(total, torch.Tensor) else float(total)
    if not math.isfinite(value):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
        raise NonFiniteLoss(
            f"the loss became {value} ({shown}); lower the learning rate or the "
            "method's weight"
        )
    return value


@dataclass
class AppResult:
    """A finished application run: its config (as a dict), the held-out
    metrics after the last epoch, the per-epoch history, what the session
    said about its models (``info``), the training seconds, the files it
    keeps (with their checksums) and where it came from."""

    kind: str
    name: str
    key: str
    config: dict[str, Any]
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    info: dict[str, Any]
    seconds: float
    provenance: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    from_cache: bool = False

    def to_json(self) -> str:
        d = {k: v for k, v in dataclasses.asdict(self).items()}
        del d["path"], d["from_cache"]
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> AppResult:
        """Read ``result.json``; :class:`CorruptArtifact` if it is not one."""
        path = Path(path)
        try:
            d = json.loads(path.read_bytes().decode())
            res = cls(
                kind=str(d["kind"]),
                name=str(d["name"]),
                key=str(d["key"]),
                config=dict(d["config"]),
                metrics={k: float(v) for k, v in d["metrics"].items()},
                history=list(d["history"]),
                info=dict(d["info"]),
                seconds=float(d["seconds"]),
                provenance=dict(d["provenance"]),
                files=dict(d["files"]),
                path=str(path.parent),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise CorruptArtifact(
                f"{path} is not a valid run record ({type(e).__name__}: {why})"
            ) from None
        return res

    def verify_files(self, names: Iterable[str] | None = None) -> None:
        """Check the run's files against their recorded checksums."""
        if self.path is None:
            raise ValueError(f"{self.name} has no run folder")
        for n in sorted(self.files) if names is None else names:
            if n not in self.files:
                raise KeyError(
                    f"{self.name} kept no file {n!r}; it has {sorted(self.files)}"
                )
            verify_file(Path(self.path) / n, self.files[n])

    def state_dict(self, file: str = "model.pt") -> dict:
        """The state dict kept in ``file``, checked against its checksum."""
        self.verify_files([file])
        return torch.load(Path(self.path) / file, map_location="cpu", weights_only=True)

    def load_into(
        self,
        module: nn.Module,
        file: str = "model.pt",
        device: str | torch.device = "cpu",
    ) -> nn.Module:
        """``module`` with the weights of ``file`` loaded, on ``device``, in
        eval mode."""
        module.load_state_dict(self.state_dict(file))
        return module.to(device).eval()

    def __repr__(self) -> str:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(self.metrics.items())[:4])
        return f"AppResult({self.kind}/{self.name}: {shown})"


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def run_app(
    cfg: Any,
    *,
    kind: str,
    version: int,
    setup: Callable[[Any, torch.device], Session],
    headline: Callable[[Mapping[str, float]], str],
    resume: bool = True,
    use_cache: bool = True,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> AppResult:
    """Train ``cfg`` (or load it from the cache) and return its :class:`AppResult`.

    ``cfg``: a frozen dataclass with ``name``, ``seed``, ``epochs`` and
    ``eval_every`` (and ``to_dict`` if its fields are not plain). ``kind``
    and ``version``: the application and its declared computation version
    (in the key). ``setup(cfg, device)`` builds the :class:`Session` (it may
    run a teacher first, through its own ``run_app``). ``headline(metrics)``:
    the text of the printed line (``[cache] name: <headline>`` or
    ``[done] name: <headline> in 12.3 s``).

    ``resume=False`` discards a partial run's checkpoint; ``use_cache=False``
    trains even if the run is finished (and replaces its record);
    ``progress``: a tqdm bar on stderr; ``device``: None picks CUDA if there
    is one, else the CPU.
    """
    device = resolve_device(device)
    key = app_key(cfg, kind, version)
    folder = app_dir(cfg, kind, version)
    want = evaluated_epochs(cfg.epochs, getattr(cfg, "eval_every", None))
    if use_cache and (res := _from_cache(cfg, folder, want, headline)) is not None:
        return res
    check_cache_writable()
    with run_lock(folder, cfg.name):
        # Another process may have finished the run while this one waited.
        if use_cache and (res := _from_cache(cfg, folder, want, headline)) is not None:
            return res
        created = not folder.exists()
        try:
            return _train(
                cfg,
                kind,
                version,
                key,
                folder,
                setup,
                headline,
                want,
                device,
                resume,
                progress,
            )
        except BaseException:
            # A run that failed before its first checkpoint leaves no folder.
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            raise


def _from_cache(
    cfg: Any, folder: Path, want: set[int], headline: Callable
) -> AppResult | None:
    """The finished run in ``folder``, checked, or None. A broken record or
    file sets the whole folder aside (kept, not deleted), with a line."""
    path = folder / "result.json"
    if not path.exists():
        return None
    try:
        res = AppResult.load(path)
        res.verify_files()
    except CorruptArtifact as e:
        moved = set_aside(folder, cache_dir() / "set-aside")
        print(f"[corrupt] {e}; moved the run's folder to {moved}; training it again")
        return None
    have = {h["epoch"] for h in res.history if h.get("test") is not None}
    if not want <= have:
        print(
            f"[cache] {cfg.name}: the cached run did not evaluate every epoch "
            "asked for (eval_every); training it again to measure them"
        )
        return None
    res.from_cache = True
    print(f"[cache] {cfg.name}: {headline(res.metrics)} (loaded, not trained)")
    return res


def _train(
    cfg: Any,
    kind: str,
    version: int,
    key: str,
    folder: Path,
    setup: Callable[[Any, torch.device], Session],
    headline: Callable,
    want: set[int],
    device: torch.device,
    resume: bool,
    progress: bool,
) -> AppResult:
    ckpt = folder / "checkpoint.pt"
    seed_everything(cfg.seed)  # the initial weights depend only on the seed
    sess = setup(cfg, device)
    history: list[dict[str, Any]] = []
    start = 0
    if ckpt.exists() and not resume:
        remove_checked(ckpt)
        print(f"[restart] {cfg.name}: the partial run was discarded")
    elif ckpt.exists():
        try:
            state = load_checkpoint(ckpt, key)
            for name, obj in sess.state.items():
                obj.load_state_dict(state["state"][name])
            history, start = state["history"], state["epoch"]
        except (CheckpointError, KeyError, RuntimeError, ValueError) as e:
            moved = set_aside(ckpt, cache_dir() / "set-aside")
            print(f"[corrupt] {e}; moved to {moved}; {cfg.name} starts from epoch 0")
            return _train(
                cfg,
                kind,
                version,
                key,
                folder,
                setup,
                headline,
                want,
                device,
                resume,
                progress,
            )
        print(f"[resume] {cfg.name}: continuing after epoch {start}/{cfg.epochs}")

    folder.mkdir(parents=True, exist_ok=True)
    steps = sess.steps_per_epoch
    bar = tqdm(
        total=cfg.epochs * steps,
        initial=start * steps,
        desc=cfg.name,
        disable=not progress,
        mininterval=2.0,
        file=sys.stderr,
    )
    t_wall = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        train = sess.train_epoch(epoch, gen, lambda: bar.update(1))
        metrics = None
        if epoch + 1 in want:
            metrics = {k: float(v) for k, v in sess.evaluate().items()}
            bar.set_postfix_str(headline(metrics))
        history.append(
            {
                "epoch": epoch + 1,
                "train": {k: float(v) for k, v in train.items()},
                "test": metrics,
                "seconds": time.perf_counter() - t0,
            }
        )
        save_checkpoint(
            ckpt,
            {
                "key": key,
                "epoch": epoch + 1,
                "state": {n: o.state_dict() for n, o in sess.state.items()},
                "history": history,
            },
        )
    bar.close()
    wall = time.perf_counter() - t_wall

    files = sess.files()
    for name, state in files.items():
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(folder / name, buf.getvalue())
    res = AppResult(
        kind=kind,
        name=cfg.name,
        key=key,
        config=_config_dict(cfg),
        metrics=history[-1]["test"],
        history=history,
        info=sess.info(),
        seconds=sum(h["seconds"] for h in history),
        provenance={
            **machine_provenance(device),
            "versions": {"core": CORE_VERSION, kind: version},
            "wall_seconds": wall,
        },
        files={name: sha256_file(folder / name) for name in files},
        path=str(folder),
    )
    atomic_write_bytes(folder / "result.json", res.to_json().encode())
    remove_checked(ckpt)
    print(f"[done] {cfg.name}: {headline(res.metrics)} in {wall:.1f} s")
    return res
