"""The training loop: one run's data, optimiser, schedule, mixed precision,
``fit`` (epochs, checkpoints, evaluation) and the checkpoint files.

It knows nothing of caching or teachers: ``kdutils.train.run`` decides what to
train and hands ``fit`` a built :class:`~kdutils.distillers.Distiller`.
Imports: data, models, inference, results (checked writes), config, distillers.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from . import data as kdata
from .config import Config
from .distillers import Distiller
from .errors import CorruptArtifact, DeviceUnavailable
from .inference import evaluate
from .results import atomic_write_bytes, verify_file, write_checked

__all__ = [
    "AMP_DTYPES",
    "CheckpointError",
    "NonFiniteLoss",
    "check_amp",
    "default_device",
    "fit",
    "load_checkpoint",
    "load_split",
    "make_optimizer",
    "resolve_device",
    "save_checkpoint",
    "seed_everything",
    "trainable_state",
]


class CheckpointError(RuntimeError):
    """A checkpoint file is truncated, corrupt or from another run."""


class NonFiniteLoss(FloatingPointError):
    """A loss became NaN or infinite; the last good checkpoint is kept."""


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


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(distiller: Distiller, cfg: Config):
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


def trainable_state(distiller: Distiller) -> dict[str, Tensor]:
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
    val: kdata.TensorData | None = None,
) -> list[dict]:
    """Train ``distiller`` for ``cfg.epochs``; return the per-epoch history.

    Every evaluated epoch records the test accuracy and loss and, given
    ``val`` (the validation images), the validation ones (``val_acc``,
    ``val_loss``): choices are made on those.

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
    opt, sched = make_optimizer(distiller, cfg)
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
            if teacher_out is not None and getattr(train_loader, "views", False):
                # Stored per-view outputs (N, views, ...), kept in float16 or
                # float32: the row of each sample's view, as float32.
                rows, cols = idx.to(device), train_loader.view.to(device)
                t_out = {k: v[rows, cols].float() for k, v in teacher_out.items()}
            elif teacher_out is not None:
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
        ev_val = (
            evaluate(distiller.student, val)
            if evaluated and val is not None
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
            **(
                {"val_acc": ev_val["acc"], "val_loss": ev_val["loss"]}
                if val is not None
                else {}
            ),
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
                    "distiller": trainable_state(distiller),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    **({"scaler": scaler.state_dict()} if scaler is not None else {}),
                    "history": history,
                },
            )
    bar.close()
    return history


def load_split(cfg: Config, train: bool) -> kdata.TensorData:
    """The run's training images (its training subset less the validation
    part, see :func:`load_val`) or its test images."""
    d = kdata.load(cfg.dataset, train=train)
    d = d.subset(cfg.train_subset if train else cfg.test_subset)
    if train and cfg.val_fraction > 0:
        d = d.split_off(cfg.val_fraction)[0]
    return d


def load_val(cfg: Config) -> kdata.TensorData | None:
    """The run's validation images: ``cfg.val_fraction`` of its training
    subset, stratified by class, the same for every run of that subset
    (None when ``val_fraction`` is 0). Epochs and settings are chosen on
    these, never on the test set."""
    if cfg.val_fraction == 0:
        return None
    d = kdata.load(cfg.dataset, train=True).subset(cfg.train_subset)
    return d.split_off(cfg.val_fraction)[1]
