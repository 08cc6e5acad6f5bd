"""Language-model runs: a character Transformer student, alone or distilled.

``run_lm(cfg) -> AppResult`` trains (or loads from the cache) one run of
chapter 19 (survey §5.5) through :func:`kdutils.appruns.run_app` (kind
``"lm"``): cached, locked, resumable bit for bit, with a record.

- **Data.** The fortunes of :mod:`kdutils.text`: training windows of
  ``context + 1`` characters at random offsets of the training stream (drawn
  from the epoch's generator); the held-out metrics are the bits per
  character of the first ``eval_chars`` characters of the validation and test
  streams (:func:`kdutils.lm.bits_per_char`).
- **Models.** :class:`kdutils.lm.CharTransformer`; the teacher and student
  have the same number of heads and context (TinyBERT's attention loss
  compares them entry by entry) and the teacher's depth is a multiple of the
  student's (the layer maps of PKD, TinyBERT and LRC-BERT).
- **Recipe.** AdamW (betas 0.9, 0.95, weight decay ``weight_decay`` on the
  matrices only), a linear warm-up over ``warmup`` steps then a cosine decay
  to 10% of ``lr``, gradients clipped to norm 1; one "epoch" is
  ``steps_per_epoch`` steps (the unit of checkpoints and evaluations).
- **Methods** (:data:`LM_METHODS`): ``none`` (the student alone), ``kd``
  (DistilBERT's soft targets), ``pkd`` (BERT-PKD), ``tinybert``, ``lrc``
  (LRC-BERT). A method's module holds its student-side projections (trained
  with the student, kept in ``adapters.pt``, not part of the student) and
  returns its weighted loss terms; a distilled run first runs its teacher
  (a ``none`` run of the teacher's size, cached) and keeps it frozen.

A run's key hashes :class:`LMConfig` with :data:`LM_VERSION`; bump it when
this module, :mod:`kdutils.lm`, :mod:`kdutils.text` or
:mod:`kdutils.losses.language` change what a run computes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .appruns import AppResult, check_finite, run_app
from .lm import CharTransformer, LMOutput, bits_per_char, flops_per_token
from .losses.language import (
    lm_kd_loss,
    lrc_loss,
    pkd_loss,
    tinybert_attention_loss,
    tinybert_hidden_loss,
    tinybert_pred_loss,
)
from .models import num_params
from .text import VOCAB, Corpus, load_corpus, windows

__all__ = [
    "LM_METHODS",
    "LM_PROFILES",
    "LM_VERSION",
    "LMConfig",
    "LMMethod",
    "build_model",
    "lm_config",
    "lm_teacher_config",
    "load_model",
    "run_lm",
]

# Bump when what an LM run computes changes (see the module docstring).
LM_VERSION = 1


# --- methods -------------------------------------------------------------------


@dataclass(frozen=True)
class LMMethod:
    """A language-model distillation method: its hyper-parameters' defaults
    (under the paper's names where it has them) and ``build(d_s, d_t, n_s,
    n_t, **args) -> nn.Module`` whose forward ``(out_s, out_t, y, progress)``
    returns ``{term: weighted loss}``; ``progress`` is the share of the
    run's steps done (for two-stage methods). ``source``: whose definition
    and settings it follows."""

    defaults: Mapping[str, Any]
    build: Callable[..., nn.Module] | None
    source: str


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    """The language-model loss: mean cross-entropy of the next character."""
    return F.cross_entropy(logits.flatten(0, 1), y.flatten())


class DistilBERTKD(nn.Module):
    """``kd_weight * lm_kd_loss(s, t, T) + ce_weight * CE(s, y)``: DistilBERT's
    soft-target loss (KL at temperature ``T``, mean over positions, times
    ``T^2``) beside the language-model loss, at their ``alpha_ce = 5``,
    ``alpha_mlm = 2`` (here the causal LM loss), ``T = 2``. Their cosine loss
    on the last hidden states (``alpha_cos = 1``) needs equal widths and a
    student initialised from the teacher's layers; it is left out."""

    def __init__(
        self,
        d_s: int,
        d_t: int,
        n_s: int,
        n_t: int,
        T: float,
        kd_weight: float,
        ce_weight: float,
    ) -> None:
        super().__init__()
        self.T, self.kd_weight, self.ce_weight = T, kd_weight, ce_weight

    def forward(self, s: LMOutput, t: LMOutput, y: Tensor, progress: float) -> dict:
        return {
            "ce": self.ce_weight * _ce(s.logits, y),
            "kd": self.kd_weight * lm_kd_loss(s.logits, t.logits, T=self.T),
        }


class PatientKD(nn.Module):
    """BERT-PKD: ``(1 - alpha) CE + alpha * KD + beta * L_PT``.

    The KD term is their code's ``nn.KLDivLoss(reduction="mean")`` times
    ``T^2``: a mean over positions *and* vocabulary entries, that is
    :func:`~kdutils.losses.language.lm_kd_loss` divided by the vocabulary
    size (the paper writes a sum over classes; we follow the code). ``L_PT``
    is :func:`~kdutils.losses.language.pkd_loss` ("skip" layers, normalised
    hidden states of every position) through a learned linear map from the
    student's width to the teacher's: PKD's networks have equal widths, ours
    do not (our departure)."""

    def __init__(
        self,
        d_s: int,
        d_t: int,
        n_s: int,
        n_t: int,
        T: float,
        alpha: float,
        beta: float,
        scheme: str,
        positions: str,
    ) -> None:
        super().__init__()
        self.T, self.alpha, self.beta = T, alpha, beta
        self.scheme, self.positions = scheme, positions
        self.proj = nn.Linear(d_s, d_t)

    def forward(self, s: LMOutput, t: LMOutput, y: Tensor, progress: float) -> dict:
        kd = lm_kd_loss(s.logits, t.logits, T=self.T) / s.logits.shape[-1]
        pt = pkd_loss(
            s.hidden,
            t.hidden,
            scheme=self.scheme,
            positions=self.positions,
            proj=self.proj,
        )
        return {
            "ce": (1 - self.alpha) * _ce(s.logits, y),
            "kd": self.alpha * kd,
            "pt": self.beta * pt,
        }


class TinyBERTKD(nn.Module):
    """TinyBERT's task distillation in two stages: for the first
    ``intermediate_share`` of the steps, ``att_weight * L_attn + hidden_weight
    * L_hidn`` (attention scores and hidden states, embeddings included,
    through one shared learned map ``W_h``); then the prediction layer alone,
    ``pred_weight * L_pred`` (their soft cross-entropy at ``T``), with no
    hard-label term, as in their ``task_distill.py``. They run the stages as
    two trainings; here they share one run's steps."""

    def __init__(
        self,
        d_s: int,
        d_t: int,
        n_s: int,
        n_t: int,
        T: float,
        intermediate_share: float,
        att_weight: float,
        hidden_weight: float,
        pred_weight: float,
    ) -> None:
        super().__init__()
        self.T, self.share = T, intermediate_share
        self.att_weight, self.hidden_weight = att_weight, hidden_weight
        self.pred_weight = pred_weight
        self.proj = nn.Linear(d_s, d_t)  # TinyBERT's fit_dense, W_h

    def forward(self, s: LMOutput, t: LMOutput, y: Tensor, progress: float) -> dict:
        if progress < self.share:
            return {
                "att": self.att_weight * tinybert_attention_loss(s.scores, t.scores),
                "hidden": self.hidden_weight
                * tinybert_hidden_loss(s.hidden, t.hidden, proj=self.proj),
            }
        return {
            "pred": self.pred_weight * tinybert_pred_loss(s.logits, t.logits, T=self.T)
        }


class LRCKD(nn.Module):
    """LRC-BERT: for the first ``contrastive_share`` of the steps the COS-NCE
    loss on the intermediate layers alone; then ``soft_weight * L_soft +
    hard_weight * L_hard + cos_weight * L_cos-nce``. ``L_cos-nce`` is
    :func:`~kdutils.losses.language.lrc_loss` (one learned linear map per
    student layer, last position pooled, in-batch negatives); ``L_soft`` is
    the KL at temperature ``T`` (:func:`~kdutils.losses.language.lm_kd_loss`),
    ``L_hard`` the language-model loss. Their gradient perturbation is not
    used."""

    def __init__(
        self,
        d_s: int,
        d_t: int,
        n_s: int,
        n_t: int,
        T: float,
        contrastive_share: float,
        soft_weight: float,
        hard_weight: float,
        cos_weight: float,
        pool: str,
    ) -> None:
        super().__init__()
        self.T, self.share, self.pool = T, contrastive_share, pool
        self.soft_weight, self.hard_weight = soft_weight, hard_weight
        self.cos_weight = cos_weight
        self.projs = nn.ModuleList(nn.Linear(d_s, d_t) for _ in range(n_s))

    def forward(self, s: LMOutput, t: LMOutput, y: Tensor, progress: float) -> dict:
        cos = self.cos_weight * lrc_loss(s.hidden, t.hidden, self.projs, pool=self.pool)
        if progress < self.share:
            return {"cos": cos}
        return {
            "cos": cos,
            "soft": self.soft_weight * lm_kd_loss(s.logits, t.logits, T=self.T),
            "hard": self.hard_weight * _ce(s.logits, y),
        }


LM_METHODS: dict[str, LMMethod] = {
    "none": LMMethod(
        defaults={},
        build=None,
        source="the language-model loss alone (cross-entropy of the next character)",
    ),
    "kd": LMMethod(
        defaults=dict(T=2.0, kd_weight=5.0, ce_weight=2.0),
        build=DistilBERTKD,
        source="Sanh et al. 2019 (DistilBERT), huggingface/transformers "
        "examples/research_projects/distillation: distiller.py, their README's "
        "--temperature 2 --alpha_ce 5.0 --alpha_mlm 2.0 (cosine term left out)",
    ),
    "pkd": LMMethod(
        defaults=dict(T=10.0, alpha=0.5, beta=100.0, scheme="skip", positions="all"),
        build=PatientKD,
        source="Sun et al. 2019 (BERT-PKD), intersun/PKD-for-BERT-Model-Compression: "
        "src/KD_loss.py, NLI_KD_training.py; T, alpha, beta of their best PKD-6 "
        "runs on SST-2 and MNLI (result/glue/result_summary/pkd_6layer_mean.csv)",
    ),
    "tinybert": LMMethod(
        defaults=dict(
            T=1.0,
            intermediate_share=0.5,
            att_weight=1.0,
            hidden_weight=1.0,
            pred_weight=1.0,
        ),
        build=TinyBERTKD,
        source="Jiao et al. 2020 (TinyBERT), huawei-noah/Pretrained-Language-Model: "
        "TinyBERT/task_distill.py (att + rep losses, then soft cross-entropy at "
        "temperature 1); the split of the steps between the stages is ours",
    ),
    "lrc": LMMethod(
        defaults=dict(
            T=1.0,
            contrastive_share=0.5,
            soft_weight=1.0,
            hard_weight=1.0,
            cos_weight=1.0,
            pool="last",
        ),
        build=LRCKD,
        source="Fu et al. 2021 (LRC-BERT), the paper's COS-NCE and two-stage "
        "training (no public code); weights 1, gradient perturbation not used",
    ),
}


# --- configs -------------------------------------------------------------------

# Sizes per profile: student, teacher, data and schedule (measured on the
# 2-core CPU machine for smoke and quick; paper is for a GPU).
LM_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        n_layers=2,
        d_model=32,
        n_heads=2,
        context=32,
        batch_size=16,
        teacher_layers=4,
        teacher_d_model=48,
        teacher_epochs=2,
        epochs=2,
        steps_per_epoch=10,
        lr=3e-3,
        warmup=4,
        eval_chars=2000,
    ),
    "quick": dict(
        n_layers=2,
        d_model=48,
        n_heads=4,
        context=64,
        batch_size=16,
        teacher_layers=4,
        teacher_d_model=96,
        teacher_epochs=6,
        epochs=3,
        steps_per_epoch=200,
        lr=6e-3,
        warmup=50,
        eval_chars=20000,
    ),
    "paper": dict(
        n_layers=2,
        d_model=128,
        n_heads=8,
        context=256,
        batch_size=64,
        teacher_layers=6,
        teacher_d_model=384,
        teacher_epochs=20,
        epochs=10,
        steps_per_epoch=1000,
        lr=1e-3,
        warmup=500,
        eval_chars=0,
    ),
}


@dataclass(frozen=True)
class LMConfig:
    """One run: the student's (or teacher's) size, the schedule, the method
    and its arguments, and the teacher's size (0 for a run without teacher).
    ``eval_chars``: the held-out characters measured (0: the whole split)."""

    profile: str
    method: str
    seed: int
    n_layers: int
    d_model: int
    n_heads: int
    context: int
    batch_size: int
    epochs: int
    steps_per_epoch: int
    lr: float
    warmup: int
    eval_chars: int
    teacher_layers: int = 0
    teacher_d_model: int = 0
    teacher_epochs: int = 0
    weight_decay: float = 0.1
    args: tuple[tuple[str, Any], ...] = ()
    eval_every: int | None = None

    @property
    def name(self) -> str:
        args = "".join(f"-{k}{v}" for k, v in self.args)  # e.g. "-T1.0"
        return (
            f"lm-{self.profile}-{self.n_layers}x{self.d_model}-{self.method}"
            f"{args}-s{self.seed}"
        )

    @property
    def method_args(self) -> dict[str, Any]:
        """The method's defaults with this run's overrides."""
        return {**LM_METHODS[self.method].defaults, **dict(self.args)}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["args"] = {k: v for k, v in self.args}
        return d


def lm_config(
    profile: str,
    method: str,
    seed: int = 0,
    args: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> LMConfig:
    """The config of ``method``'s run in ``profile``; ``args`` override the
    method's hyper-parameters, ``overrides`` the profile's sizes."""
    if profile not in LM_PROFILES:
        raise ValueError(
            f"unknown profile {profile!r}; choose from {', '.join(LM_PROFILES)}"
        )
    if method not in LM_METHODS:
        raise ValueError(
            f"unknown method {method!r}; choose from {', '.join(LM_METHODS)}"
        )
    args = dict(args or {})
    unknown = set(args) - set(LM_METHODS[method].defaults)
    if unknown:
        raise ValueError(
            f"{method} takes no argument(s) {sorted(unknown)}; it takes "
            f"{sorted(LM_METHODS[method].defaults) or 'none'}"
        )
    fields = {f.name for f in dataclasses.fields(LMConfig)}
    bad = set(overrides) - fields
    if bad:
        raise ValueError(f"unknown LMConfig field(s) {sorted(bad)}")
    sizes = {**LM_PROFILES[profile], **overrides}
    if method == "none":
        sizes.update(teacher_layers=0, teacher_d_model=0, teacher_epochs=0)
    cfg = LMConfig(
        profile=profile,
        method=method,
        seed=seed,
        args=tuple(sorted(args.items())),
        **sizes,
    )
    _check(cfg)
    return cfg


def _check(cfg: LMConfig) -> None:
    if cfg.method != "none":
        if cfg.teacher_layers % cfg.n_layers:
            raise ValueError(
                f"the teacher's {cfg.teacher_layers} layers must be a multiple of "
                f"the student's {cfg.n_layers} (the methods' layer maps)"
            )
        if cfg.teacher_d_model % cfg.n_heads:
            raise ValueError(
                f"the teacher's width {cfg.teacher_d_model} must be a multiple of "
                f"the {cfg.n_heads} heads it shares with the student"
            )
    if cfg.d_model % cfg.n_heads:
        raise ValueError(
            f"d_model {cfg.d_model} is not a multiple of n_heads {cfg.n_heads}"
        )
    if cfg.epochs < 1 or cfg.steps_per_epoch < 1:
        raise ValueError("epochs and steps_per_epoch must be >= 1")


def lm_teacher_config(cfg: LMConfig) -> LMConfig:
    """The teacher of ``cfg``: a ``none`` run of the teacher's size, seed 0,
    ``teacher_epochs`` epochs, the same data, context, heads and recipe."""
    if cfg.method == "none" or not cfg.teacher_layers:
        raise ValueError(f"{cfg.name} has no teacher")
    return dataclasses.replace(
        cfg,
        method="none",
        seed=0,
        n_layers=cfg.teacher_layers,
        d_model=cfg.teacher_d_model,
        epochs=cfg.teacher_epochs or cfg.epochs,
        teacher_layers=0,
        teacher_d_model=0,
        teacher_epochs=0,
        args=(),
        eval_every=None,
    )


def build_model(cfg: LMConfig) -> CharTransformer:
    """The (untrained) network of ``cfg``."""
    return CharTransformer(cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.context)


def load_model(res: AppResult, device: str | torch.device = "cpu") -> CharTransformer:
    """The trained network of a finished run, in eval mode."""
    c = res.config
    net = CharTransformer(c["n_layers"], c["d_model"], c["n_heads"], c["context"])
    return res.load_into(net, device=device)


# --- the run -------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _corpus() -> Corpus:
    return load_corpus()


def _held_out(ids: Tensor, n: int) -> Tensor:
    return ids if n <= 0 else ids[: n + 1]


class _Session:
    def __init__(
        self, cfg: LMConfig, device: torch.device, progress: bool = True
    ) -> None:
        self.cfg, self.device = cfg, device
        self.corpus = _corpus()
        self.model = build_model(cfg).to(device)
        self.teacher, self.teacher_res, self.method = None, None, None
        spec = LM_METHODS[cfg.method]
        if spec.build is not None:
            # Every trained module is built before the teacher is: training the
            # teacher (on a cache miss) draws from the global generator, and
            # the student's initial weights must depend only on the seed.
            self.method = spec.build(
                cfg.d_model,
                cfg.teacher_d_model,
                cfg.n_layers,
                cfg.teacher_layers,
                **cfg.method_args,
            ).to(device)
            self.teacher_res = run_lm(
                lm_teacher_config(cfg), device=device, progress=progress
            )
            self.teacher = load_model(self.teacher_res, device).requires_grad_(False)
        params = list(self.model.parameters())
        if self.method is not None:
            params += list(self.method.parameters())
        decay = [p for p in params if p.ndim >= 2]
        rest = [p for p in params if p.ndim < 2]
        self.opt = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": cfg.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=cfg.lr,
            betas=(0.9, 0.95),
        )
        total = cfg.epochs * cfg.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, functools.partial(_lr_factor, warmup=cfg.warmup, total=total)
        )
        self.steps_per_epoch = cfg.steps_per_epoch
        self.state = {"model": self.model, "opt": self.opt, "sched": self.sched}
        if self.method is not None:
            self.state["method"] = self.method

    def train_epoch(self, epoch: int, gen: torch.Generator, tick: Callable) -> dict:
        cfg, total_steps = self.cfg, self.cfg.epochs * self.cfg.steps_per_epoch
        self.model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for i in range(cfg.steps_per_epoch):
            x, y = windows(self.corpus.train, cfg.context, cfg.batch_size, gen)
            x, y = x.to(self.device), y.to(self.device)
            if self.method is None:
                terms = {"ce": _ce(self.model(x), y)}
            else:
                out_s = self.model(x, return_all=True)
                with torch.no_grad():
                    out_t = self.teacher(x, return_all=True)
                progress = (epoch * cfg.steps_per_epoch + i) / total_steps
                terms = self.method(out_s, out_t, y, progress)
            total = sum(terms.values())
            parts = {k: float(v.detach()) for k, v in terms.items()}
            check_finite(total, parts)
            self.opt.zero_grad(set_to_none=True)
            total.backward()
            nn.utils.clip_grad_norm_(
                [p for g in self.opt.param_groups for p in g["params"]], 1.0
            )
            self.opt.step()
            self.sched.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            tick()
        # a two-stage method's terms change part-way: each is a mean over the
        # steps it ran
        return {k: v / counts[k] for k, v in sums.items()}

    def evaluate(self) -> dict[str, float]:
        n = self.cfg.eval_chars
        return {
            "val_bpc": bits_per_char(self.model, _held_out(self.corpus.val, n)),
            "test_bpc": bits_per_char(self.model, _held_out(self.corpus.test, n)),
        }

    def files(self) -> dict[str, dict]:
        out = {"model.pt": self.model.state_dict()}
        if self.method is not None and any(True for _ in self.method.parameters()):
            out["adapters.pt"] = self.method.state_dict()
        return out

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "params": num_params(self.model),
            "flops_per_token": flops_per_token(self.model),
            "vocab": len(VOCAB),
            "fortunes": dict(self.corpus.counts),
            "train_chars": len(self.corpus.train),
        }
        if self.method is not None:
            info["adapter_params"] = sum(p.numel() for p in self.method.parameters())
        if self.teacher_res is not None:
            t = self.teacher_res
            info["teacher"] = {
                "name": t.name,
                "key": t.key,
                "metrics": t.metrics,
                "params": t.info.get("params"),
            }
        return info


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0.1."""
    if step < warmup:
        return (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))


def _headline(m: Mapping[str, float]) -> str:
    return f"val {m['val_bpc']:.3f} bpc, test {m['test_bpc']:.3f} bpc"


def run_lm(cfg: LMConfig, **kw: Any) -> AppResult:
    """Train ``cfg`` (or load it from the cache); keyword arguments go to
    :func:`kdutils.appruns.run_app` (``resume``, ``use_cache``, ``progress``,
    ``device``)."""
    _check(cfg)
    setup = functools.partial(_Session, progress=kw.get("progress", True))
    return run_app(
        cfg, kind="lm", version=LM_VERSION, setup=setup, headline=_headline, **kw
    )
