"""Experiment configuration: one frozen dataclass, built from a profile.

The defaults of :class:`Config` are the ``paper`` profile: the survey's Table-1
data and models (CIFAR-10, ResNet56 teacher, ResNet20 student) with the CRD
benchmark's recipe (RepDistiller's defaults: 240 epochs, SGD lr 0.05, x0.1 at
150/180/210, batch 64, wd 5e-4), the usual choice for these methods. The survey
states no recipe of its own (its section 4 says only that every method shared
the same hyperparameters); ``book/settings.md`` gives each setting's source. A
*profile* is a set of overrides, nothing more (``kdutils.profiles``): the same
code runs ``smoke``, ``quick`` and ``paper``.

A config is data. It fills in and checks the method's hyperparameters by
looking the method up in ``kdutils.registry`` (its constructor's signature is
the one source of defaults), and checks model and dataset names; it imports
neither the distillers nor the trainer.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .checks import is_int, is_real
from .data import check_dataset_name
from .models import check_model_name, create_model
from .profiles import PROFILES
from .registry import METHODS, build, get_method

__all__ = [
    "Config",
    "PROFILES",
    "REFERENCE_EPOCHS",
    "make_config",
    "method_defaults",
    "scale_epochs",
    "own_teacher",
    "teacher_config",
]


@dataclass(frozen=True)
class Config:
    """Everything that determines a training run (and so its cache key)."""

    method: str = "kd"
    dataset: str = "cifar10"
    student: str = "resnet20"
    teacher: str | None = "resnet56"
    # Method hyperparameters under the paper's names, e.g. {"T": 4.0}; the
    # Distiller's constructor defaults fill in whatever is not given here.
    method_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 240
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"  # "step" (milestones x gamma) or "cosine"
    milestones: tuple[int, ...] = (150, 180, 210)
    gamma: float = 0.1
    augment: bool = True
    train_subset: int | None = None  # first N of a fixed permutation
    test_subset: int | None = None
    # A stratified, fixed part of the training subset held out for choosing
    # (epochs, settings): the test set is never used to choose anything. A
    # record from before this field existed had none: ``from_dict`` reads it
    # as 0, and a config with 0 leaves the field out of its key.
    val_fraction: float = 0.1
    seed: int = 0
    teacher_seed: int = 0  # one teacher serves every student seed
    teacher_epochs: int | None = None  # None: same as ``epochs``
    # Finished runs (their cache folder names, see ``kdutils.train.run_id``)
    # whose trained students are the teacher(s), instead of ``teacher`` trained
    # alone: a distilled assistant (TAKD), several teachers (multi-teacher KD),
    # an earlier generation (born-again networks). ``teacher`` still names the
    # first one's architecture.
    teacher_runs: tuple[str, ...] = ()
    eval_every: int = 1  # test-set evaluation every N epochs (and after the last)
    # Epochs after which the student's weights are also kept (``model-e<N>.pt``),
    # e.g. a teacher's route for route-constrained KD; see ``load_run("id@eN")``.
    save_epochs: tuple[int, ...] = ()
    profile: str = "paper"

    def __post_init__(self) -> None:
        _check_field_types(self)
        # Normalise containers so equal configs compare and hash equally.
        object.__setattr__(self, "milestones", tuple(int(m) for m in self.milestones))
        object.__setattr__(self, "teacher_runs", tuple(self.teacher_runs))
        object.__setattr__(self, "save_epochs", tuple(self.save_epochs))
        if any(
            isinstance(e, bool) or not isinstance(e, int) or not 1 <= e <= self.epochs
            for e in self.save_epochs
        ) or list(self.save_epochs) != sorted(set(self.save_epochs)):
            raise ValueError(
                f"save_epochs must be increasing epochs in 1..{self.epochs}, "
                f"got {list(self.save_epochs)}"
            )
        if self.schedule not in ("step", "cosine"):
            raise ValueError(
                f"schedule must be 'step' or 'cosine', got {self.schedule!r}"
            )
        # Fill in the method's defaults: the same experiment always has one key.
        defaults = method_defaults(self.method, self)
        args = {**defaults, **self.method_args}
        for k, v in args.items():  # T=8 and T=8.0 are one experiment
            if isinstance(defaults.get(k), float) and type(v) is int:
                args[k] = float(v)
        object.__setattr__(self, "method_args", dict(sorted(args.items())))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        d["teacher_runs"] = list(self.teacher_runs)
        d["save_epochs"] = list(self.save_epochs)
        if not self.val_fraction:
            del d["val_fraction"]  # as records from before the field have it
        if not self.save_epochs:
            # Left out when empty, so the configs (and cache keys) of runs from
            # before this field existed stay what they were.
            del d["save_epochs"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        return cls(**{"val_fraction": 0.0, **d})

    def key_json(self) -> str:
        """Canonical JSON of every field: the basis of the cache key."""
        return json.dumps(self.to_dict(), sort_keys=True, default=str)

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes``; a new method starts from its own defaults."""
        if changes.get("method", self.method) != self.method:
            changes.setdefault("method_args", {})
        return dataclasses.replace(self, **changes)

    @property
    def name(self) -> str:
        """Readable run name, e.g. ``kd-resnet56-resnet20-fashion-mnist-s0``."""
        parts = [self.method]
        if self.teacher and get_method(self.method).needs_teacher:
            parts.append(self.teacher)
        parts += [self.student, self.dataset]
        defaults = method_defaults(self.method)
        parts += [
            f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
            for k, v in self.method_args.items()
            if defaults.get(k) != v
        ]
        parts.append(f"s{self.seed}")
        return "-".join(str(p) for p in parts)


# What each field accepts: (kind, lowest, highest), checked when a Config is
# made so that a bad value fails at once, naming itself, before any training.
_SEED_MAX = 2**32 - 1  # numpy's seeds are 32-bit
_FIELD_RULES: dict[str, tuple[str, float | None, float | None]] = {
    "epochs": ("int", 1, None),
    "batch_size": ("int", 1, None),
    "eval_every": ("int", 1, None),
    "seed": ("int", 0, _SEED_MAX),
    "teacher_seed": ("int", 0, _SEED_MAX),
    "train_subset": ("int?", 1, None),
    "test_subset": ("int?", 1, None),
    "val_fraction": ("float", 0, 0.5),
    "teacher_epochs": ("int?", 1, None),
    "lr": ("float", 0, None),  # > 0, see below
    "momentum": ("float", 0, 1),
    "weight_decay": ("float", 0, None),
    "gamma": ("float", 0, None),  # > 0
    "augment": ("bool", None, None),
    "method": ("str", None, None),
    "dataset": ("str", None, None),
    "student": ("str", None, None),
    "teacher": ("str?", None, None),
    "profile": ("str", None, None),
    "schedule": ("str", None, None),
}
_POSITIVE = {"lr", "gamma"}


def _check_field_types(cfg: Config) -> None:
    for name, (kind, lo, hi) in _FIELD_RULES.items():
        v = getattr(cfg, name)
        if kind.endswith("?"):
            if v is None:
                continue
            kind = kind[:-1]
        what = {
            "int": "an integer",
            "float": "a finite number",
            "bool": "True or False",
            "str": "a name",
        }[kind]
        ok = {
            "int": is_int,
            "float": is_real,
            "bool": lambda x: isinstance(x, bool),
            "str": lambda x: isinstance(x, str) and bool(x),
        }[kind](v)
        if ok and kind == "float":
            ok = math.isfinite(v)
        if ok and lo is not None and (v <= lo if name in _POSITIVE else v < lo):
            ok = False
        if ok and hi is not None and (v >= hi if name == "momentum" else v > hi):
            ok = False
        if not ok:
            if lo is not None and hi is not None:
                bound = f"in [{lo}, {hi}{')' if name == 'momentum' else ']'}"
            elif lo is not None:
                bound = f"{'>' if name in _POSITIVE else '>='} {lo}"
            else:
                bound = ""
            if _FIELD_RULES[name][0].endswith("?"):
                bound += " or None (all)" if "subset" in name else " or None"
            allowed = f"{what} {bound}".strip()
            raise ValueError(f"{name} must be {allowed}, got {v!r}")
    for name in ("milestones",):
        v = getattr(cfg, name)
        if (
            isinstance(v, (str, bytes))
            or not hasattr(v, "__iter__")
            or not all(
                is_int(m) or (isinstance(m, float) and m.is_integer()) for m in v
            )
        ):
            raise ValueError(f"{name} must be a list of epochs (integers), got {v!r}")
    if list(cfg.milestones) != sorted(set(cfg.milestones)) or any(
        m < 1 for m in cfg.milestones
    ):
        raise ValueError(
            f"milestones must be increasing epochs >= 1, got {list(cfg.milestones)}"
        )
    if not isinstance(cfg.method_args, dict):
        raise ValueError(f"method_args must be a dict, got {cfg.method_args!r}")
    runs = cfg.teacher_runs
    if isinstance(runs, (str, bytes)) or not all(isinstance(r, str) for r in runs):
        raise ValueError(f"teacher_runs must be a list of run names, got {runs!r}")


def _config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(Config)}


def make_config(profile: str = "quick", **overrides: Any) -> Config:
    """Build a :class:`Config` from a profile plus overrides.

    Keyword arguments that are :class:`Config` fields override it; any other
    keyword is a hyperparameter of the method (``make_config("quick",
    method="kd", T=8)``) and must be accepted by that method's constructor.
    The method's schedule arguments (``Distiller.epoch_args``) not given are
    its defaults scaled to the run's epochs (:func:`scale_epochs`).
    """
    if profile not in PROFILES:
        raise ValueError(
            f"unknown profile {profile!r}; choose from: {', '.join(PROFILES)}"
        )
    fields = _config_fields()
    base = dict(PROFILES[profile], profile=profile)
    method_args = dict(overrides.pop("method_args", {}) or {})
    for k in list(overrides):
        if k not in fields:
            method_args[k] = overrides.pop(k)
    method = overrides.get("method", Config.method)
    if method != "ce" and "teacher" not in overrides:
        if method in METHODS and not METHODS[method].needs_teacher:
            # Online and self-distillation have no teacher: leave the profile's
            # out, so one experiment has one config (and one cache key).
            base["teacher"] = None
    if method in METHODS:
        epochs = overrides.get("epochs", base.get("epochs", Config.epochs))
        if is_int(epochs) and epochs > 0:
            defaults = method_defaults(method)
            for arg in METHODS[method].epoch_args:
                if arg not in method_args:
                    method_args[arg] = scale_epochs(defaults[arg], epochs)
    return Config(**{**base, **overrides, "method_args": method_args})


# The run length a method's schedule is stated for (``Distiller.epoch_args``):
# RepDistiller's 240 epochs, the ``paper`` profile's.
REFERENCE_EPOCHS = 240


def scale_epochs(value: int | float, epochs: int) -> int | float:
    """``value`` epochs of a :data:`REFERENCE_EPOCHS`-epoch run, for an
    ``epochs``-epoch run: an integer stage keeps at least one epoch (0 stays
    0: no stage), a float (a warm-up) scales exactly."""
    fraction = epochs / REFERENCE_EPOCHS
    if isinstance(value, bool) or not isinstance(value, int):
        return value * fraction
    return 0 if value == 0 else max(1, round(value * fraction))


def method_defaults(method: str, cfg: Config | None = None) -> dict[str, Any]:
    """The method's hyperparameters and their defaults, from its constructor.

    With ``cfg``, also checks the method, models, dataset and given arguments.
    """
    cls = get_method(method)  # raises on an unknown name
    params = inspect.signature(cls.__init__).parameters
    defaults = {
        k: p.default
        for k, p in params.items()
        if k not in ("self", "student", "teacher")
        and p.default is not inspect.Parameter.empty
    }
    if cfg is not None:
        check_model_name(cfg.student)
        if cls.needs_teacher:
            if cfg.teacher is None:
                raise ValueError(f"method {method!r} needs a teacher; set teacher=...")
            check_model_name(cfg.teacher)
        check_dataset_name(cfg.dataset)
        unknown = [k for k in cfg.method_args if k not in defaults]
        if unknown:
            raise ValueError(
                f"method {method!r} has no hyperparameter {unknown[0]!r}; "
                f"it accepts: {', '.join(defaults) or 'none'}"
            )
        for k, v in cfg.method_args.items():
            _check_hparam(method, k, v, params[k])
        _check_values(cls, cfg)
    return defaults


def _check_hparam(method: str, name: str, value: Any, param: inspect.Parameter) -> None:
    """A hyperparameter's value against its constructor annotation (``float``,
    ``int``, ``bool``, ``str``, each maybe ``| None``): the right type, and a
    finite number. Ranges are the method's own checks (``_check_values``)."""
    ann = param.annotation if isinstance(param.annotation, str) else ""
    if not ann:
        ann = type(param.default).__name__
    kinds = {part.strip() for part in ann.split("|")}
    if value is None and "None" in kinds:
        return
    if "float" in kinds:
        ok, what = is_real(value) and math.isfinite(value), "a finite number"
    elif "int" in kinds:
        ok, what = is_int(value), "an integer"
    elif "bool" in kinds:
        ok, what = isinstance(value, bool), "True or False"
    elif "str" in kinds:
        ok, what = isinstance(value, str), "a string"
    else:
        ok, what = not (isinstance(value, float) and not math.isfinite(value)), "finite"
    if not ok:
        raise ValueError(
            f"hyperparameter {name} of {method!r} must be {what} (default "
            f"{param.default!r}), got {value!r}"
        )


# Settings ``_check_values`` has accepted: building on the meta device still
# initialises every weight (about 0.1 s a config), and planning a reproduction
# checks hundreds of configs that differ only in their seed.
_CHECKED: set[str] = set()


def _check_values(cls, cfg: Config) -> None:
    """Build the method on the meta device: bad values (T <= 0, negative
    weights) raise here, before any teacher is trained."""
    key = json.dumps(
        [
            f"{cls.__module__}.{cls.__qualname__}",
            cfg.method,
            cfg.student,
            cfg.teacher if cls.needs_teacher else None,
            len(cfg.teacher_runs),
            sorted((k, repr(v)) for k, v in cfg.method_args.items()),
        ]
    )
    if key in _CHECKED:
        return
    _build_on_meta(cls, cfg)
    if len(_CHECKED) < 10_000:
        _CHECKED.add(key)


def _build_on_meta(cls, cfg: Config) -> None:
    with torch.device("meta"):
        teacher = create_model(cfg.teacher) if cls.needs_teacher else None
        if teacher is not None and len(cfg.teacher_runs) > 1:
            teacher = torch.nn.ModuleList(
                create_model(cfg.teacher) for _ in cfg.teacher_runs
            )
        build(cfg.method, create_model(cfg.student), teacher, **cfg.method_args)


def own_teacher(cfg: Config) -> Config | None:
    """The teacher run ``cfg`` trains (or loads) itself, ``teacher_config(cfg)``;
    None for a method that needs no teacher, for no teacher, or when its
    teachers are finished runs (``teacher_runs``)."""
    if (
        cfg.teacher is None
        or cfg.teacher_runs
        or not get_method(cfg.method).needs_teacher
    ):
        return None
    return teacher_config(cfg)


def teacher_config(cfg: Config) -> Config:
    """The run that trains ``cfg``'s teacher: cross-entropy, same data and recipe.

    A teacher is evaluated on the test set once, after its last epoch: its
    learning curve is not part of any experiment, and on a CPU the per-epoch
    evaluation of a deep teacher costs a third of its training time.
    """
    if cfg.teacher is None:
        raise ValueError("this config has no teacher")
    if cfg.teacher_runs:
        raise ValueError(
            "this config's teachers are finished runs: " + ", ".join(cfg.teacher_runs)
        )
    epochs = cfg.teacher_epochs or cfg.epochs
    return cfg.replace(
        method="ce",
        student=cfg.teacher,
        teacher=None,
        method_args={},
        seed=cfg.teacher_seed,
        epochs=epochs,
        teacher_epochs=None,
        teacher_runs=(),
        eval_every=epochs,
        save_epochs=(),
    )
