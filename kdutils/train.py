"""Training: ``fit``, ``evaluate``, and ``run(config) -> Result`` with caching.

``run`` is the one entry point notebooks and the CLI use. A run lives in a
folder of the cache named after the config and a key: a hash of the full
config and of the source code that trains (config, data, models, losses,
distillers, train). Change either and the key changes, so a stale entry can
never be used. A folder with ``result.json`` is finished; one with only
``checkpoint.pt`` is resumed from its last completed epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import os
import pickle
import platform
import random
import re
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import data as kdata
from .config import Config, teacher_config
from .distillers import Distiller, build, get_method
from .errors import CacheUnwritable, CorruptArtifact, DeviceUnavailable
from .inference import evaluate, inference_batch_size, predict_logits
from .models import build_model, num_params
from .results import (
    Result,
    atomic_write_bytes,
    remove_checked,
    set_aside,
    sha256_file,
    verify_file,
    write_checked,
)
from .runs import CORE_VERSION, cache_dir, covers, measure_both, run_dir, run_key
from .version import __version__

__all__ = [
    "run",
    "run_id",
    "load_run",
    "fit",
    "evaluate",
    "build_model",
    "cache_dir",
    "run_key",
    "CheckpointError",
    "NonFiniteLoss",
    "PartialRunExists",
]

_PKG = Path(__file__).resolve().parent
# The source files whose content decides what any run computes; a method adds
# the files its Distiller's module draws on (see ``method_sources``).
_CORE_SOURCES = ["config.py", "data.py", "models.py", "train.py"]


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt or from another run."""


class NonFiniteLoss(FloatingPointError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


class PartialRunExists(RuntimeError):
    """A checkpoint exists and the caller asked neither to resume nor restart."""


def method_sources(method: str) -> list[str]:
    """The kdutils files (relative paths) that a method's Distiller draws on.

    The module that defines the method's class, and, transitively, every
    kdutils module whose functions, classes or self it imports (its loss
    module, ``distillers/base.py``, ``models.py``, ...). Adding a new method in
    another module leaves every other method's runs valid.
    """
    cls = get_method(method)
    seen: set[str] = set()
    stack = [cls.__module__]
    while stack:
        name = stack.pop()
        mod = sys.modules.get(name)
        if mod is None or name in seen:
            continue
        seen.add(name)
        for value in vars(mod).values():
            dep = (
                value.__name__
                if isinstance(value, types.ModuleType)
                else getattr(value, "__module__", None)
            )
            if isinstance(dep, str) and dep.startswith("kdutils.") and dep not in seen:
                stack.append(dep)
    root = Path(sys.modules["kdutils"].__file__).resolve().parent
    return sorted(
        Path(sys.modules[n].__file__).resolve().relative_to(root).as_posix()
        for n in seen
        if n.startswith("kdutils.")
    )


def code_hash(method: str = "ce") -> str:
    """Hash of the core training sources and of ``method``'s own sources."""
    h = hashlib.sha256()
    for rel in sorted({*_CORE_SOURCES, *method_sources(method)}):
        h.update(rel.encode())
        h.update((_PKG / rel).read_bytes())
    cls = get_method(method)
    if not cls.__module__.startswith("kdutils."):
        # A method registered by the user (a notebook, a script): its own source.
        try:
            h.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            h.update(f"{cls.__module__}.{cls.__qualname__}".encode())
    return h.hexdigest()[:16]


# Mixed precision: the autocast dtype of each ``amp`` value (None: float32).
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_amp(amp: str | None, device: torch.device | str | None = None) -> None:
    """Raise ValueError for an unknown ``amp`` or one the device cannot run."""
    if amp is not None and amp not in AMP_DTYPES:
        raise ValueError(
            f"amp must be None, 'bf16' or 'fp16', got {amp!r} (None trains in float32)"
        )
    if amp == "fp16" and device is not None and torch.device(device).type != "cuda":
        raise ValueError(
            "amp='fp16' needs a CUDA device (it relies on a gradient scaler); "
            "use amp='bf16' or amp=None on the CPU"
        )


def check_compile(compile: bool | str) -> None:
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device, checked: ValueError for a name torch does
    not know as a training device, :class:`DeviceUnavailable` for one this
    machine does not have. None: CUDA if available, else the CPU."""
    if device is None:
        return default_device()
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        )
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise DeviceUnavailable(
                f"device {str(device)!r}: no CUDA GPU is visible on this machine "
                "(torch.cuda.is_available() is False); use --device cpu"
            )
        if dev.index is not None and dev.index >= n:
            raise DeviceUnavailable(
                f"device {str(device)!r}: this machine has {n} CUDA GPU(s), "
                f"numbered 0..{n - 1}"
            )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"device {str(device)!r}: MPS is not available here")
    return dev


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
def _run_lock(folder: Path, name: str) -> Iterator[None]:
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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _make_optimizer(distiller: Distiller, cfg: Config):
    params = [p for p in distiller.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    if cfg.schedule == "step":
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, list(cfg.milestones), cfg.gamma
        )
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    return opt, sched


def _overrides(distiller: Distiller, hook: str) -> bool:
    """Whether ``distiller``'s class overrides the base class's ``hook``."""
    return getattr(type(distiller), hook) is not getattr(Distiller, hook)


def _trainable_state(distiller: Distiller) -> dict[str, Tensor]:
    # Teachers are frozen and restored from their own run: leave them out.
    return {
        k: v for k, v in distiller.state_dict().items() if not k.startswith("teacher.")
    }


def save_checkpoint(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    write_checked(path, buf.getvalue())


def load_checkpoint(path: Path, key: str) -> dict:
    try:
        verify_file(path)
        state = torch.load(path, map_location="cpu", weights_only=False)
    except CorruptArtifact as e:
        raise CheckpointError(str(e)) from None
    except (EOFError, RuntimeError, pickle.UnpicklingError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else ''})"
        ) from None
    if not isinstance(state, dict) or state.get("key") != key:
        raise CheckpointError(f"checkpoint {path} does not belong to run {key}")
    return state


def fit(
    distiller: Distiller,
    train_loader: kdata.Loader,
    test: kdata.TensorData,
    cfg: Config,
    checkpoint: Path | None = None,
    key: str = "",
    teacher_out: dict[str, Tensor] | None = None,
    progress: bool = True,
    amp: str | None = None,
    save_dir: Path | None = None,
) -> list[dict]:
    """Train ``distiller`` for ``cfg.epochs``; return the per-epoch history.

    Writes ``checkpoint`` after every epoch and, if it exists, resumes from it;
    a fresh run first calls ``distiller.prepare(train_loader, cfg)``.
    ``teacher_out`` maps ``"logits"`` and each of ``distiller.teacher_layers``
    to the frozen teacher's outputs on the whole training set ``(N, ...)``, in
    dataset order; each batch's slice replaces the teacher's forward pass.
    ``amp`` (``"bf16"``, ``"fp16"``, CUDA only, or None) runs the forward
    passes and the losses under autocast; fp16 adds a gradient scaler, whose
    state the checkpoint keeps. After each epoch in ``cfg.save_epochs`` the
    student's weights go to ``save_dir / "model-e<epoch>.pt"``.

    Two optional hooks of the Distiller: :meth:`~Distiller.lr_factor` scales
    the scheduled learning rate epoch by epoch, and what it puts in
    ``step_metrics`` or returns from :meth:`~Distiller.epoch_metrics` is
    recorded in the history as ``metric_<name>`` (never added to the loss).
    """
    device = next(distiller.student.parameters()).device
    lr_hook = _overrides(distiller, "lr_factor")
    metrics_hook = _overrides(distiller, "epoch_metrics")
    check_amp(amp, device)
    autocast = (
        (lambda: torch.autocast(device.type, dtype=AMP_DTYPES[amp]))
        if amp is not None
        else contextlib.nullcontext
    )
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    history: list[dict] = []
    start = 0
    resuming = checkpoint is not None and checkpoint.exists()
    if not resuming:
        distiller.prepare(train_loader, cfg)
    opt, sched = _make_optimizer(distiller, cfg)
    if resuming:
        state = load_checkpoint(checkpoint, key)
        # The teacher is not in checkpoints (it has its own run); anything else
        # missing or extra means the checkpoint is not this run's.
        missing, unexpected = distiller.load_state_dict(
            state["distiller"], strict=False
        )
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint {checkpoint} does not match this run's modules "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        history, start = state["history"], state["epoch"]
        print(f"[resume] {cfg.name}: continuing after epoch {start}/{cfg.epochs}")
    if teacher_out is not None:
        teacher_out = {k: v.to(device) for k, v in teacher_out.items()}
    steps = len(train_loader)
    bar = tqdm(
        total=cfg.epochs * steps,
        initial=start * steps,
        desc=cfg.name,
        disable=not progress,
        mininterval=2.0,
        file=sys.stderr,
    )
    for epoch in range(start, cfg.epochs):
        t0 = time.perf_counter()
        distiller.train()
        distiller.on_epoch(epoch, cfg.epochs)
        if lr_hook:
            factor = float(distiller.lr_factor(epoch, cfg.epochs))
            for g, base in zip(opt.param_groups, sched.get_last_lr(), strict=True):
                g["lr"] = base * factor
        train_loader.set_epoch(epoch)
        # Running sums stay on the device (float64, as Python floats were), so
        # the only host synchronisation per step is the finiteness check.
        sums: dict[str, Tensor] = {}
        msums: dict[str, Tensor] = {}
        distiller.step_metrics = {}
        correct = torch.zeros((), dtype=torch.int64, device=device)
        seen = 0
        for step, (x, y, idx) in enumerate(train_loader):
            t_out = None
            if teacher_out is not None:
                rows = idx.to(device)
                t_out = {k: v[rows] for k, v in teacher_out.items()}
            with autocast():
                logits_s, terms = distiller(x, y, teacher_out=t_out, idx=idx)
                loss = sum(terms.values())
            if not torch.isfinite(loss):
                values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                kept = (
                    f"{checkpoint} (after epoch {epoch})"
                    if checkpoint is not None and epoch > 0
                    else "no checkpoint (it failed in the first epoch)"
                )
                raise NonFiniteLoss(
                    f"{cfg.name}: loss became {loss.item()} at epoch {epoch + 1}, "
                    f"step {step + 1} ({values}); kept {kept}. Lower the learning "
                    "rate or the loss weights."
                )
            opt.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                opt.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            with torch.no_grad():
                for k, v in terms.items():
                    term = v.detach().double() * len(y)
                    sums[k] = sums[k] + term if k in sums else term
                correct += (logits_s.argmax(1) == y).sum()
                for k, v in distiller.step_metrics.items():
                    m = v.detach().double() * len(y)
                    msums[k] = msums[k] + m if k in msums else m
                distiller.step_metrics = {}
            seen += len(y)
            bar.update(1)
        lr = opt.param_groups[0]["lr"]
        if lr_hook:  # the scheduler steps from its own rate, not the scaled one
            for g, base in zip(opt.param_groups, sched.get_last_lr(), strict=True):
                g["lr"] = base
        sched.step()
        evaluated = (
            epoch + 1 == cfg.epochs
            or (epoch + 1) % cfg.eval_every == 0
            or epoch + 1 in cfg.save_epochs  # a kept model gets its accuracy
        )
        ev = (
            evaluate(distiller.student, test)
            if evaluated
            else {"acc": None, "loss": None}
        )
        extra: dict[str, float] = {}
        if metrics_hook:
            distiller.eval()
            with torch.no_grad():
                extra = {
                    f"metric_{k}": float(v)
                    for k, v in distiller.epoch_metrics(test).items()
                }
        record = {
            "epoch": epoch + 1,
            "lr": lr,
            "train_acc": correct.item() / seen,
            **{f"train_{k}": v.item() / seen for k, v in sums.items()},
            "test_acc": ev["acc"],
            "test_loss": ev["loss"],
            **{f"metric_{k}": v.item() / seen for k, v in msums.items()},
            **extra,
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        if save_dir is not None and epoch + 1 in cfg.save_epochs:
            buf = io.BytesIO()
            torch.save(distiller.student.state_dict(), buf)
            atomic_write_bytes(save_dir / f"model-e{epoch + 1}.pt", buf.getvalue())
        if evaluated:
            bar.set_postfix(epoch=epoch + 1, test_acc=f"{100 * ev['acc']:.2f}")
        if checkpoint is not None:
            save_checkpoint(
                checkpoint,
                {
                    "key": key,
                    "epoch": epoch + 1,
                    "distiller": _trainable_state(distiller),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                    "history": history,
                },
            )
    bar.close()
    return history


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_PKG), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        dirty = subprocess.run(
            ["git", "-C", str(_PKG), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance(device: torch.device, method: str = "ce") -> dict:
    import torchvision

    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor()
    )
    return {
        "git_commit": _git_commit(),
        "code_hash": code_hash(method),
        "versions": {"core": CORE_VERSION, method: get_method(method).version},
        "kdutils": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "device": f"{device.type}: {name or platform.machine()}",
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def load_split(cfg: Config, train: bool) -> kdata.TensorData:
    d = kdata.load(cfg.dataset, train=train)
    return d.subset(cfg.train_subset if train else cfg.test_subset)


def _teacher_train_logits(
    t_res: Result, teacher: nn.Module, train: kdata.TensorData
) -> Tensor:
    """The teacher's logits on the (unaugmented) training set, cached in its run folder."""
    suffix = "" if t_res.epoch is None else f"-e{t_res.epoch}"
    path = Path(t_res.path) / f"train_logits{suffix}.pt"
    if path.exists():
        try:
            verify_file(path)
            logits = torch.load(path, weights_only=True)
            if not isinstance(logits, Tensor) or logits.ndim != 2:
                raise CorruptArtifact(f"{path} holds no (N, classes) logits")
        except (CorruptArtifact, EOFError, RuntimeError, pickle.UnpicklingError) as e:
            moved = set_aside(path, cache_dir() / "set-aside")
            why = str(e) if isinstance(e, CorruptArtifact) else f"{path} is unreadable"
            print(f"[corrupt] {why}; moved to {moved}; computing the logits again")
        else:
            if logits.shape[0] == len(train):
                print(f"[cache] {t_res.name}: logits on the training set (loaded)")
                return logits
    logits = predict_logits(teacher, train)
    buf = io.BytesIO()
    torch.save(logits, buf)
    write_checked(path, buf.getvalue())
    print(f"[teacher] {t_res.name}: logits on the training set computed once, cached")
    return logits


# Teacher feature maps for the whole training set are kept in memory only when
# they fit this budget (ResNet32's three stages on 10k Fashion-MNIST images:
# 0.9 GB); otherwise the teacher runs on every batch.
FEATURE_CACHE_BYTES = int(float(os.environ.get("KD_FEATURE_CACHE_GB", "3")) * 2**30)


@torch.no_grad()
def _teacher_train_features(
    distiller: Distiller,
    train: kdata.TensorData,
    channels_last: bool,
    keys: tuple[str, ...] | None = None,
) -> dict[str, Tensor] | None:
    """``distiller.teacher_layers`` outputs on the training set, or None if too big.

    ``keys`` names other entries of ``teacher_outputs`` to keep instead (the
    stacked logits of several teachers, for ``precompute_teachers``).
    """
    layers = distiller.teacher_layers if keys is None else keys
    device = next(distiller.teacher.parameters()).device
    x0 = kdata.normalize(train.images[:1].to(device), train.info)
    shapes = {k: v.shape[1:] for k, v in distiller.teacher_outputs(x0).items()}
    per_sample = sum(torch.Size(shapes[k]).numel() for k in layers) * 4
    if per_sample * len(train) > FEATURE_CACHE_BYTES:
        print(
            f"[teacher] features of {', '.join(layers)} would take "
            f"{per_sample * len(train) / 2**30:.1f} GiB: computed on every batch"
        )
        return None
    loader = kdata.Loader(
        train,
        inference_batch_size(device),
        shuffle=False,
        device=device,
        channels_last=channels_last,
    )
    chunks: dict[str, list[Tensor]] = {k: [] for k in layers}
    for x, _, _ in loader:
        out = distiller.teacher_outputs(x)
        for k in layers:
            chunks[k].append(out[k].clone())
    print(
        f"[teacher] features of {', '.join(layers)} on the training set computed "
        f"once ({per_sample * len(train) / 2**20:.0f} MiB in memory)"
    )
    return {k: torch.cat(v).clone() for k, v in chunks.items()}


# ``compile="auto"`` compiles the frozen teacher when it runs on every batch
# for at least this many steps: compiling a ResNet56 for inference took tens of
# seconds on a 2-core CPU and then ran it about twice as fast, which pays off
# over a few hundred steps; a teacher whose outputs are precomputed runs once.
COMPILE_MIN_STEPS = 2000


def inductor_cache_per_isa() -> str | None:
    """Give torch.compile's on-disk cache one folder per CPU vector ISA.

    Why: in torch 2.14.1 the inductor cache key leaves out the CPU's vector
    instruction set. A graph compiled where AVX-512 was picked, served where
    AVX2 is (another CPU sharing the cache, or ``ATEN_CPU_CAPABILITY=avx2``),
    gave wrong teacher logits without an error; the other way round it
    crashed the process (SIGSEGV), which is how ``make test`` died after the
    machine's CPU changed under a persistent ``/tmp``. So unless the user chose
    ``TORCHINDUCTOR_CACHE_DIR``, the cache is torch's default folder plus the
    ISA's name and width (``.../torchinductor_<user>/avx2-256``). Returns the
    folder set, or None when the user's own setting was left alone.
    """
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # torch writes its default into the variable the first time it looks
    # (importing the optimizers does), so the default counts as unset.
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return None
    isa = pick_vec_isa()
    name = f"{isa}-{isa.bit_width()}" if isa else "novec"
    folder = os.path.join(default_cache_dir(), re.sub(r"[^A-Za-z0-9_.-]+", "_", name))
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


def _compile_teacher(
    distiller: Distiller, loader: kdata.Loader, mode: bool | str, steps: int
) -> str:
    """Compile ``distiller.teacher`` in place (``torch.compile``) when asked.

    Returns what was done, for the provenance: ``"no"``, ``"yes"`` or
    ``"failed: ..."``. The compiled teacher is tried on a full and on the last
    (smaller) batch here; if compiling fails, the run goes on uncompiled.
    """
    if distiller.teacher is None or mode is False:
        return "no"
    if isinstance(distiller.teacher, nn.ModuleList):
        # Several teachers: each is called by the method's own code.
        return "no"
    if mode == "auto" and (steps < COMPILE_MIN_STEPS or distiller.teacher_layers):
        # Feature methods hook the teacher's submodules on every call, which
        # makes a compiled graph recompile; "auto" leaves them uncompiled.
        return "no"
    teacher = distiller.teacher
    n, bs = len(loader.data), loader.batch_size
    sizes = sorted({min(bs, n), n % bs or min(bs, n)}, reverse=True)
    try:
        inductor_cache_per_isa()
        teacher.compile(dynamic=False)
        fmt = loader.memory_format
        for b in sizes:
            x = kdata.normalize(
                loader.data.images[:b].to(loader.device), loader.data.info
            )
            with torch.no_grad():
                distiller.teacher_outputs(x.contiguous(memory_format=fmt))
    except Exception as e:  # noqa: BLE001 - any compiler failure: run uncompiled
        teacher._compiled_call_impl = None
        msg = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        print(f"[compile] teacher not compiled ({msg}); running it uncompiled")
        return f"failed: {msg}"
    print("[compile] teacher compiled with torch.compile (runs on every batch)")
    return "yes"


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


def _load_teachers(
    cfg: Config, device: torch.device, **run_kwargs
) -> tuple[nn.Module | None, Result | None, list[Result]]:
    """The frozen teacher(s) of ``cfg``: ``(module, its Result, teacher_runs' Results)``.

    ``cfg.teacher_runs`` are loaded from the cache (several: an
    ``nn.ModuleList``); else ``cfg.teacher`` is trained alone (or loaded) as
    its own run. Methods that need no teacher get ``(None, None, [])``.
    """
    if not get_method(cfg.method).needs_teacher:
        return None, None, []
    if cfg.teacher_runs:
        t_results = [load_run(r) for r in cfg.teacher_runs]
        models = [r.load_model(device) for r in t_results]
        if len(models) == 1:
            return models[0], t_results[0], t_results
        return nn.ModuleList(models), None, t_results
    if cfg.teacher is None:
        return None, None, []
    t_res = run(teacher_config(cfg), device=device, **run_kwargs)
    return t_res.load_model(device), t_res, []


def load_distiller(res: Result | str, device: str | torch.device = "cpu") -> Distiller:
    """A finished run's whole Distiller in eval mode: the student, its frozen
    teacher(s) and the method's own trained modules (exits, peers, branches,
    the discriminator, the teachers' weighting), to look inside after training.
    """
    if isinstance(res, str):
        res = load_run(res)
    if res.path is None:
        raise ValueError(f"{res.name} has no run folder")
    cfg, device = res.cfg, torch.device(device)
    prov = res.provenance
    teacher, _, _ = _load_teachers(
        cfg,
        device,
        progress=False,
        channels_last=prov.get("channels_last", True),
        amp=prov.get("amp"),
    )
    student = build_model(cfg.student, cfg.dataset)
    distiller = build(cfg.method, student, teacher, **cfg.method_args)
    distiller.setup(load_split(cfg, True))
    res.verify_files(["model.pt", "distiller.pt"])
    state = {
        f"student.{k}": v
        for k, v in torch.load(
            Path(res.path) / "model.pt", map_location="cpu", weights_only=True
        ).items()
    }
    own = Path(res.path) / "distiller.pt"
    if own.exists():
        state.update(torch.load(own, map_location="cpu", weights_only=True))
    missing, unexpected = distiller.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("teacher.")]
    if missing or unexpected:
        raise CheckpointError(
            f"{res.name}: saved state does not match the method's modules "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return distiller.to(device).eval()


def run(
    cfg: Config,
    *,
    resume: bool = True,
    restart: bool = False,
    use_cache: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
    channels_last: bool = True,
    amp: str | None = None,
    compile: bool | str = "auto",
) -> Result:
    """Train ``cfg`` (or load it from the cache) and return its :class:`Result`.

    Prints one line saying whether the run was loaded from the cache or
    trained. A teacher is itself a run (``teacher_config(cfg)``), trained once
    and shared by every student that uses it. ``channels_last`` (NHWC) is
    faster for these convolutions on CPU and GPU alike; it is recorded in the
    result's provenance. ``amp`` (``"bf16"``; ``"fp16"`` on CUDA; None, the
    default, trains in float32) is mixed precision: it changes what a run
    computes, so it is part of the run's key, like ``channels_last``.
    ``compile`` (True, False or ``"auto"``) applies ``torch.compile`` to the
    frozen teacher when it runs on every batch (augmentation on, or features
    too large to precompute); ``"auto"`` does so for runs of at least
    ``COMPILE_MIN_STEPS`` steps. A failed compile falls back to the plain
    teacher with a printed line; what happened is recorded in the provenance.
    """
    check_amp(amp)
    check_compile(compile)
    device = resolve_device(device)
    check_amp(amp, device)
    key = run_key(cfg, channels_last, amp)
    folder = run_dir(cfg, channels_last, amp)
    if use_cache:
        res, cfg = _from_cache(cfg, folder)
        if res is not None:
            return res
    check_cache_writable()
    with _run_lock(folder, cfg.name):
        # Another process may have finished the run while this one waited.
        if use_cache:
            res, cfg = _from_cache(cfg, folder)
            if res is not None:
                return res
        created = not folder.exists()
        try:
            return _train_run(
                cfg,
                key,
                folder,
                device,
                resume,
                restart,
                progress,
                channels_last,
                amp,
                compile,
            )
        except BaseException:
            # A run that failed before its first checkpoint leaves no folder.
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            raise


def _from_cache(cfg: Config, folder: Path) -> tuple[Result | None, Config]:
    """The finished run in ``folder``, checked, or None and the config to train.

    A record that cannot be read, or a file that differs from its recorded
    checksum, makes the run "not cached": one line says so, and the whole
    folder is moved to ``<cache>/set-aside/`` (kept, not deleted). A cached
    run serves ``cfg`` only if it holds every measurement ``cfg`` asks for
    (``eval_every`` and ``save_epochs`` are not in the key); otherwise the
    config to train measures both what was and what is asked.
    """
    result_path = folder / "result.json"
    if not result_path.exists():
        return None, cfg
    try:
        res = Result.load(result_path)
        res.verify_files()
    except CorruptArtifact as e:
        moved = set_aside(folder, cache_dir() / "set-aside")
        print(f"[corrupt] {e}; moved the run's folder to {moved}; training it again")
        return None, cfg
    kept = {int(m[1]) for f in folder.iterdir() if (m := _KEPT.fullmatch(f.name))}
    if not covers(res.history, kept, cfg):
        print(
            f"[cache] {cfg.name}: the cached run did not evaluate or keep every "
            "epoch asked for; training it again to measure both"
        )
        return None, measure_both(cfg, res.cfg)
    res.from_cache = True
    print(
        f"[cache] {cfg.name}: test acc {100 * res.test_acc:.2f}% (loaded, not trained)"
    )
    return res, cfg


_KEPT = re.compile(r"model-e(\d+)\.pt")


def _usable_checkpoint(ckpt: Path, key: str, name: str) -> bool:
    """Whether ``ckpt`` can be resumed; a broken one is set aside with a line."""
    if not ckpt.exists():
        return False
    try:
        load_checkpoint(ckpt, key)
    except CheckpointError as e:
        moved = set_aside(ckpt, cache_dir() / "set-aside")
        print(f"[corrupt] {e}; moved to {moved}; {name} starts from epoch 0")
        return False
    return True


def _train_run(
    cfg: Config,
    key: str,
    folder: Path,
    device: torch.device,
    resume: bool,
    restart: bool,
    progress: bool,
    channels_last: bool,
    amp: str | None,
    compile: bool | str,
) -> Result:
    result_path, ckpt = folder / "result.json", folder / "checkpoint.pt"
    if ckpt.exists() and restart:
        remove_checked(ckpt)
        print(f"[restart] {cfg.name}: the partial run was discarded")
    elif ckpt.exists() and not resume:
        raise PartialRunExists(
            f"a partial run of {cfg.name} exists at {ckpt}; resume it or restart it"
        )
    elif resume:
        _usable_checkpoint(ckpt, key, cfg.name)
    teacher, t_res, t_results = _load_teachers(
        cfg,
        device,
        progress=progress,
        channels_last=channels_last,
        amp=amp,
        compile=compile,
        resume=resume,
        restart=restart,
    )
    train, test = load_split(cfg, True), load_split(cfg, False)
    seed_everything(cfg.seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    student = build_model(cfg.student, cfg.dataset).to(device)
    distiller = build(cfg.method, student, teacher, **cfg.method_args)
    distiller.setup(train)
    distiller = distiller.to(device, memory_format=fmt)
    t_out = None
    if t_res is not None and distiller.cache_teacher and not cfg.augment:
        t_out = {"logits": _teacher_train_logits(t_res, teacher, train)}
        if distiller.teacher_layers:
            feats = _teacher_train_features(distiller, train, channels_last)
            t_out = None if feats is None else {**t_out, **feats}
    elif (
        isinstance(teacher, nn.ModuleList)
        and distiller.precompute_teachers
        and distiller.cache_teacher
        and not cfg.augment
    ):
        t_out = _teacher_train_features(
            distiller, train, channels_last, ("logits", *distiller.teacher_layers)
        )
    loader = kdata.Loader(
        train,
        cfg.batch_size,
        shuffle=True,
        augment=cfg.augment,
        seed=cfg.seed,
        device=device,
        channels_last=channels_last,
    )
    compiled = "no"
    if teacher is not None and t_out is None:
        compiled = _compile_teacher(
            distiller, loader, compile, cfg.epochs * len(loader)
        )
    print(
        f"[train] {cfg.name}: {cfg.epochs} epochs on {len(train)} images ({device.type})"
    )
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    history = fit(distiller, loader, test, cfg, ckpt, key, t_out, progress, amp, folder)
    wall = time.perf_counter() - t0
    buf = io.BytesIO()
    torch.save(student.state_dict(), buf)
    atomic_write_bytes(folder / "model.pt", buf.getvalue())
    own = {
        k: v
        for k, v in _trainable_state(distiller).items()
        if not k.startswith("student.")
    }
    if own:  # exits, peers, branches, discriminators: see load_distiller
        buf = io.BytesIO()
        torch.save(own, buf)
        atomic_write_bytes(folder / "distiller.pt", buf.getvalue())
    written = ["model.pt", "distiller.pt", *(f"model-e{e}.pt" for e in cfg.save_epochs)]
    res = Result(
        name=cfg.name,
        key=key,
        files={n: sha256_file(folder / n) for n in written if (folder / n).exists()},
        config=cfg.to_dict(),
        history=history,
        final={
            "test_acc": history[-1]["test_acc"],
            "test_loss": history[-1]["test_loss"],
            "params": num_params(student),
            "train_seconds": sum(h["seconds"] for h in history),
        },
        provenance={
            **provenance(device, cfg.method),
            "wall_seconds": wall,
            "channels_last": channels_last,
            "amp": amp,
            "compile_teacher": compiled,
        },
        teacher=(
            [{"name": r.name, "key": r.key, "test_acc": r.test_acc} for r in t_results]
            if len(t_results) > 1
            else (
                {"name": t_res.name, "key": t_res.key, "test_acc": t_res.test_acc}
                if t_res
                else None
            )
        ),
        path=str(folder),
    )
    res.save(result_path)
    remove_checked(ckpt)
    print(f"[done] {cfg.name}: test acc {100 * res.test_acc:.2f}% in {wall:.1f} s")
    return res
