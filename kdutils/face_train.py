"""Verification runs of chapter 17: embedding networks, alone or distilled (survey §5.3).

``run_face(cfg) -> AppResult`` trains one embedding network on the training
classes of :mod:`kdutils.verification` (or loads it from the cache) through
:func:`kdutils.appruns.run_app`, kind ``"face"``, and measures verification
on the held-out classes.

- **Batches.** Every step draws ``batch_pairs`` positive pairs for the *easy*
  branch and as many for the *hard* branch (a pair: a training image and
  another image of its class; each branch holds ``2 * batch_pairs`` images).
  The hard branch's images are hard copies (:func:`kdutils.verification.harden`:
  the lower half masked, or a low-resolution copy), the easy branch's are
  clean. Every method sees the same batches.
- **Training loss.** ArcFace (:func:`kdutils.losses.arcface_loss`) over the
  six training classes, one shared class-centre matrix, summed over the two
  branches (a mean over each), as TFace's DDL task sums its branches' losses.
- **Methods** (:data:`FACE_METHODS`) add terms: ``"embed"`` the cosine
  embedding distillation from a frozen, bigger teacher network (on both
  branches); ``"ddl"`` the distribution distillation of Huang et al. 2020,
  where the "teacher" is the easy branch of the *same* network, no second
  network involved; ``"ddl+embed"`` both; ``"inherit"`` (Shi et al. 2020's
  ProxylessKD) trains against the teacher's ArcFace class centres, copied
  and frozen.
- **Recipe.** SGD (momentum 0.9, weight decay 5e-4) over the network and the
  ArcFace centres, a cosine learning-rate schedule stepped every step; the
  pairs of epoch ``e`` depend only on ``(seed, e)``, the initial weights
  only on ``seed``.
- **Evaluation.** The fixed pairs of held-out test images
  (:func:`kdutils.verification.make_pairs`, ``n_pairs``, ``pair_seed``),
  scored clean (``clean_*``) and with both images hard (``hard_*``):
  10-fold accuracy, TAR at FAR 1e-2 and, with at least 1000 different
  pairs, at FAR 1e-3.

A run's key hashes its :class:`FaceConfig`, :data:`kdutils.runs.CORE_VERSION`
and :data:`FACE_VERSION`; bump the latter when this module, the verification
module or the face losses change what a run computes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import verification as vf
from .appruns import AppResult, check_finite, run_app
from .checks import is_finite_real, is_int, merge_args
from .cost import count_macs
from .losses.face import (
    arcface_loss,
    ddl_loss,
    ddl_neg_similarities,
    ddl_pos_similarities,
    embedding_cosine_loss,
)
from .models import num_params

__all__ = [
    "FACE_METHODS",
    "FACE_PROFILES",
    "FACE_VERSION",
    "FaceConfig",
    "FaceMethod",
    "face_config",
    "face_teacher_config",
    "load_embedder",
    "run_face",
]

# Bump when what a face run computes changes: this trainer, the verification
# data, networks or metrics, or a face loss.
FACE_VERSION = 1
KIND = "face"


@dataclass(frozen=True)
class FaceMethod:
    """A method of chapter 17: its hyper-parameters' defaults, whether it needs
    a teacher network, and whose definition and settings it follows."""

    defaults: Mapping[str, Any]
    needs_teacher: bool
    source: str
    # The student's ArcFace class centres are the teacher's, copied and frozen.
    inherit_head: bool = False


_DDL = {"pos_kl_weight": 0.1, "neg_kl_weight": 0.02, "order_weight": 0.5}
FACE_METHODS: dict[str, FaceMethod] = {
    "embed": FaceMethod(
        {"embed_weight": 1.0},
        True,
        "embedding distillation, 1 - mean cos(e_S, e_T), as Tencent/TFace "
        "tasks/ekd/distillation/cosine_distance.py (EKD's baseline), weight 1 "
        "as EKD's train.py adds its distillation term to the softmax loss",
    ),
    "ddl": FaceMethod(
        dict(_DDL),
        False,
        "Huang et al. 2020, Tencent/TFace recognition/torchkit/loss/ddl.py: "
        "pos KL 0.1, neg KL 0.02, order 0.5, easy branch as the anchor",
    ),
    "ddl+embed": FaceMethod(
        {**_DDL, "embed_weight": 1.0},
        True,
        "both of the above, summed",
    ),
    "inherit": FaceMethod(
        {},
        True,
        "Shi et al. 2020 (ProxylessKD, arXiv 2011.00265), as we read the paper "
        "(no public code found): the student trains with ArcFace against the "
        "teacher's class centres, inherited and kept fixed, so its embeddings "
        "land in the teacher's embedding space",
        inherit_head=True,
    ),
}

_SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class FaceConfig:
    """Everything that decides a face run (and so its cache key).

    ``model``: the embedding network (:func:`kdutils.verification.create_embedder`
    name); ``method``: ``"none"`` or a :data:`FACE_METHODS` name, with its
    ``args`` (the method's defaults filled in; a mapping or pairs, kept as
    sorted pairs) and, for a method that needs one, its ``teacher`` network,
    trained as its own run (method ``"none"``, seed ``teacher_seed``,
    ``teacher_epochs`` epochs or ``epochs``). ``scale``/``margin``: ArcFace's.
    ``eval_every`` decides only what is measured, so it is not in the key.
    """

    model: str = "cnn_w8-16-32"
    method: str = "none"
    teacher: str | None = None
    args: Any = ()
    epochs: int = 2
    batch_pairs: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    emb_dim: int = 64
    scale: float = 16.0
    margin: float = 0.3
    hard: str = "mask"
    hard_size: int = 14
    train_images: int | None = 12000
    data_seed: int = 0
    heldout_images: int | None = None
    n_pairs: int = 6000
    pair_seed: int = 0
    seed: int = 0
    teacher_seed: int = 0
    teacher_epochs: int | None = None
    eval_every: int | None = None

    def __post_init__(self) -> None:
        if self.method != "none" and self.method not in FACE_METHODS:
            raise ValueError(
                f"method must be 'none' or one of {', '.join(map(repr, FACE_METHODS))}, "
                f"got {self.method!r}"
            )
        for name in ("model", "teacher"):
            v = getattr(self, name)
            if v is not None or name == "model":
                vf.check_embedder_name(v)
        needs = self.method != "none" and FACE_METHODS[self.method].needs_teacher
        if needs and self.teacher is None:
            raise ValueError(f"teacher is required by method {self.method!r}")
        if not needs and (self.teacher is not None or self.teacher_epochs is not None):
            raise ValueError(
                f"method {self.method!r} uses no teacher network; leave teacher and "
                "teacher_epochs out"
            )
        for name, lo in (
            ("epochs", 1),
            ("batch_pairs", 2),
            ("emb_dim", 2),
            ("data_seed", 0),
            ("n_pairs", 200),
            ("pair_seed", 0),
            ("seed", 0),
            ("teacher_seed", 0),
            ("teacher_epochs", 1),
            ("train_images", 12),
            ("heldout_images", 8),
        ):
            v = getattr(self, name)
            if v is None and name in (
                "teacher_epochs",
                "train_images",
                "heldout_images",
            ):
                continue
            if not is_int(v) or not lo <= v <= _SEED_MAX:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.n_pairs % 2:
            raise ValueError(f"n_pairs must be even, got {self.n_pairs}")
        if self.hard not in vf.HARD_KINDS:
            raise ValueError(f"hard must be one of {vf.HARD_KINDS}, got {self.hard!r}")
        top = 28 if self.hard == "lowres" else 27
        if not is_int(self.hard_size) or not 1 <= self.hard_size <= top:
            raise ValueError(
                f"hard_size must be an integer in [1, {top}] for hard={self.hard!r} "
                f"(pixels a side for 'lowres', masked rows for 'mask'), got "
                f"{self.hard_size!r}"
            )
        if self.eval_every is not None and (
            not is_int(self.eval_every) or self.eval_every < 1
        ):
            raise ValueError(
                f"eval_every must be None or an integer >= 1, got {self.eval_every!r}"
            )
        for name, ok, what in (
            ("lr", lambda v: v > 0, "> 0"),
            ("momentum", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("weight_decay", lambda v: v >= 0, ">= 0"),
            ("scale", lambda v: v > 0, "> 0"),
            ("margin", lambda v: 0 <= v < math.pi / 2, "in [0, pi/2)"),
        ):
            v = getattr(self, name)
            if not is_finite_real(v) or not ok(v):
                raise ValueError(f"{name} must be a finite number {what}, got {v!r}")
            object.__setattr__(self, name, float(v))
        object.__setattr__(self, "args", _fill_args(self.method, self.args))

    @property
    def name(self) -> str:
        """Readable run name, e.g. ``face-ddl-cnn_w8-16-32-s0``."""
        parts = ["face", self.method.replace("+", "_"), self.model]
        if self.teacher is not None:
            parts.append(self.teacher)
        defaults = FACE_METHODS[self.method].defaults if self.method != "none" else {}
        parts += [f"{k}{v:g}" for k, v in self.args if defaults.get(k) != v]
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    @property
    def method_args(self) -> dict[str, float]:
        return dict(self.args)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["args"] = dict(self.args)
        return d

    def replace(self, **changes: Any) -> FaceConfig:
        """A copy with ``changes``; a new method starts from its own defaults."""
        if changes.get("method", self.method) != self.method:
            changes.setdefault("args", ())
        return dataclasses.replace(self, **changes)


def _fill_args(method: str, args: Any) -> tuple[tuple[str, float], ...]:
    defaults = dict(FACE_METHODS[method].defaults) if method != "none" else {}
    out = merge_args(method, args, defaults)
    for k, v in out.items():
        if not is_finite_real(v) or v < 0:
            raise ValueError(
                f"args: {method} {k} must be a finite number >= 0, got {v!r}"
            )
        out[k] = float(v)
    return tuple(sorted(out.items()))


def face_teacher_config(cfg: FaceConfig) -> FaceConfig:
    """The run that trains ``cfg``'s teacher: the same data and recipe, the
    teacher's network, method ``"none"``, seed ``cfg.teacher_seed``."""
    if cfg.teacher is None:
        raise ValueError(f"{cfg.name} has no teacher network")
    return cfg.replace(
        model=cfg.teacher,
        method="none",
        teacher=None,
        seed=cfg.teacher_seed,
        epochs=cfg.teacher_epochs or cfg.epochs,
        teacher_epochs=None,
    )


# The sizes of each profile (measurements in face_config's docstring).
FACE_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        model="cnn_w8-16-32",
        teacher="cnn_w32-64-128",
        epochs=1,
        teacher_epochs=1,
        train_images=1536,
        heldout_images=1000,
        n_pairs=2000,
    ),
    "quick": dict(
        model="cnn_w8-16-32",
        teacher="cnn_w32-64-128",
        epochs=2,
        teacher_epochs=3,
        train_images=12000,
        n_pairs=6000,
    ),
    "paper": dict(
        model="cnn_w8-16-32",
        teacher="cnn_w32-64-128_c2",
        epochs=20,
        teacher_epochs=20,
        train_images=None,
        n_pairs=6000,
    ),
}


def face_config(
    profile: str, method: str = "none", seed: int = 0, **overrides: Any
) -> FaceConfig:
    """The :class:`FaceConfig` of ``profile`` for ``method``.

    - ``smoke``: 1536 training images, one epoch (24 steps), 2000 pairs over
      1000 held-out images: it only proves the code;
    - ``quick``: 12000 training images (2000 a class), a student of two
      epochs (375 steps of 128 images), the teacher three; 6000 pairs (3000
      different pairs: FAR 1e-3 rests on their 3 highest scores);
    - ``paper``: not run here; all 36000 training images, 20 epochs, a deeper
      teacher. Huang et al.'s released configuration fine-tunes a face
      network on VGGFace2 subsets with DDL for two epochs at lr 0.001 (IR-50,
      CurricularFace head): no profile here is their setting.

    ``overrides`` replace any field. With ``method="none"`` the run is the
    network alone; its teacher (if the method has one) is
    ``face_teacher_config(cfg)``.
    """
    if profile not in FACE_PROFILES:
        raise ValueError(
            f"profile must be one of {', '.join(FACE_PROFILES)}, got {profile!r}"
        )
    fields = dict(FACE_PROFILES[profile])
    if method == "none" or (
        method in FACE_METHODS and not FACE_METHODS[method].needs_teacher
    ):
        fields.pop("teacher", None)
        fields.pop("teacher_epochs", None)
    fields.update(method=method, seed=seed)
    fields.update(overrides)
    return FaceConfig(**fields)


# --- the session -------------------------------------------------------------------


class _FaceSession:
    """One face run's computation (see :class:`kdutils.appruns.Session`)."""

    def __init__(self, cfg: FaceConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        data = vf.train_data(cfg.train_images, seed=cfg.data_seed)
        self.images, self.labels = data.images, data.labels
        self.heldout = vf.heldout_data(cfg.heldout_images, seed=cfg.data_seed)
        self.pairs = vf.make_pairs(self.heldout.labels, cfg.n_pairs, seed=cfg.pair_seed)
        self.model = vf.create_embedder(cfg.model, cfg.emb_dim).to(device)
        self.head = vf.ArcFaceHead(cfg.emb_dim, len(vf.TRAIN_CLASSES)).to(device)
        self.teacher, self.teacher_run = None, None
        if cfg.teacher is not None:
            self.teacher_run = run_face(face_teacher_config(cfg), device=device)
            net = vf.create_embedder(cfg.teacher, cfg.emb_dim)
            self.teacher = self.teacher_run.load_into(net, device=device)
            self.teacher.requires_grad_(False)
        if cfg.method != "none" and FACE_METHODS[cfg.method].inherit_head:
            self.head.load_state_dict(self.teacher_run.state_dict("head.pt"))
            self.head.requires_grad_(False)
        params = [
            p
            for m in (self.model, self.head)
            for p in m.parameters()
            if p.requires_grad
        ]
        self.opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
        self.steps_per_epoch = len(self.labels) // (2 * cfg.batch_pairs)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"train_images={cfg.train_images} gives no full step of "
                f"{2 * cfg.batch_pairs} pairs"
            )
        total = cfg.epochs * self.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, total) / total))
        )
        self.state = {
            "model": self.model,
            "head": self.head,
            "opt": self.opt,
            "sched": self.sched,
        }
        # images grouped by class, for drawing each image's partner
        self._order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels, minlength=len(vf.TRAIN_CLASSES))
        self._counts, self._start = counts, torch.cumsum(counts, 0) - counts
        self._rank = torch.argsort(self._order) - self._start[self.labels]

    def _partners(self, idx: Tensor, gen: torch.Generator) -> Tensor:
        c = self.labels[idx]
        n = self._counts[c]
        step = 1 + (torch.rand(len(idx), generator=gen) * (n - 1)).long()
        return self._order[self._start[c] + (self._rank[idx] + step) % n]

    def step_terms(self, easy: Tensor, hard: Tensor) -> dict[str, Tensor]:
        """The weighted loss terms of one step; ``easy``/``hard``: image indices
        ``(2P,)``, the P first images then their P partners."""
        cfg, P = self.cfg, self.cfg.batch_pairs
        x_e = vf.to_input(self.images[easy].to(self.device))
        x_h = vf.harden(
            vf.to_input(self.images[hard].to(self.device)), cfg.hard, cfg.hard_size
        )
        y_e, y_h = self.labels[easy].to(self.device), self.labels[hard].to(self.device)
        e_e, e_h = self.model(torch.cat([x_e, x_h])).split(2 * P)
        w = self.head.weight
        terms = {
            "arcface": arcface_loss(e_e, w, y_e, cfg.scale, cfg.margin)
            + arcface_loss(e_h, w, y_h, cfg.scale, cfg.margin)
        }
        args = cfg.method_args
        if "pos_kl_weight" in args:
            terms |= ddl_loss(
                ddl_neg_similarities(e_h, y_h),
                ddl_pos_similarities(e_h[:P], e_h[P:]),
                ddl_neg_similarities(e_e, y_e),
                ddl_pos_similarities(e_e[:P], e_e[P:]),
                args["pos_kl_weight"],
                args["neg_kl_weight"],
                args["order_weight"],
            )
        if "embed_weight" in args:
            with torch.no_grad():
                t_e, t_h = self.teacher(torch.cat([x_e, x_h])).split(2 * P)
            terms["embed"] = args["embed_weight"] * embedding_cosine_loss(
                torch.cat([e_e, e_h]), torch.cat([t_e, t_h])
            )
        return terms

    def train_epoch(
        self, epoch: int, gen: torch.Generator, tick: Callable[[], None]
    ) -> dict[str, float]:
        self.model.train()
        P = self.cfg.batch_pairs
        first = torch.randperm(len(self.labels), generator=gen)
        sums: dict[str, float] = {}
        for k in range(self.steps_per_epoch):
            a = first[2 * P * k : 2 * P * (k + 1)]
            b = self._partners(a, gen)
            easy = torch.cat([a[:P], b[:P]])
            hard = torch.cat([a[P:], b[P:]])
            terms = self.step_terms(easy, hard)
            total = sum(terms.values())
            parts = {n: float(v.detach()) for n, v in terms.items()}
            check_finite(total, parts)
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            self.opt.step()
            self.sched.step()
            for n, v in parts.items():
                sums[n] = sums.get(n, 0.0) + v
            tick()
        return {n: v / self.steps_per_epoch for n, v in sums.items()}

    def embeddings(self, hard: bool) -> Tensor:
        spec = (self.cfg.hard, self.cfg.hard_size) if hard else None
        return vf.embed(self.model, self.heldout.images, spec)

    def evaluate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for tag, hard in (("clean", False), ("hard", True)):
            scores = self.pairs.scores(self.embeddings(hard))
            n_neg = int((~self.pairs.same).sum())
            fars = [f for f in (1e-2, 1e-3) if f * n_neg >= 1]  # those the pairs allow
            for k, v in vf.verification_metrics(scores, self.pairs.same, fars).items():
                out[f"{tag}_{k}"] = v
        return out

    def files(self) -> dict[str, dict]:
        return {"model.pt": self.model.state_dict(), "head.pt": self.head.state_dict()}

    def info(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "params": num_params(self.model),
            "macs": count_macs(self.model, (1, 28, 28)),
            "train_images": len(self.labels),
            "train_classes": list(vf.TRAIN_CLASSES),
            "heldout_classes": list(vf.HELDOUT_CLASSES),
            "pairs": len(self.pairs),
        }
        if self.teacher_run is not None:
            r = self.teacher_run
            d["teacher"] = {"name": r.name, "key": r.key, "metrics": r.metrics}
        return d


def _headline(m: Mapping[str, float]) -> str:
    return (
        f"clean acc {100 * m['clean_acc']:.2f}%, hard acc {100 * m['hard_acc']:.2f}%, "
        f"hard TAR@1e-2 {100 * m['hard_tar@0.01']:.1f}%"
    )


def run_face(cfg: FaceConfig, **kwargs: Any) -> AppResult:
    """Train ``cfg`` (or load it from the cache): :func:`kdutils.appruns.run_app`
    with kind ``"face"``; ``kwargs`` go to it (``device``, ``progress``,
    ``resume``, ``use_cache``)."""
    if not isinstance(cfg, FaceConfig):
        raise ValueError(
            f"run_face takes a FaceConfig (see face_config), got {type(cfg).__name__}"
        )
    return run_app(
        cfg,
        kind=KIND,
        version=FACE_VERSION,
        setup=_FaceSession,
        headline=_headline,
        **kwargs,
    )


def load_embedder(res: AppResult, device: str | torch.device = "cpu") -> nn.Module:
    """The finished run's embedding network, in eval mode."""
    net = vf.create_embedder(res.config["model"], res.config["emb_dim"])
    return res.load_into(net, device=device)
