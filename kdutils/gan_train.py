"""GAN runs: a DCGAN teacher on Fashion-MNIST and thinner students, alone or
distilled (survey §5.4, chapter 18).

``run_gan(cfg) -> AppResult`` trains a :class:`GanConfig` (or loads it from
the cache) on :func:`kdutils.appruns.run_app`, kind ``"gan"``: one cache
entry per config, a lock, a checkpoint after each epoch, resumption that
ends with the weights of an uninterrupted run.

- The data: Fashion-MNIST's training images (a fixed subset per profile),
  scaled to [-1, 1]; no labels, no augmentation.
- The networks: :class:`kdutils.gan.Generator` (the run's ``width``) and
  :class:`kdutils.gan.Discriminator` (``d_width``, the same for teacher and
  students, so that only the generator is compressed, as in Chen et al.),
  DCGAN's initialisation, Adam (lr 2e-4, betas (0.5, 0.999)), DCGAN's
  recipe; per step one discriminator update, then one generator update on
  the same noise.
- The methods (:data:`GAN_METHODS`): ``"none"`` (the student GAN alone,
  against real images), ``"pixel"`` (the student only regresses the
  teacher's image for the same noise, L1, no discriminator: the simplest
  distillation baseline) and ``"chen"`` (Chen et al. 2020b). A distilled
  run's teacher is its own run (:func:`gan_teacher_config`), loaded frozen
  and in eval mode.
- The evaluation: the Fréchet distance between the classifier features of
  ``n_eval`` generated images (from :func:`kdutils.gan.fixed_noise`, the same
  noise for every run) and of ``n_eval`` real test images. The classifier is
  the book's own Fashion-MNIST classifier: the classification teacher of the
  profile named by ``classifier`` (``kd.teacher_config(kd.make_config(p,
  dataset="fashion-mnist"))``; in ``quick`` chapter 1's ResNet32, shared
  through the cache), its pooled penultimate features. It is a Fréchet
  distance on *this* classifier's features, not the Inception FID.

Chen et al. 2020b distil image-to-image translation GANs and published no
code; ``"chen"`` follows the paper's terms as the survey and the abstract
describe them (the method section could not be read here; see
:mod:`kdutils.losses.generation` for the unchecked details) with these
adaptations:

- the shared input of teacher and student is the noise ``z`` of an
  unconditional DCGAN, not a source image;
- the student discriminator's real samples are the teacher's images only
  (no real image enters a ``"chen"`` run), and it has the teacher
  discriminator's architecture, which the triplet term needs (it compares
  the two discriminators' features);
- the perceptual term's fixed network is the frozen teacher discriminator's
  last hidden layer, not an ImageNet network: no pretrained weights can be
  downloaded here, and the book's classifier must stay out of training
  because it is the instrument that measures the result;
- the L1 norms are means over the elements (this book's reading is an L1
  norm per sample; dividing it by the sample's size only rescales the
  weights), and the weights are this book's, chosen before
  any run and not tuned: ``pixel_weight = perceptual_weight = 10`` (the
  distillation terms outweigh the adversarial one, as pix2pix's and
  CycleGAN's reconstruction terms do), ``triplet_weight = 1``, ``margin =
  1`` (PyTorch's default triplet margin);
- the GAN loss is the non-saturating binary cross-entropy of DCGAN's
  reference code; one discriminator step, then one generator step, per
  batch.

A run's key hashes its config with :data:`GAN_VERSION` and
:data:`kdutils.runs.CORE_VERSION`; bump the former when this module,
:mod:`kdutils.gan` or :mod:`kdutils.losses.generation` change what a run
computes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import data as kdata
from .appruns import AppResult, check_finite, run_app
from .checks import is_int, is_real, merge_args
from .config import make_config, teacher_config
from .cost import count_macs
from .gan import (
    Discriminator,
    Generator,
    classifier_features,
    fixed_noise,
    frechet_distance,
    from_uint8,
)
from .losses.generation import (
    gan_d_loss,
    gan_g_loss,
    gan_perceptual_loss,
    gan_pixel_loss,
    gan_triplet_loss,
)
from .models import num_params
from .runs import cache_dir
from .train import run as run_classification

__all__ = [
    "GAN_METHODS",
    "GAN_PROFILES",
    "GAN_VERSION",
    "GanConfig",
    "GanMethod",
    "classifier_run",
    "gan_config",
    "gan_teacher_config",
    "load_generator",
    "run_gan",
]

# Bump when what a GAN run computes changes (this module, kdutils.gan, the
# generation losses).
GAN_VERSION = 1
_SEED_MAX = 2**32 - 1


@dataclass(frozen=True)
class GanMethod:
    """A generator-distillation method: its hyper-parameters' defaults, whether
    the student trains against a discriminator, and ``source``: whose
    definition and settings it follows."""

    defaults: Mapping[str, Any]
    adversarial: bool
    source: str


GAN_METHODS: dict[str, GanMethod] = {
    "none": GanMethod(
        {},
        True,
        "the student GAN alone: DCGAN (Radford et al. 2016) against real images",
    ),
    "pixel": GanMethod(
        {},
        False,
        "the simplest baseline: only Chen et al.'s pixel term, L1 between the "
        "student's and the teacher's image for the same noise, no discriminator",
    ),
    "chen": GanMethod(
        {
            "pixel_weight": 10.0,
            "perceptual_weight": 10.0,
            "triplet_weight": 1.0,
            "margin": 1.0,
        },
        True,
        "Chen et al. 2020b (AAAI, no public code): adversarial loss against a "
        "student discriminator that takes the teacher's images as real, "
        "+ pixel L1 + perceptual L1 (frozen teacher discriminator's features), "
        "triplet term for the student discriminator; the weights are this "
        "book's (see gan_train's docstring), not the paper's",
    ),
}


@dataclass(frozen=True)
class GanConfig:
    """Everything that decides a GAN run (and so its cache key).

    ``width``: the generator's width multiplier (1 is DCGAN's 64 base
    channels); ``method``: a :data:`GAN_METHODS` name; ``teacher_width``: the
    teacher generator's width (required by a method other than ``"none"``,
    refused with it); ``args``: the method's hyper-parameters (a mapping or
    pairs, the defaults filled in, kept as sorted pairs). ``d_width``: the
    discriminator's width (teacher's and students'). The teacher is the run
    of the same data and recipe with method ``"none"``, ``teacher_width``,
    seed ``teacher_seed`` and ``teacher_epochs`` epochs (default ``epochs``).
    ``n_eval`` generated and real test images enter the Fréchet distance,
    on the features of the classification teacher of profile
    ``classifier``. ``eval_every`` decides only what is measured.
    """

    width: float = 0.125
    method: str = "none"
    teacher_width: float | None = None
    args: Any = ()
    d_width: float = 0.25
    z_dim: int = 100
    epochs: int = 2
    batch_size: int = 64
    lr: float = 2e-4
    beta1: float = 0.5
    train_subset: int | None = 1280
    n_eval: int = 256
    classifier: str = "smoke"
    seed: int = 0
    teacher_seed: int = 0
    teacher_epochs: int | None = None
    eval_every: int | None = None

    def __post_init__(self) -> None:
        if self.method not in GAN_METHODS:
            raise ValueError(
                f"method must be one of {', '.join(repr(m) for m in GAN_METHODS)}, "
                f"got {self.method!r}"
            )
        for name in ("width", "d_width", "teacher_width", "lr"):
            v = getattr(self, name)
            if v is None and name == "teacher_width":
                continue
            if not is_real(v) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
            object.__setattr__(self, name, float(v))
        if not is_real(self.beta1) or not 0 <= self.beta1 < 1:
            raise ValueError(f"beta1 must be in [0, 1), got {self.beta1!r}")
        object.__setattr__(self, "beta1", float(self.beta1))
        for name, lo in (
            ("z_dim", 1),
            ("epochs", 1),
            ("batch_size", 2),
            ("n_eval", 2),
            ("seed", 0),
            ("teacher_seed", 0),
            ("teacher_epochs", 1),
            ("train_subset", 2),
            ("eval_every", 1),
        ):
            v = getattr(self, name)
            if v is None and name in ("teacher_epochs", "train_subset", "eval_every"):
                continue
            if not is_int(v) or not lo <= v <= _SEED_MAX:
                raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
        if self.train_subset is not None and self.train_subset < self.batch_size:
            raise ValueError(
                f"train_subset ({self.train_subset}) must hold at least one batch "
                f"({self.batch_size})"
            )
        if self.classifier not in ("smoke", "quick", "paper"):
            raise ValueError(
                "classifier must be a profile name ('smoke', 'quick' or 'paper'), "
                f"got {self.classifier!r}"
            )
        if self.method == "none" and self.teacher_width is not None:
            raise ValueError(
                f"teacher_width {self.teacher_width} is given but method is 'none' "
                "(no distillation); leave it out or name a method"
            )
        if self.method == "none" and self.teacher_epochs is not None:
            raise ValueError(
                "teacher_epochs is given but method is 'none' (no teacher)"
            )
        if self.method != "none" and self.teacher_width is None:
            raise ValueError(f"teacher_width is required by method {self.method!r}")
        # Checked here so that a bad width fails when the config is made.
        Generator(self.width, self.z_dim)
        Discriminator(self.d_width)
        object.__setattr__(self, "args", _fill_args(self.method, self.args))

    @property
    def name(self) -> str:
        """Readable run name, e.g. ``gan-chen-g0.125-t0.5-s0``."""
        parts = ["gan", self.method, f"g{self.width:g}"]
        if self.teacher_width is not None:
            parts.append(f"t{self.teacher_width:g}")
        defaults = GAN_METHODS[self.method].defaults
        parts += [f"{k}{v:g}" for k, v in self.args if defaults.get(k) != v]
        parts.append(f"s{self.seed}")
        return "-".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["args"] = dict(self.args)
        return d

    def replace(self, **changes: Any) -> GanConfig:
        """A copy with ``changes``; a new method starts from its own defaults."""
        if changes.get("method", self.method) != self.method:
            changes.setdefault("args", ())
        return dataclasses.replace(self, **changes)


def _fill_args(method: str, args: Any) -> tuple[tuple[str, float], ...]:
    """``args`` checked and completed with the method's defaults, sorted."""
    defaults = dict(GAN_METHODS[method].defaults)
    out = merge_args(method, args, defaults)
    for k, v in out.items():
        if not is_real(v) or not math.isfinite(v) or v < 0:
            raise ValueError(
                f"args: {method} {k} must be a finite number >= 0, got {v!r}"
            )
        out[k] = float(v)
    return tuple(sorted(out.items()))


def gan_teacher_config(cfg: GanConfig) -> GanConfig:
    """The run that trains ``cfg``'s teacher: the same data and recipe, the
    teacher's width, method ``"none"``, seed ``cfg.teacher_seed``,
    ``cfg.teacher_epochs`` epochs (or ``cfg.epochs``)."""
    if cfg.teacher_width is None:
        raise ValueError(f"{cfg.name} has no teacher")
    return cfg.replace(
        width=cfg.teacher_width,
        method="none",
        teacher_width=None,
        seed=cfg.teacher_seed,
        epochs=cfg.teacher_epochs or cfg.epochs,
        teacher_epochs=None,
    )


# Sizes per profile. The teacher generator is 4 times as wide as the
# student's in every profile; the step times below were measured
# on the book's 2-core CPU with one torch thread, batch 64: a teacher step
# (generator width 0.5, discriminator 0.25) 0.12 s, a student step (0.125)
# 0.05 s alone, about 0.09 s with Chen et al.'s terms.
GAN_PROFILES: dict[str, dict[str, Any]] = {
    # proves the code: 20 steps an epoch, the teacher 3 epochs, students 2
    "smoke": dict(
        width=0.125,
        teacher_width=0.5,
        d_width=0.25,
        epochs=2,
        teacher_epochs=3,
        train_subset=1280,
        n_eval=256,
        classifier="smoke",
    ),
    # 150 steps an epoch: the teacher 1200 steps, each student 900. Measured
    # (one thread, other work running): the teacher 136 s, a student alone
    # 52 s, pixel 45 s, chen 80 s, each with its 3 evaluations; chapter 18's
    # runs (teacher, 3 students x 2 seeds) 8.3 minutes.
    "quick": dict(
        width=0.125,
        teacher_width=0.5,
        d_width=0.25,
        epochs=6,
        teacher_epochs=8,
        train_subset=9600,
        n_eval=1000,
        eval_every=2,
        classifier="quick",
    ),
    # DCGAN's widths (teacher 1, student 0.25) on all 60000 images; a GPU
    "paper": dict(
        width=0.25,
        teacher_width=1.0,
        d_width=1.0,
        epochs=25,
        teacher_epochs=25,
        train_subset=None,
        n_eval=10000,
        eval_every=5,
        classifier="paper",
    ),
}


def gan_config(
    profile: str, method: str = "none", seed: int = 0, **overrides: Any
) -> GanConfig:
    """The :class:`GanConfig` of ``profile`` for ``method`` and ``seed``.

    With ``method="none"`` the run is the student alone (no teacher); the
    teacher's own run is ``gan_teacher_config(cfg)`` of a distilled ``cfg``.
    ``overrides`` replace any field.
    """
    if profile not in GAN_PROFILES:
        raise ValueError(
            f"profile must be one of {', '.join(GAN_PROFILES)}, got {profile!r}"
        )
    if method not in GAN_METHODS:
        raise ValueError(
            f"method must be one of {', '.join(repr(m) for m in GAN_METHODS)}, "
            f"got {method!r}"
        )
    fields = dict(GAN_PROFILES[profile])
    if method == "none":
        fields.pop("teacher_width")
        fields.pop("teacher_epochs")
    fields.update(method=method, seed=seed, **overrides)
    return GanConfig(**fields)


def classifier_run(profile: str):
    """The classification run whose model gives the Fréchet distance's
    features: ``profile``'s teacher on Fashion-MNIST (trained or loaded)."""
    return run_classification(
        teacher_config(make_config(profile, dataset="fashion-mnist"))
    )


# One classifier and one set of real-image features per process and profile:
# every run of a chapter measures against the same ones.
# (Keyed by the cache folder too: another cache may hold another classifier.)
_CLASSIFIERS: dict[tuple[str, str], tuple[Any, torch.nn.Module]] = {}
_REAL_FEATS: dict[tuple[str, str, int], np.ndarray] = {}


def _classifier(profile: str) -> tuple[Any, torch.nn.Module]:
    key = (str(cache_dir()), profile)
    if key not in _CLASSIFIERS:
        res = classifier_run(profile)
        _CLASSIFIERS[key] = (res, res.load_model())
    return _CLASSIFIERS[key]


def _real_features(profile: str, n: int) -> np.ndarray:
    key = (str(cache_dir()), profile, n)
    if key not in _REAL_FEATS:
        test = kdata.load("fashion-mnist", train=False).subset(n, seed=0)
        _, clf = _classifier(profile)
        _REAL_FEATS[key] = classifier_features(clf, from_uint8(test.images))
    return _REAL_FEATS[key]


def load_generator(res: AppResult, device: str = "cpu") -> Generator:
    """The trained generator of a finished GAN run, in eval mode."""
    g = Generator(float(res.config["width"]), int(res.config["z_dim"]))
    return res.load_into(g, "generator.pt", device)


def _load_discriminator(res: AppResult, device: torch.device) -> Discriminator:
    d = Discriminator(float(res.config["d_width"]))
    return res.load_into(d, "discriminator.pt", device)


class _Session:
    """One GAN run's computation (see :class:`kdutils.appruns.Session`)."""

    def __init__(self, cfg: GanConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.method = GAN_METHODS[cfg.method]
        self.w = dict(cfg.args)
        self.teacher: AppResult | None = None
        # The classifier and the real images' features first, then the
        # teacher (each trained once, then loaded from the cache); either may
        # train and draw random numbers, so torch is seeded again after them:
        # the student's initial weights depend only on its seed.
        _real_features(cfg.classifier, cfg.n_eval)
        if cfg.method != "none":
            self.teacher = run_gan(gan_teacher_config(cfg), device=device)
            self.g_t = load_generator(self.teacher, device).requires_grad_(False)
            self.d_t = _load_discriminator(self.teacher, device).requires_grad_(False)
        torch.manual_seed(cfg.seed)
        train = kdata.load("fashion-mnist", train=True).subset(cfg.train_subset, seed=0)
        self.x = from_uint8(train.images)  # (N, 1, 28, 28) in [-1, 1]
        self.g = Generator(cfg.width, cfg.z_dim).to(device)
        betas = (cfg.beta1, 0.999)
        self.opt_g = torch.optim.Adam(self.g.parameters(), lr=cfg.lr, betas=betas)
        self.state: dict[str, Any] = {"generator": self.g, "opt_g": self.opt_g}
        self.d = None
        if self.method.adversarial:
            self.d = Discriminator(cfg.d_width).to(device)
            self.opt_d = torch.optim.Adam(self.d.parameters(), lr=cfg.lr, betas=betas)
            self.state.update(discriminator=self.d, opt_d=self.opt_d)
        self.steps_per_epoch = len(self.x) // cfg.batch_size

    def _step(self, real: Tensor, z: Tensor) -> dict[str, float]:
        cfg, w, parts = self.cfg, self.w, {}
        t_img = t_feat = None
        if self.teacher is not None:
            with torch.no_grad():
                t_img = self.g_t(z)
                t_feat = self.d_t.features(t_img) if cfg.method == "chen" else None
        fake = self.g(z)
        if self.d is not None:
            # Chen et al.: the student discriminator's real samples are the
            # teacher's images for the same noise. Features once per batch:
            # the logits and the triplet term share them.
            real_in = t_img if cfg.method == "chen" else real
            f_real, f_fake = self.d.features(real_in), self.d.features(fake.detach())
            d_loss = gan_d_loss(
                self.d.head(f_real).squeeze(1), self.d.head(f_fake).squeeze(1)
            )
            parts["d"] = d_loss.item()
            if cfg.method == "chen" and w["triplet_weight"] > 0:
                tri = gan_triplet_loss(f_real, f_fake, t_feat, w["margin"])
                parts["triplet"] = tri.item()
                d_loss = d_loss + w["triplet_weight"] * tri
            check_finite(d_loss.detach(), parts)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        g_loss = torch.zeros((), device=self.device)
        if self.d is not None:
            adv = gan_g_loss(self.d(fake))
            parts["adv"] = adv.item()
            g_loss = g_loss + adv
        if cfg.method == "pixel":
            pix = gan_pixel_loss(fake, t_img)
            parts["pixel"] = pix.item()
            g_loss = g_loss + pix
        elif cfg.method == "chen":
            pix = gan_pixel_loss(fake, t_img)
            perc = gan_perceptual_loss(self.d_t.features(fake), t_feat)
            parts.update(pixel=pix.item(), perceptual=perc.item())
            g_loss = g_loss + w["pixel_weight"] * pix + w["perceptual_weight"] * perc
        parts["g"] = check_finite(g_loss.detach(), parts)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        return parts

    def train_epoch(
        self, epoch: int, gen: torch.Generator, tick: Callable[[], None]
    ) -> dict[str, float]:
        self.g.train()
        if self.d is not None:
            self.d.train()
        cfg = self.cfg
        order = torch.randperm(len(self.x), generator=gen)
        sums: dict[str, float] = {}
        for i in range(self.steps_per_epoch):
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=gen)
            parts = self._step(self.x[idx].to(self.device), z.to(self.device))
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            tick()
        return {k: v / self.steps_per_epoch for k, v in sums.items()}

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        cfg = self.cfg
        was = self.g.training
        self.g.eval()
        z = fixed_noise(cfg.n_eval, cfg.z_dim, seed=0).to(self.device)
        fake = torch.cat([self.g(z[i : i + 500]) for i in range(0, len(z), 500)])
        self.g.train(was)
        _, clf = _classifier(cfg.classifier)
        feats = classifier_features(clf, fake.cpu())
        out = {
            "fd": frechet_distance(feats, _real_features(cfg.classifier, cfg.n_eval))
        }
        if self.teacher is not None:
            t_img = torch.cat([self.g_t(z[i : i + 500]) for i in range(0, len(z), 500)])
            out["l1_to_teacher"] = float((fake - t_img).abs().mean())
        return out

    def files(self) -> dict[str, dict]:
        out = {"generator.pt": self.g.state_dict()}
        if self.d is not None:
            out["discriminator.pt"] = self.d.state_dict()
        return out

    def info(self) -> dict[str, Any]:
        cfg = self.cfg
        clf_res, _ = _classifier(cfg.classifier)
        out: dict[str, Any] = {
            "generator_params": num_params(self.g),
            "generator_macs": count_macs(self.g, (cfg.z_dim,)),
            "discriminator_params": num_params(self.d) if self.d is not None else 0,
            "classifier": {
                "name": clf_res.name,
                "key": clf_res.key,
                "test_acc": float(clf_res.test_acc),
            },
        }
        if self.teacher is not None:
            out["teacher"] = {
                "name": self.teacher.name,
                "key": self.teacher.key,
                "metrics": self.teacher.metrics,
            }
        return out


def _headline(metrics: Mapping[str, float]) -> str:
    return f"Fréchet distance {metrics['fd']:.2f} (classifier features)"


def run_gan(cfg: GanConfig, **kwargs: Any) -> AppResult:
    """Train ``cfg`` (or load it from the cache); ``kwargs`` go to
    :func:`kdutils.appruns.run_app` (``resume``, ``use_cache``, ``progress``,
    ``device``)."""
    if not isinstance(cfg, GanConfig):
        raise ValueError(
            f"run_gan takes a GanConfig (see gan_config), got {type(cfg).__name__}"
        )
    return run_app(
        cfg,
        kind="gan",
        version=GAN_VERSION,
        setup=_Session,
        headline=_headline,
        **kwargs,
    )
