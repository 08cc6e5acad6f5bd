"""A run's frozen teacher: its outputs on the training set computed once and
cached (logits on disk beside the teacher's run, feature maps in memory), and
``torch.compile`` for a teacher that runs on every batch.

Imports: data, inference, results, runs (the cache folder), distillers.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import data as kdata
from .distillers import Distiller
from .errors import CorruptArtifact
from .inference import inference_batch_size, is_channels_last, predict_logits
from .models import capture
from .results import Result, set_aside, verify_file, write_checked
from .runs import cache_dir

__all__ = [
    "COMPILE_MIN_STEPS",
    "FEATURE_CACHE_BYTES",
    "check_compile",
    "compile_teacher",
    "inductor_cache_per_isa",
    "teacher_train_features",
    "teacher_train_logits",
    "teacher_view_outputs",
    "view_outputs_bytes",
]


def teacher_train_logits(
    t_res: Result, teacher: nn.Module, train: kdata.TensorData
) -> Tensor:
    """The teacher's logits on the (unaugmented) training set, cached in its run folder."""
    suffix = "" if t_res.epoch is None else f"-e{t_res.epoch}"
    path = Path(t_res.path) / f"train_logits{suffix}.pt"
    logits = _load_stored(path, lambda t: t.ndim == 2, "(N, classes) logits", "logits")
    if logits is not None and logits.shape[0] == len(train):
        print(f"[cache] {t_res.name}: logits on the training set (loaded)")
        return logits
    logits = predict_logits(teacher, train)
    buf = io.BytesIO()
    torch.save(logits, buf)
    write_checked(path, buf.getvalue())
    print(f"[teacher] {t_res.name}: logits on the training set computed once, cached")
    return logits


VIEW_DTYPES = {"float16": torch.float16, "float32": torch.float32}
# Teacher layers small enough to store for every view: the pooled embedding
# (ResNet56: 64 numbers an image-view, 1.0 GB in float16 for CIFAR's 50k x 162).
VIEW_LAYERS = ("pool",)


def view_outputs_bytes(
    train: kdata.TensorData, widths: dict[str, int], dtype: str
) -> int:
    """Bytes of a teacher's outputs (``{name: width}``) on every view of every
    training image, stored in ``dtype``."""
    size = torch.tensor([], dtype=VIEW_DTYPES[dtype]).element_size()
    return len(train) * kdata.view_count(train.info) * sum(widths.values()) * size


def teacher_view_outputs(
    t_res: Result,
    teacher: nn.Module,
    train: kdata.TensorData,
    dtype: str = "float16",
    layers: tuple[str, ...] = (),
    progress: bool = True,
) -> dict[str, Tensor]:
    """The frozen teacher's logits (and ``layers``, a subset of
    :data:`VIEW_LAYERS`) on every augmentation view of every training image,
    ``{name: (N, views, ...)}`` in ``dtype``, computed once and kept
    (checksummed, one file per output) in the teacher's run folder for every
    student of that teacher.

    With the standard augmentation an image has :func:`kdutils.data.view_count`
    views (CIFAR: 162), and a teacher in eval mode gives each one fixed output,
    so a student trained on augmented batches can read its teacher's outputs
    instead of running the teacher: the same values, not an approximation
    (up to ``dtype``'s rounding, and to the teacher's arithmetic on another
    batch composition). A view is :func:`kdutils.data.render_view`.
    """
    if dtype not in VIEW_DTYPES:
        raise ValueError(
            f"dtype must be one of {', '.join(VIEW_DTYPES)}, got {dtype!r}"
        )
    if not set(layers) <= set(VIEW_LAYERS):
        raise ValueError(
            f"only {', '.join(VIEW_LAYERS)} can be stored per view, not {layers}"
        )
    names = ("logits", *layers)
    suffix = "" if t_res.epoch is None else f"-e{t_res.epoch}"
    n_views = kdata.view_count(train.info)
    paths = {k: Path(t_res.path) / f"train_view_{k}{suffix}-{dtype}.pt" for k in names}
    stored = {k: _load_views(p, len(train), n_views) for k, p in paths.items()}
    if all(v is not None for v in stored.values()):
        print(
            f"[cache] {t_res.name}: {' and '.join(names)} on all {n_views} views (loaded)"
        )
        return stored
    out: dict[str, Tensor] = {}
    for v in tqdm(
        range(n_views),
        desc=f"{t_res.name} views",
        disable=not progress,
        mininterval=2.0,
    ):
        view = kdata.TensorData(
            kdata.render_view(train.images, train.info, v), train.labels, train.name
        )
        got = _outputs(teacher, view, layers)
        for k, t in got.items():
            if k not in out:
                out[k] = torch.empty(
                    len(train), n_views, *t.shape[1:], dtype=VIEW_DTYPES[dtype]
                )
            out[k][:, v] = t.to(out[k].dtype)
    for k, t in out.items():
        buf = io.BytesIO()
        torch.save(t, buf)
        write_checked(paths[k], buf.getvalue())
    mib = sum(t.numel() * t.element_size() for t in out.values()) / 2**20
    print(
        f"[teacher] {t_res.name}: {' and '.join(names)} on all {n_views} views of "
        f"the training set computed once ({mib:.0f} MiB, {dtype}), cached"
    )
    return out


@torch.inference_mode()
def _outputs(
    teacher: nn.Module, data: kdata.TensorData, layers: tuple[str, ...]
) -> dict[str, Tensor]:
    """The teacher's logits and ``layers`` on every sample, in order, on the CPU."""
    device = next(teacher.parameters()).device
    teacher.eval()
    loader = kdata.Loader(
        data,
        inference_batch_size(device),
        shuffle=False,
        device=device,
        channels_last=is_channels_last(teacher),
    )
    parts: dict[str, list[Tensor]] = {k: [] for k in ("logits", *layers)}
    with capture(teacher, layers) as feats:
        for x, _, _ in loader:
            parts["logits"].append(teacher(x).float().cpu())
            for k in layers:
                parts[k].append(feats[k].float().cpu())
    return {k: torch.cat(v) for k, v in parts.items()}


def _load_views(path: Path, n: int, n_views: int) -> Tensor | None:
    """Stored per-view outputs from ``path`` if present, whole and of this
    training set; a broken file is set aside with a line."""
    t = _load_stored(path, lambda t: t.ndim >= 3, "(N, views, ...) outputs", "outputs")
    return t if t is not None and t.shape[:2] == (n, n_views) else None


def _load_stored(
    path: Path, fits: Callable[[Tensor], bool], holds: str, what: str
) -> Tensor | None:
    """The tensor a teacher's run stored in ``path``, checked against its
    checksum and by ``fits``; None if absent. A broken or unreadable file is
    set aside (kept, not deleted) with a line saying ``what`` is computed again."""
    if not path.exists():
        return None
    try:
        verify_file(path)
        t = torch.load(path, weights_only=True)
        if not isinstance(t, Tensor) or not fits(t):
            raise CorruptArtifact(f"{path} holds no {holds}")
    except (CorruptArtifact, EOFError, RuntimeError, pickle.UnpicklingError) as e:
        moved = set_aside(path, cache_dir() / "set-aside")
        why = str(e) if isinstance(e, CorruptArtifact) else f"{path} is unreadable"
        print(f"[corrupt] {why}; moved to {moved}; computing the {what} again")
        return None
    return t


# Teacher feature maps for the whole training set are kept in memory only when
# they fit this budget (ResNet32's three stages on 10k Fashion-MNIST images:
# 0.9 GB); otherwise the teacher runs on every batch.
FEATURE_CACHE_BYTES = int(float(os.environ.get("KD_FEATURE_CACHE_GB", "3")) * 2**30)


@torch.no_grad()
def teacher_train_features(
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


def check_compile(compile: bool | str) -> None:
    if compile not in (True, False, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {compile!r}")


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


def compile_teacher(
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
