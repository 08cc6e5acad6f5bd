"""Dense runs: segmentation and detection students, alone or distilled.

``run_dense(cfg) -> DenseResult`` is to the scene tasks (survey section 5)
what ``kdutils.train.run`` is to classification: it looks the run up in the
cache, takes the run's lock, trains (or loads) the teacher, trains the
student and writes a record. A run lives in
``<cache>/dense/<name>-<key>``; a folder with ``result.json`` is finished,
one with only ``checkpoint.pt`` is resumed after its last complete epoch
and ends with the same weights, bit for bit, as a run never interrupted.

- The data are :func:`kdutils.scenes.make_scenes` sets (training scenes from
  the training images, test scenes from the test images), normalised by
  :func:`kdutils.scenes.to_input`; no augmentation.
- The network, its targets, its task loss and its evaluation come from the
  task module (:mod:`kdutils.segmentation` or :mod:`kdutils.detection`).
- A distillation method (:data:`DENSE_METHODS`) adds terms computed from the
  student's and the frozen teacher's outputs on the same batch. A method
  that compares features owns the student-side 1x1 adaptation convolution:
  it is trained with the student, saved beside it (``adapters.pt``) and not
  part of the student's evaluation.
- Training is the classification runs' recipe: SGD (momentum 0.9, weight
  decay 5e-4, no Nesterov) over the student and the adapters, a cosine
  schedule stepped once per epoch; the batch order of epoch ``e`` depends
  only on ``(seed, e)``, the initial weights only on ``seed``.

A run's key hashes its :class:`DenseConfig` with :data:`kdutils.runs.CORE_VERSION`
and :data:`DENSE_VERSION`; bump the latter when this module, the task
modules, their losses or their metrics change what a run computes.
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
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from . import detection, segmentation
from .checks import is_finite_real, is_int, merge_args
from .cost import count_macs
from .errors import CorruptArtifact
from .loop import (
    CheckpointError,
    NonFiniteLoss,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
    seed_everything,
)
from .losses.dense import channel_wise_loss, pair_wise_loss, pixel_wise_loss
from .losses.detection import (
    chen_hint_loss,
    chen_soft_loss,
    imitation_loss,
    imitation_mask,
    mimic_loss,
    teacher_bounded_loss,
)
from .models import check_model_name, num_params
from .provenance import machine_provenance
from .results import (
    atomic_write_bytes,
    remove_checked,
    set_aside,
    sha256_file,
    verify_file,
)
from .runs import CORE_VERSION, cache_dir, check_cache_writable, run_lock
from .scenes import make_scenes, to_input

__all__ = [
    "DENSE_METHODS",
    "DENSE_PROFILES",
    "DENSE_VERSION",
    "DenseConfig",
    "DenseMethod",
    "DenseResult",
    "TASKS",
    "dense_config",
    "dense_dir",
    "dense_identity",
    "dense_key",
    "dense_teacher_config",
    "run_dense",
]

# Bump when what a dense run computes changes: this trainer, a task module
# (network, targets, task loss, evaluation), a dense loss or the metrics.
DENSE_VERSION = 1

TASKS = {"segmentation": segmentation, "detection": detection}
_SHORT = {"segmentation": "seg", "detection": "det"}
# What the printed line and the result's headline report, per task.
_HEADLINE = {"segmentation": ("miou", "mIoU"), "detection": ("map", "mAP")}


# --- methods -------------------------------------------------------------------


@dataclass(frozen=True)
class DenseMethod:
    """A dense distillation method: its task, its hyper-parameters' defaults,
    and ``build(s_channels, t_channels, **args) -> nn.Module``, whose forward
    ``(student_out, teacher_out, targets) -> {term: weighted loss}`` holds
    the student-side adapters it needs as submodules. ``source``: whose
    definition and settings it follows."""

    task: str
    defaults: Mapping[str, Any]
    build: Callable[..., nn.Module]
    source: str


def _adapter(s_channels: int, t_channels: int) -> nn.Conv2d:
    """The student-side 1x1 convolution that maps its features to the teacher's
    channels (FitNets' regressor, as the detection and CWD papers use)."""
    return nn.Conv2d(s_channels, t_channels, kernel_size=1)


class _PixelWise(nn.Module):
    """``weight * pixel_wise_loss(student scores, teacher scores) * their_batch / B``.

    :func:`~kdutils.losses.dense.pixel_wise_loss` sums over the images of the
    batch, as the authors' code does; their ``lambda_pi = 10`` was set at
    their batch of 8 images, where the term is 80 times the per-image mean.
    The factor ``their_batch / B`` keeps that balance with the per-pixel mean
    cross-entropy of the task at this run's batch size ``B`` (at ``B = 32``
    the unscaled term is 320 times the per-image mean, and training diverges).
    """

    def __init__(
        self, s_channels: int, t_channels: int, weight: float, their_batch: int
    ) -> None:
        super().__init__()
        self.weight, self.their_batch = weight, their_batch

    def forward(self, s: dict, t: dict, tgt: dict) -> dict[str, Tensor]:
        scale = self.weight * self.their_batch / s["scores"].shape[0]
        return {"pixel": scale * pixel_wise_loss(s["scores"], t["scores"])}


class _PairWise(nn.Module):
    """``weight * pair_wise_loss(student feat, teacher feat, scale)``. No
    adapter: each side's similarities are within its own features, so the
    channel counts may differ (as in the authors' code)."""

    def __init__(
        self, s_channels: int, t_channels: int, weight: float, scale: float
    ) -> None:
        super().__init__()
        self.weight, self.scale = weight, scale

    def forward(self, s: dict, t: dict, tgt: dict) -> dict[str, Tensor]:
        loss = pair_wise_loss(s["feat"], t["feat"], self.scale)
        return {"pair": self.weight * loss}


class _ChannelWise(nn.Module):
    """``weight * channel_wise_loss(student maps, teacher maps, tau)`` on the
    score maps (``maps="scores"``) or on the backbone features through a
    1x1 adapter (``maps="feat"``)."""

    def __init__(
        self, s_channels: int, t_channels: int, weight: float, tau: float, maps: str
    ) -> None:
        super().__init__()
        if maps not in ("scores", "feat"):
            raise ValueError(f"channel: maps must be 'scores' or 'feat', got {maps!r}")
        self.weight, self.tau, self.maps = weight, tau, maps
        self.adapter = _adapter(s_channels, t_channels) if maps == "feat" else None

    def forward(self, s: dict, t: dict, tgt: dict) -> dict[str, Tensor]:
        ms = s[self.maps] if self.adapter is None else self.adapter(s["feat"])
        loss = channel_wise_loss(ms, t[self.maps], self.tau)
        return {"channel": self.weight * loss}


class _Chen(nn.Module):
    """Chen et al. 2017 on the CenterNet detector: ``hint * L_hint(adapter(feat))
    + soft * L_soft(heat) + bounded * (0.1 L_b(size) + 1 L_b(offset))``.

    The hint goes through a 1x1 adapter (the paper's adaptation layer),
    ``hint = gamma = 0.5``. The paper mixes hard and soft classification as
    ``mu L_hard + (1 - mu) L_soft`` and gives no ``mu``; the task loss keeps
    its focal term at weight 1, so ``soft = (1 - mu) / mu = 1`` is
    ``mu = 0.5``. The paper's regression is ``L_sL1 + nu L_b`` with
    ``nu = 0.5``; each teacher-bounded term here inherits its map's CenterNet
    weight (0.1 for the size, 1 for the offset, as in the task loss).
    """

    def __init__(
        self,
        s_channels: int,
        t_channels: int,
        hint: float,
        soft: float,
        bounded: float,
        T: float,
        bg_weight: float,
        margin: float,
    ) -> None:
        super().__init__()
        self.adapter = _adapter(s_channels, t_channels)
        self.w = {"hint": hint, "soft": soft, "bounded": bounded}
        self.T, self.bg_weight, self.margin = T, bg_weight, margin

    def forward(self, s: dict, t: dict, tgt: dict) -> dict[str, Tensor]:
        ind, mask = tgt["ind"], tgt["reg_mask"]
        bounded = detection.SIZE_WEIGHT * teacher_bounded_loss(
            s["size"], t["size"], tgt["wh"], ind, mask, self.margin
        ) + detection.OFFSET_WEIGHT * teacher_bounded_loss(
            s["offset"], t["offset"], tgt["reg"], ind, mask, self.margin
        )
        return {
            "hint": self.w["hint"] * chen_hint_loss(self.adapter(s["feat"]), t["feat"]),
            "soft": self.w["soft"]
            * chen_soft_loss(s["heat"], t["heat"], self.T, self.bg_weight),
            "bounded": self.w["bounded"] * bounded,
        }


class _Mimic(nn.Module):
    """Li et al. 2017: ``weight * mimic_loss(adapter(feat_s), feat_t, boxes)``
    over the ground-truth boxes of the batch (the paper's proposals), with a
    1x1 adapter (the paper's transformation). The paper adds the mimic loss
    to the detection loss unweighted: ``weight = 1``."""

    def __init__(
        self, s_channels: int, t_channels: int, weight: float, output_size: int
    ) -> None:
        super().__init__()
        self.adapter = _adapter(s_channels, t_channels)
        self.weight, self.output_size = weight, output_size

    def forward(self, s: dict, t: dict, tgt: dict) -> dict[str, Tensor]:
        loss = mimic_loss(
            self.adapter(s["feat"]),
            t["feat"],
            detection.gt_boxes(tgt),
            stride=detection.STRIDE,
            output_size=self.output_size,
        )
        return {"mimic": self.weight * loss}


class _FineGrained(nn.Module):
    """Wang et al. 2019 (beyond the survey's list):
    ``weight * imitation_loss(adapter(feat_s), feat_t, mask)`` with the
    near-object mask of the batch's ground-truth boxes (anchors of
    :func:`~kdutils.losses.detection.imitation_anchors`, threshold ``psi``).
    The adapter is the authors' ``stu_feature_adap``, a 3x3 convolution and a
    ReLU; ``weight = 0.01`` is theirs. Their code also skips the term for the
    first 400 iterations, which a run of a few hundred steps does not."""

    def __init__(
        self, s_channels: int, t_channels: int, weight: float, psi: float
    ) -> None:
        super().__init__()
        self.adapter = nn.Sequential(
            nn.Conv2d(s_channels, t_channels, 3, padding=1), nn.ReLU()
        )
        self.weight, self.psi = weight, psi

    def forward(self, s: dict, t: dict, tgt: dict) -> dict[str, Tensor]:
        feat_t = t["feat"]
        mask = imitation_mask(
            detection.gt_boxes(tgt),
            tuple(feat_t.shape[2:]),
            detection.STRIDE,
            psi=self.psi,
        ).to(feat_t.device)
        loss = imitation_loss(self.adapter(s["feat"]), feat_t, mask)
        return {"imitation": self.weight * loss}


DENSE_METHODS: dict[str, DenseMethod] = {
    "pixel": DenseMethod(
        "segmentation",
        {"weight": 10.0, "their_batch": 8},
        _PixelWise,
        "Liu et al. 2019 (structured KD), code irfanICMLL/structure_knowledge_"
        "distillation: pixel-wise term on the score maps, lambda_pi = 10 at "
        "their batch of 8",
    ),
    "pairwise": DenseMethod(
        "segmentation",
        {"weight": 0.5, "scale": 0.5},
        _PairWise,
        "Liu et al. 2019 (structured KD), same code: pair-wise term on the "
        "backbone features, lambda_pa = 0.5, pool scale 0.5",
    ),
    "channel": DenseMethod(
        "segmentation",
        {"weight": 3.0, "tau": 4.0, "maps": "scores"},
        _ChannelWise,
        "Shu et al. 2021 (channel-wise KD): on the score maps, tau 4, weight 3",
    ),
    "chen": DenseMethod(
        "detection",
        {
            "hint": 0.5,
            "soft": 1.0,
            "bounded": 0.5,
            "T": 1.0,
            "bg_weight": 1.5,
            "margin": 0.0,
        },
        _Chen,
        "Chen et al. 2017: hint (gamma 0.5), class-weighted soft cross-entropy "
        "(background 1.5, T 1, mu 0.5), teacher-bounded regression (nu 0.5)",
    ),
    "mimic": DenseMethod(
        "detection",
        {"weight": 1.0, "output_size": 7},
        _Mimic,
        "Li et al. 2017: feature mimicking inside the object boxes, weight 1",
    ),
    "finegrained": DenseMethod(
        "detection",
        {"weight": 0.01, "psi": 0.5},
        _FineGrained,
        "Wang et al. 2019 (beyond the survey's list), code twangnh/Distilling-"
        "Object-Detectors: imitation near objects, psi 0.5, weight 0.01",
    ),
}


# --- configuration -------------------------------------------------------------

_SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class DenseConfig:
    """Everything that decides a dense run (and so its cache key).

    ``task``: ``"segmentation"`` or ``"detection"``; ``model``: the student's
    backbone (a :func:`kdutils.models.create_model` name); ``method``:
    ``"none"`` or a :data:`DENSE_METHODS` name of the task, with its
    ``teacher`` backbone (required with a method, refused without one) and
    ``args`` (its hyper-parameters, the method's defaults filled in; a
    mapping or pairs, kept as sorted pairs). The teacher is its own run of
    the same task and data with method ``"none"``, seed ``teacher_seed`` and
    ``teacher_epochs`` epochs (default: ``epochs``), shared by every student.
    The schedule is cosine (per epoch). ``eval_every`` decides only what is
    measured, so it is not in the key.
    """

    task: str
    model: str = "resnet8"
    method: str = "none"
    teacher: str | None = None
    args: Any = ()
    epochs: int = 2
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    train_scenes: int = 512
    test_scenes: int = 256
    scene_seed: int = 0
    seed: int = 0
    teacher_seed: int = 0
    teacher_epochs: int | None = None  # None: the student's ``epochs``
    size: int = 64
    # Test-set evaluation after every ``eval_every`` epochs (and after the
    # last); None: after the last only. Not in the key (it measures, it does
    # not change the weights).
    eval_every: int | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(
                f"task must be 'segmentation' or 'detection', got {self.task!r}"
            )
        names = [m for m, d in DENSE_METHODS.items() if d.task == self.task]
        if self.method != "none" and self.method not in DENSE_METHODS:
            raise ValueError(
                f"method {self.method!r} is unknown; {self.task} has 'none', "
                f"{', '.join(repr(n) for n in names)}"
            )
        if self.method != "none" and DENSE_METHODS[self.method].task != self.task:
            raise ValueError(
                f"method {self.method!r} is a {DENSE_METHODS[self.method].task} "
                f"method, not a {self.task} one; {self.task} has 'none', "
                f"{', '.join(repr(n) for n in names)}"
            )
        for name in ("model", "teacher"):
            value = getattr(self, name)
            if value is None and name == "teacher":
                continue
            try:
                check_model_name(value)
            except (ValueError, TypeError):
                raise ValueError(
                    f"{name} must be a backbone name such as 'resnet8' or "
                    f"'resnet8_w16-16-32-64', got {value!r}"
                ) from None
        if self.method != "none" and self.teacher is None:
            raise ValueError(f"teacher is required by method {self.method!r}")
        if self.method == "none" and self.teacher_epochs is not None:
            raise ValueError(
                "teacher_epochs is given but method is 'none' (no teacher)"
            )
        if self.method == "none" and self.teacher is not None:
            raise ValueError(
                f"teacher {self.teacher!r} is given but method is 'none' (no "
                "distillation); leave teacher out or name a method"
            )
        for name, lo in (
            ("epochs", 1),
            ("batch_size", 1),
            ("train_scenes", 1),
            ("test_scenes", 1),
            ("scene_seed", 0),
            ("seed", 0),
            ("teacher_seed", 0),
            ("teacher_epochs", 1),
        ):
            v = getattr(self, name)
            if v is None and name == "teacher_epochs":
                continue
            if not is_int(v) or not lo <= v <= _SEED_MAX:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.eval_every is not None and (
            not is_int(self.eval_every) or self.eval_every < 1
        ):
            raise ValueError(
                f"eval_every must be None or an integer >= 1, got {self.eval_every!r}"
            )
        if not is_int(self.size) or self.size < 36 or self.size % 4:
            raise ValueError(
                "size must be a multiple of 4 of at least 36 (the largest item "
                f"is 35 px; the maps have stride 4), got {self.size!r}"
            )
        if not is_finite_real(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not is_finite_real(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not is_finite_real(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(
                f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}"
            )
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "momentum", float(self.momentum))
        object.__setattr__(self, "weight_decay", float(self.weight_decay))
        object.__setattr__(self, "args", _fill_args(self.method, self.args))

    @property
    def name(self) -> str:
        """Readable run name, e.g. ``seg-pixel-resnet8-resnet14-s0``."""
        parts = [_SHORT[self.task], self.method, self.model]
        if self.teacher is not None:
            parts.append(self.teacher)
        defaults = DENSE_METHODS[self.method].defaults if self.method != "none" else {}
        parts += [
            f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
            for k, v in self.args
            if defaults.get(k) != v
        ]
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    @property
    def method_args(self) -> dict[str, Any]:
        return dict(self.args)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["args"] = dict(self.args)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DenseConfig:
        return cls(**d)

    def replace(self, **changes: Any) -> DenseConfig:
        """A copy with ``changes``; a new method starts from its own defaults."""
        if changes.get("method", self.method) != self.method:
            changes.setdefault("args", ())
        return dataclasses.replace(self, **changes)


def _fill_args(method: str, args: Any) -> tuple[tuple[str, Any], ...]:
    """``args`` (a mapping or pairs) checked and completed with the method's
    defaults, as sorted pairs: one experiment always has one key."""
    defaults = dict(DENSE_METHODS[method].defaults) if method != "none" else {}
    out = merge_args(method, args, defaults)
    for k, v in out.items():
        d = defaults[k]
        if isinstance(d, float) and is_finite_real(v):
            v = out[k] = float(v)  # weight=3 and weight=3.0 are one experiment
        if type(v) is not type(d) or (isinstance(v, float) and not math.isfinite(v)):
            raise ValueError(
                f"args: {method} {k} must be a finite {type(d).__name__} like "
                f"{d!r}, got {v!r}"
            )
    return tuple(sorted(out.items()))


def dense_teacher_config(cfg: DenseConfig) -> DenseConfig:
    """The run that trains ``cfg``'s teacher: the same task, data and recipe,
    the teacher's backbone, method ``"none"``, seed ``cfg.teacher_seed``,
    ``cfg.teacher_epochs`` epochs (or ``cfg.epochs``)."""
    if cfg.teacher is None:
        raise ValueError(f"{cfg.name} has no teacher")
    return cfg.replace(
        model=cfg.teacher,
        method="none",
        teacher=None,
        seed=cfg.teacher_seed,
        epochs=cfg.teacher_epochs or cfg.epochs,
        teacher_epochs=None,
    )


# The sizes of each profile (see dense_config for the measurements behind
# them). ``teacher`` is the backbone a distilled student learns from, trained
# once for ``teacher_epochs``.
DENSE_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        model="resnet8",
        teacher="resnet14",
        epochs=2,
        batch_size=32,
        train_scenes=128,
        test_scenes=96,
    ),
    "quick": dict(
        model="resnet8",
        teacher="resnet14",
        teacher_epochs=6,
        epochs=3,
        batch_size=32,
        train_scenes=768,
        test_scenes=512,
    ),
    "paper": dict(
        model="resnet8",
        teacher="resnet20",
        teacher_epochs=60,
        epochs=30,
        batch_size=32,
        train_scenes=10000,
        test_scenes=2000,
    ),
}


def dense_config(
    profile: str, task: str, method: str = "none", seed: int = 0, **overrides: Any
) -> DenseConfig:
    """The :class:`DenseConfig` of ``profile`` for ``task`` and ``method``.

    Measured on this book's 2-core CPU with one torch thread (the machine
    shared with other work; one thread was 3 to 6 times faster than two
    there), a training step of a ResNet8 student on 32 scenes takes about
    0.3 s, of a ResNet14 teacher 0.55 s, and a distilled step adds little
    (the teacher's outputs are computed once per run):

    - ``smoke``: 128 scenes, 2 epochs (8 steps), 96 test scenes: it only
      proves the code (chapter 16 trains two teachers and eight students
      with it in ``make test``); at 256 scenes a student run took 8 to 10 s
      with its evaluation, the ResNet14 teacher 14 s;
    - ``quick``: 768 scenes, 3 epochs (72 steps) for a student, about 21 s
      (segmentation) to 31 s (detection) a run; the teacher 6 epochs, about
      80 s, once. A chapter of a teacher and four students (alone and three
      methods), two seeds each, took 5.8 minutes for segmentation and 7.1
      for detection, 12.8 for both (measured with other work running);
    - ``paper``: not run here. 10000 training scenes (about 25000 item
      placements, fewer than the 60000 training images, so items rarely
      repeat), 2000 test scenes (a steadier mAP), 30 epochs for a student
      (about 9400 steps, an hour on this CPU, minutes on a GPU) and a
      deeper teacher (ResNet20) trained twice as long, as the detection and
      segmentation works the survey cites train their students far longer
      than ``quick``.

    With ``method="none"`` the run is the student alone (no teacher); the
    teacher's own run is ``dense_teacher_config(cfg)`` of a distilled
    ``cfg``. ``overrides`` replace any field.
    """
    if profile not in DENSE_PROFILES:
        raise ValueError(
            f"profile must be one of {', '.join(DENSE_PROFILES)}, got {profile!r}"
        )
    fields = dict(DENSE_PROFILES[profile])
    if method == "none":
        fields.pop("teacher", None)
        fields.pop("teacher_epochs", None)
    fields.update(task=task, method=method, seed=seed)
    fields.update(overrides)
    return DenseConfig(**fields)


# --- identity and folders ------------------------------------------------------


def dense_identity(cfg: DenseConfig) -> dict[str, Any]:
    """Everything that decides what a dense run computes, as a JSON-able dict."""
    config = {k: v for k, v in cfg.to_dict().items() if k != "eval_every"}
    return {"config": config, "core": CORE_VERSION, "dense": DENSE_VERSION}


def dense_key(cfg: DenseConfig) -> str:
    """The run's key: a hash of :func:`dense_identity`."""
    text = json.dumps(dense_identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def dense_dir(cfg: DenseConfig) -> Path:
    return cache_dir() / "dense" / f"{cfg.name}-{dense_key(cfg)}"


# --- results -------------------------------------------------------------------


@dataclass
class DenseResult:
    """A finished dense run: its config, the task's final metrics on the test
    scenes, the per-epoch history, the student's parameters and FLOPs per
    image, the training seconds, and where it came from."""

    cfg: DenseConfig
    key: str
    metrics: dict[str, float]
    history: list[dict[str, Any]]
    params: int
    flops: int
    seconds: float
    provenance: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    path: str | None = None
    from_cache: bool = False

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def headline(self) -> float:
        """The task's main metric: mIoU (segmentation) or mAP (detection)."""
        return self.metrics[_HEADLINE[self.cfg.task][0]]

    def to_json(self) -> str:
        d = {
            "name": self.name,
            "key": self.key,
            "config": self.cfg.to_dict(),
            "history": self.history,
            "metrics": self.metrics,
            "params": self.params,
            "flops": self.flops,
            "seconds": self.seconds,
            "provenance": self.provenance,
            "teacher": self.teacher,
            "files": self.files,
        }
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: str | Path) -> DenseResult:
        """Read ``result.json``; :class:`CorruptArtifact` if it is not one."""
        path = Path(path)
        try:
            d = json.loads(path.read_bytes().decode())
            res = cls(
                cfg=DenseConfig.from_dict(d["config"]),
                key=d["key"],
                metrics=dict(d["metrics"]),
                history=list(d["history"]),
                params=int(d["params"]),
                flops=int(d["flops"]),
                seconds=float(d["seconds"]),
                provenance=dict(d["provenance"]),
                teacher=d["teacher"],
                files=dict(d["files"]),
                path=str(path.parent),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            why = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise CorruptArtifact(
                f"{path} is not a valid dense run record ({type(e).__name__}: {why})"
            ) from None
        return res

    def verify_files(self, names: Iterable[str] | None = None) -> None:
        """Check the run's files against their recorded checksums."""
        if self.path is None:
            raise ValueError(f"{self.name} has no run folder")
        for n in sorted(self.files) if names is None else names:
            verify_file(Path(self.path) / n, self.files.get(n))

    def load_model(self, device: str | torch.device = "cpu") -> nn.Module:
        """The trained network (the student, or a teacher run's teacher), in
        eval mode, its weights checked against the record first."""
        self.verify_files(["model.pt"])
        model = TASKS[self.cfg.task].build(self.cfg.model)
        state = torch.load(
            Path(self.path) / "model.pt", map_location="cpu", weights_only=True
        )
        model.load_state_dict(state)
        return model.to(device).eval()

    def load_adapters(self, device: str | torch.device = "cpu") -> nn.Module | None:
        """The method's trained module (its adapters), or None if it has none."""
        if "adapters.pt" not in self.files or self.cfg.method == "none":
            return None
        self.verify_files(["adapters.pt"])
        t = dense_teacher_config(self.cfg)
        module = _build_method(
            self.cfg,
            _feat_channels(self.cfg.model, self.cfg),
            _feat_channels(t.model, t),
        )
        state = torch.load(
            Path(self.path) / "adapters.pt", map_location="cpu", weights_only=True
        )
        module.load_state_dict(state)
        return module.to(device).eval()

    def __repr__(self) -> str:
        metric, label = _HEADLINE[self.cfg.task]
        return f"DenseResult({self.name}: {label} {100 * self.metrics[metric]:.2f})"


# --- training ------------------------------------------------------------------


def _feat_channels(backbone: str, cfg: DenseConfig) -> int:
    """Channels of the ``feat`` map of ``backbone``'s network for ``cfg.task``."""
    with torch.device("meta"):
        model = TASKS[cfg.task].build(backbone)
        out = model(torch.zeros(1, 1, cfg.size, cfg.size))
    return int(out["feat"].shape[1])


def _build_method(cfg: DenseConfig, s_channels: int, t_channels: int) -> nn.Module:
    return DENSE_METHODS[cfg.method].build(s_channels, t_channels, **dict(cfg.args))


def _teacher_outputs(
    teacher: nn.Module, scenes, device: torch.device, batch_size: int = 256
) -> dict[str, Tensor]:
    """The frozen teacher's outputs on every scene, computed once, without
    gradient, in eval mode: ``{name: (N, ...)}`` on ``device``. The scenes are
    not augmented, so each batch's teacher outputs are rows of these. The
    upsampled ``"logits"`` (only a prediction, used by no method) are left
    out: the rest is about 80 KB a scene for a 64-channel teacher at 64 px."""
    teacher.eval()
    parts: dict[str, list[Tensor]] = {}
    with torch.no_grad():
        for lo in range(0, len(scenes), batch_size):
            x = to_input(scenes.images[lo : lo + batch_size]).to(device)
            for k, v in teacher(x).items():
                if k != "logits":
                    parts.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in parts.items()}


def _step(
    student: nn.Module,
    distill: nn.Module | None,
    task_loss: Callable,
    x: Tensor,
    tgt: dict[str, Tensor],
    t_out: dict[str, Tensor] | None,
    opt: torch.optim.Optimizer,
) -> dict[str, float]:
    """One optimisation step on a batch (``t_out``: the teacher's outputs on
    it, without gradient); returns the batch's loss parts (floats)."""
    out = student(x)
    total, parts = task_loss(out, tgt)
    parts = {k: float(v) for k, v in parts.items()}
    if distill is not None:
        terms = distill(out, t_out, tgt)
        total = total + sum(terms.values())
        parts.update({f"kd_{k}": v.item() for k, v in terms.items()})
    value = total.item()
    if not math.isfinite(value):
        shown = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
        raise NonFiniteLoss(
            f"the loss became {value} ({shown}); lower the learning rate or the "
            "method's weight"
        )
    opt.zero_grad(set_to_none=True)
    total.backward()
    opt.step()
    parts["loss"] = value
    return parts


def run_dense(
    cfg: DenseConfig,
    *,
    resume: bool = True,
    use_cache: bool = True,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> DenseResult:
    """Train ``cfg`` (or load it from the cache) and return its :class:`DenseResult`.

    Prints one line: ``[cache]`` (loaded) or ``[done]`` (trained), with the
    task's headline metric. A distilled run first runs its teacher
    (:func:`dense_teacher_config`), which is cached like any run and loaded
    frozen, in eval mode. ``resume=False`` discards a partial run's
    checkpoint and starts again; ``use_cache=False`` trains even if the run
    is finished (and replaces its record). ``progress``: a tqdm bar on
    stderr. ``device``: None picks CUDA if there is one, else the CPU.
    """
    if not isinstance(cfg, DenseConfig):
        raise ValueError(f"cfg must be a DenseConfig, got {type(cfg).__name__}")
    device = resolve_device(device)
    key, folder = dense_key(cfg), dense_dir(cfg)
    if use_cache and (res := _from_cache(cfg, folder)) is not None:
        return res
    check_cache_writable()
    with run_lock(folder, cfg.name):
        # Another process may have finished the run while this one waited.
        if use_cache and (res := _from_cache(cfg, folder)) is not None:
            return res
        created = not folder.exists()
        try:
            return _train(cfg, key, folder, device, resume, progress)
        except BaseException:
            # A run that failed before its first checkpoint leaves no folder.
            if created and folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
            raise


def _headline_text(cfg: DenseConfig, metrics: Mapping[str, float]) -> str:
    metric, label = _HEADLINE[cfg.task]
    return f"{label} {100 * metrics[metric]:.2f}"


def _from_cache(cfg: DenseConfig, folder: Path) -> DenseResult | None:
    """The finished run in ``folder``, checked, or None. A record or file that
    is broken sets the whole folder aside (kept, not deleted), with a line."""
    path = folder / "result.json"
    if not path.exists():
        return None
    try:
        res = DenseResult.load(path)
        res.verify_files()
    except CorruptArtifact as e:
        moved = set_aside(folder, cache_dir() / "set-aside")
        print(f"[corrupt] {e}; moved the run's folder to {moved}; training it again")
        return None
    have = {h["epoch"] for h in res.history if h.get("test") is not None}
    if not _evaluated_epochs(cfg) <= have:
        print(
            f"[cache] {cfg.name}: the cached run did not evaluate every epoch "
            "asked for (eval_every); training it again to measure them"
        )
        return None
    res.from_cache = True
    print(
        f"[cache] {cfg.name}: {_headline_text(cfg, res.metrics)} (loaded, not trained)"
    )
    return res


def _evaluated_epochs(cfg: DenseConfig) -> set[int]:
    every = cfg.eval_every or cfg.epochs
    return {e for e in range(1, cfg.epochs + 1) if e % every == 0} | {cfg.epochs}


def _train(
    cfg: DenseConfig,
    key: str,
    folder: Path,
    device: torch.device,
    resume: bool,
    progress: bool,
) -> DenseResult:
    task = TASKS[cfg.task]
    ckpt = folder / "checkpoint.pt"
    teacher, t_res = None, None
    if cfg.method != "none":
        t_res = run_dense(
            dense_teacher_config(cfg), resume=resume, progress=progress, device=device
        )
        teacher = t_res.load_model(device).requires_grad_(False)
    train = make_scenes(cfg.train_scenes, True, cfg.scene_seed, size=cfg.size)
    test = make_scenes(cfg.test_scenes, False, cfg.scene_seed, size=cfg.size)
    n = len(train)
    targets = task.targets(train, torch.arange(n))
    for k, v in targets.items():
        if not isinstance(v, Tensor) or len(v) != n:
            raise RuntimeError(f"{cfg.task} target {k!r} is not one row per scene")

    if teacher is not None:
        channels = _feat_channels(cfg.model, cfg), _feat_channels(cfg.teacher, cfg)
    seed_everything(cfg.seed)  # the student's and the adapters' initial weights
    student = task.build(cfg.model).to(device)
    distill = None
    if teacher is not None:
        distill = _build_method(cfg, *channels).to(device)
    params = list(student.parameters())
    if distill is not None:
        params += list(distill.parameters())
    opt = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)

    history: list[dict[str, Any]] = []
    start = 0
    if ckpt.exists() and not resume:
        remove_checked(ckpt)
        print(f"[restart] {cfg.name}: the partial run was discarded")
    elif ckpt.exists():
        try:
            state = load_checkpoint(ckpt, key)
            student.load_state_dict(state["student"])
            if distill is not None:
                distill.load_state_dict(state["adapters"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            history, start = state["history"], state["epoch"]
        except (CheckpointError, KeyError, RuntimeError) as e:
            moved = set_aside(ckpt, cache_dir() / "set-aside")
            print(f"[corrupt] {e}; moved to {moved}; {cfg.name} starts from epoch 0")
            return _train(cfg, key, folder, device, resume, progress)
        print(f"[resume] {cfg.name}: continuing after epoch {start}/{cfg.epochs}")

    teacher_out = None
    if teacher is not None:
        teacher_out = _teacher_outputs(teacher, train, device)
    folder.mkdir(parents=True, exist_ok=True)
    steps = -(-n // cfg.batch_size)
    evaluated = _evaluated_epochs(cfg)
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
        student.train()
        if distill is not None:
            distill.train()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g)
        sums: dict[str, float] = {}
        for i in range(steps):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            x = to_input(train.images[idx]).to(device)
            tgt = {k: v[idx].to(device) for k, v in targets.items()}
            t_out = None
            if teacher_out is not None:
                rows = idx.to(device)
                t_out = {k: v[rows] for k, v in teacher_out.items()}
            parts = _step(student, distill, task.task_loss, x, tgt, t_out, opt)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            bar.update(1)
        lr = opt.param_groups[0]["lr"]
        sched.step()
        metrics = None
        if epoch + 1 in evaluated:
            metrics = {k: float(v) for k, v in task.evaluate(student, test).items()}
            bar.set_postfix_str(_headline_text(cfg, metrics))
        history.append(
            {
                "epoch": epoch + 1,
                "lr": lr,
                "train": {k: v / n for k, v in sums.items()},
                "test": metrics,
                "seconds": time.perf_counter() - t0,
            }
        )
        save_checkpoint(
            ckpt,
            {
                "key": key,
                "epoch": epoch + 1,
                "student": student.state_dict(),
                "adapters": distill.state_dict() if distill is not None else {},
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "history": history,
            },
        )
    bar.close()
    wall = time.perf_counter() - t_wall

    files = {"model.pt": student.state_dict()}
    if distill is not None and distill.state_dict():
        files["adapters.pt"] = distill.state_dict()
    for name, state in files.items():
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(folder / name, buf.getvalue())
    res = DenseResult(
        cfg=cfg,
        key=key,
        metrics=history[-1]["test"],
        history=history,
        params=num_params(student),
        flops=2 * count_macs(student, (1, cfg.size, cfg.size)),
        seconds=sum(h["seconds"] for h in history),
        provenance={
            **machine_provenance(device),
            "code_hash": _code_hash(cfg.task),
            "versions": {"core": CORE_VERSION, "dense": DENSE_VERSION},
            "wall_seconds": wall,
        },
        teacher=(
            None
            if t_res is None
            else {"name": t_res.name, "key": t_res.key, "metrics": t_res.metrics}
        ),
        files={name: sha256_file(folder / name) for name in files},
        path=str(folder),
    )
    atomic_write_bytes(folder / "result.json", res.to_json().encode())
    remove_checked(ckpt)
    print(f"[done] {cfg.name}: {_headline_text(cfg, res.metrics)} in {wall:.1f} s")
    return res


def _code_hash(task: str) -> str:
    """Hash of the sources a dense run of ``task`` draws on (provenance only)."""
    mods = [sys.modules[__name__], TASKS[task], sys.modules[to_input.__module__]]
    mods += [sys.modules[pixel_wise_loss.__module__]]
    h = hashlib.sha256()
    for mod in sorted({m.__file__ for m in mods if getattr(m, "__file__", None)}):
        h.update(Path(mod).name.encode())
        h.update(Path(mod).read_bytes())
    return h.hexdigest()[:16]
