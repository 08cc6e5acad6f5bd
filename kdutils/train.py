"""``run(config) -> Result``: train a run, or load it from the cache.

``run`` is the one entry point notebooks, pipelines and the CLI use. A run
lives in a folder of the cache named after the config and its key (see
``kdutils.runs``: the configuration plus declared versions of the
computation). A folder with ``result.json`` is finished; one with only
``checkpoint.pt`` is resumed from its last completed epoch. The pieces live
beside this module: the loop in ``loop``, the teacher's cached outputs and
compile in ``teachers``, keys, folders and locks in ``runs``, what a run
records in ``provenance``.
"""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import torch
from torch import nn

from . import data as kdata
from .config import Config, teacher_config
from .distillers import Distiller, build, get_method
from .errors import CorruptArtifact
from .loop import (
    CheckpointError,
    check_amp,
    fit,
    load_checkpoint,
    load_split,
    load_val,
    resolve_device,
    seed_everything,
    trainable_state,
)
from .models import build_model, num_params
from .provenance import provenance
from .results import (
    Result,
    atomic_write_bytes,
    remove_checked,
    set_aside,
    sha256_file,
)
from .runs import (
    cache_dir,
    check_cache_writable,
    covers,
    load_run,
    measure_both,
    run_dir,
    run_key,
    run_lock,
)
from .teachers import (
    VIEW_DTYPES,
    VIEW_LAYERS,
    check_compile,
    compile_teacher,
    teacher_train_features,
    teacher_train_logits,
    teacher_view_outputs,
)

__all__ = ["PartialRunExists", "load_distiller", "run", "stored_views_apply"]


class PartialRunExists(RuntimeError):
    """A checkpoint exists and the caller asked neither to resume nor restart."""


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


def stored_views_apply(distiller) -> bool:
    """Whether a built distiller can read its teacher's stored per-view
    outputs: one frozen teacher, of which it reads only the logits and the
    layers small enough to store (:data:`kdutils.teachers.VIEW_LAYERS`: the
    pooled embedding, as CRD, RKD and PKT read)."""
    return (
        distiller.teacher is not None
        and not isinstance(distiller.teacher, nn.ModuleList)
        and distiller.cache_teacher
        and set(distiller.teacher_layers) <= set(VIEW_LAYERS)
    )


def _check_teacher_views(cfg: Config, teacher_views: str | None) -> None:
    if teacher_views is None:
        return
    if teacher_views not in VIEW_DTYPES:
        raise ValueError(
            f"teacher_views must be None or one of {', '.join(VIEW_DTYPES)}, "
            f"got {teacher_views!r}"
        )
    if not cfg.augment:
        raise ValueError(
            "teacher_views needs cfg.augment: without augmentation the teacher's "
            "logits on the training set are already computed once"
        )
    if cfg.teacher is None or not get_method(cfg.method).needs_teacher:
        raise ValueError(
            f"teacher_views needs a distilled run; {cfg.name} has no teacher"
        )


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
    teacher_views: str | None = None,
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

    ``teacher_views`` (``"float16"`` or ``"float32"``; None, the default, runs
    the teacher on every batch) reads the teacher's outputs from those
    on every augmentation view of every training image, computed once and
    kept with the teacher's run (:func:`kdutils.teachers.teacher_view_outputs`)
    for every student of that teacher. It needs ``cfg.augment`` and a method
    that reads only its one teacher's logits and pooled embedding
    (:func:`stored_views_apply`); it is part of the run's key.
    """
    check_amp(amp)
    check_compile(compile)
    _check_teacher_views(cfg, teacher_views)
    device = resolve_device(device)
    check_amp(amp, device)
    key = run_key(cfg, channels_last, amp, teacher_views)
    folder = run_dir(cfg, channels_last, amp, teacher_views)
    if use_cache:
        res, cfg = _from_cache(cfg, folder)
        if res is not None:
            return res
    check_cache_writable()
    with run_lock(folder, cfg.name):
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
                teacher_views,
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
    teacher_views: str | None = None,
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
    val = load_val(cfg)
    seed_everything(cfg.seed)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    student = build_model(cfg.student, cfg.dataset).to(device)
    distiller = build(cfg.method, student, teacher, **cfg.method_args)
    distiller.setup(train)
    distiller = distiller.to(device, memory_format=fmt)
    t_out = None
    if teacher_views is not None:
        if not stored_views_apply(distiller):
            raise ValueError(
                f"{cfg.method} reads more of its teacher than its logits and "
                "pooled embedding (or has several teachers, or changes them "
                "during training); stored views hold only those: run it with "
                "teacher_views=None"
            )
        t_out = teacher_view_outputs(
            t_res,
            teacher,
            train,
            teacher_views,
            tuple(distiller.teacher_layers),
            progress,
        )
    elif t_res is not None and distiller.cache_teacher and not cfg.augment:
        t_out = {"logits": teacher_train_logits(t_res, teacher, train)}
        if distiller.teacher_layers:
            feats = teacher_train_features(distiller, train, channels_last)
            t_out = None if feats is None else {**t_out, **feats}
    elif (
        isinstance(teacher, nn.ModuleList)
        and distiller.precompute_teachers
        and distiller.cache_teacher
        and not cfg.augment
    ):
        t_out = teacher_train_features(
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
        views=teacher_views is not None,
    )
    compiled = "no"
    if teacher is not None and t_out is None:
        compiled = compile_teacher(distiller, loader, compile, cfg.epochs * len(loader))
    print(
        f"[train] {cfg.name}: {cfg.epochs} epochs on {len(train)} images ({device.type})"
    )
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    history = fit(
        distiller, loader, test, cfg, ckpt, key, t_out, progress, amp, folder, val
    )
    wall = time.perf_counter() - t0
    buf = io.BytesIO()
    torch.save(student.state_dict(), buf)
    atomic_write_bytes(folder / "model.pt", buf.getvalue())
    own = {
        k: v
        for k, v in trainable_state(distiller).items()
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
            **({"val_acc": history[-1]["val_acc"]} if "val_acc" in history[-1] else {}),
            "params": num_params(student),
            "train_seconds": sum(h["seconds"] for h in history),
        },
        provenance={
            **provenance(device, cfg.method),
            "wall_seconds": wall,
            "channels_last": channels_last,
            "amp": amp,
            "compile_teacher": compiled,
            "teacher_views": teacher_views,
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
