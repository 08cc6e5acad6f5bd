"""Distillers that fit feature maps directly, survey section 2.2.1, Eq. (2).

``L_KD = DF(f_S, f_T)``: the student's intermediate feature maps are pulled
towards the teacher's, through a small learned connector where the shapes
differ. FitNet (one hint layer), SSKD (the stages one after another), AB
(the activation boundaries of pre-ReLU features), FT (factors of an
autoencoder on the teacher's last map) and VID (a Gaussian likelihood with a
learned variance). Connectors are built in ``setup`` from the feature shapes;
shapes no connector can bridge raise a ``ValueError`` naming layers and shapes.

Four methods have a stage before the main training, run by ``prepare`` on a
fresh run (its weights are part of the checkpoints): FitNet's two-stage form
and AB train the student's lower layers first; FT trains its paraphraser;
SSKD trains the student's stages one after another. Those stages use their
own SGD (the shared :func:`~kdutils.distillers.base.pretrain`, with the run's
momentum and weight decay): a constant ``init_lr``, as RepDistiller's
``init`` stage does, except SSKD's, which give each stage its own cosine
schedule.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_T
from ..data import normalize
from ..losses import ab_loss, ft_loss, hint_loss, kd_loss, vid_loss
from ..models import capture
from .base import Distiller, check_weights, feature_shapes, pretrain, register

__all__ = [
    "FitNet",
    "SSKD",
    "AB",
    "FT",
    "VID",
    "conv_regressor",
    "forward_until",
    "Paraphraser",
    "Translator",
    "VIDRegressor",
]


class _StopForward(Exception):
    """Raised by a hook once every requested feature has been computed."""


def forward_until(model: nn.Module, layers: Sequence[str], x: Tensor) -> dict:
    """Outputs of ``layers`` for input ``x``, stopping the forward pass there.

    The layers after the last requested one are not run: a stage that trains
    the student only up to a hint layer neither pays for nor updates (batch
    norm statistics) what comes after it.
    """
    layers = list(layers)
    modules = dict(model.named_modules())
    missing = [n for n in layers if n not in modules]
    if missing:
        raise ValueError(f"{type(model).__name__} has no layer(s) {missing}")
    feats: dict[str, Tensor] = {}

    def hook(_m, _inp, out, name):
        feats[name] = out
        if len(feats) == len(layers):
            raise _StopForward

    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: hook(m, i, o, n))
        for n in layers
    ]
    try:
        # ``forward`` itself, not ``__call__``: a teacher the trainer compiled
        # (torch.compile) runs eagerly here, where its hooks stop it.
        model.forward(x)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    return feats


def _check_shape(shape: Sequence[int], what: str) -> None:
    if len(shape) != 3:
        raise ValueError(
            f"{what}: expected a (C, H, W) feature map, got {tuple(shape)}"
        )


def conv_regressor(
    s_shape: Sequence[int],
    t_shape: Sequence[int],
    relu: bool = True,
    bias: bool = True,
    names: tuple[str, str] = ("student", "teacher"),
) -> nn.Sequential:
    """A convolution + BN (+ ReLU) mapping a ``(C_s, H_s, W_s)`` map to ``(C_t, H_t, W_t)``.

    The FitNet regressor of the CIFAR benchmark (RepDistiller's ``ConvReg``):
    a 3x3 stride-2 convolution when the student map is twice as large, a
    4x4 stride-2 transposed convolution when it is half as large, else a
    ``(1 + H_s - H_t) x (1 + W_s - W_t)`` convolution (1x1 for equal sizes).
    A student map smaller than the teacher's by another factor raises.
    """
    _check_shape(s_shape, names[0])
    _check_shape(t_shape, names[1])
    (cs, hs, ws), (ct, ht, wt) = s_shape, t_shape
    if hs == 2 * ht:
        conv: nn.Module = nn.Conv2d(cs, ct, 3, stride=2, padding=1, bias=bias)
    elif 2 * hs == ht:
        conv = nn.ConvTranspose2d(cs, ct, 4, stride=2, padding=1, bias=bias)
    elif hs >= ht and ws >= wt:
        conv = nn.Conv2d(cs, ct, (1 + hs - ht, 1 + ws - wt), bias=bias)
    else:
        raise ValueError(
            f"no regressor maps {names[0]} {tuple(s_shape)} to {names[1]} "
            f"{tuple(t_shape)}: the student map must be as large as the teacher's, "
            "twice as large or half as large"
        )
    reg = nn.Sequential(conv, nn.BatchNorm2d(ct), *([nn.ReLU()] if relu else []))
    with torch.no_grad():  # the rules above look at H only: check the result
        out = tuple(reg.eval()(torch.zeros(2, cs, hs, ws)).shape[1:])
    reg.train()
    if out != (ct, ht, wt):
        raise ValueError(
            f"the regressor maps {names[0]} {tuple(s_shape)} to {out}, not to "
            f"{names[1]} {tuple(t_shape)}"
        )
    return reg


def _sample(data) -> Tensor:
    """One normalised training image ``(1, C, H, W)`` for sizing connectors."""
    return normalize(data.images[:1], data.info)


def _shapes(model: nn.Module, layers: Sequence[str], data) -> list[tuple[int, ...]]:
    shapes = feature_shapes(model, layers, _sample(data))
    return [shapes[n] for n in layers]


def _ce_kd_terms(
    logits_s: Tensor,
    y: Tensor,
    logits_t: Tensor | None,
    ce_weight: float,
    kd_weight: float,
    T: float,
) -> dict[str, Tensor]:
    terms = {"ce": ce_weight * F.cross_entropy(logits_s, y)}
    if kd_weight > 0:
        terms["kd"] = kd_weight * kd_loss(logits_s, logits_t, T)
    return terms


def _check_init(init_epochs: int, init_lr: float) -> None:
    if init_epochs < 0:
        raise ValueError(f"init_epochs must be >= 0, got {init_epochs}")
    if init_lr <= 0:
        raise ValueError(f"init_lr must be > 0, got {init_lr}")


@register("fitnet", section="2.2.1")
class FitNet(Distiller):
    """FitNets: a hint layer of the teacher guides a student layer through a regressor.

    ``L = ce_weight CE + kd_weight KD + hint_weight MSE(r(f_S), f_T)`` with
    ``r`` a conv regressor (:func:`conv_regressor`) from the student's
    ``hint_layer`` to the teacher's (survey Eq. (2)). The defaults are
    the joint form of the CRD benchmark's FitNet row (RepDistiller:
    hint on the middle stage, ``-r 1 -a 0 -b 100``: cross-entropy plus 100
    times the hint loss, no soft targets).

    ``init_epochs > 0`` adds Romero et al.'s first stage: the student up to
    its guided layer and the regressor are trained on the hint loss alone for
    ``init_epochs`` epochs (``prepare``). Their second stage is KD; for the
    paper's two-stage form pass ``hint_weight=0, ce_weight=0.1,
    kd_weight=0.9`` too (``kd``'s weights; Romero et al. anneal the KD weight).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        hint_layer: str = "layer2",
        hint_weight: float = 100.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
        init_epochs: int = 0,
        init_lr: float = 0.05,
    ) -> None:
        check_weights(hint_weight=hint_weight, ce_weight=ce_weight, kd_weight=kd_weight)
        check_T(T)
        _check_init(init_epochs, init_lr)
        super().__init__(student, teacher)
        self.hint_layer = hint_layer
        self.hint_weight, self.ce_weight, self.kd_weight = (
            hint_weight,
            ce_weight,
            kd_weight,
        )
        self.T, self.init_epochs, self.init_lr = T, init_epochs, init_lr
        self.teacher_layers = (hint_layer,) if hint_weight > 0 else ()
        self.regressor: nn.Module | None = None

    def setup(self, data) -> None:
        (s,) = _shapes(self.student, [self.hint_layer], data)
        (t,) = _shapes(self.teacher, [self.hint_layer], data)
        self.regressor = conv_regressor(
            s, t, names=(f"student {self.hint_layer}", f"teacher {self.hint_layer}")
        )

    def _regressed(self, feat_s: Tensor) -> Tensor:
        if self.regressor is None:
            raise RuntimeError("call setup(data) first: it sizes the regressor")
        return self.regressor(feat_s)

    def prepare(self, loader, cfg=None) -> None:
        if self.init_epochs == 0:
            return
        layer = self.hint_layer

        def stage1(x: Tensor) -> Tensor:
            with torch.no_grad():
                f_t = forward_until(self.teacher, [layer], x)[layer]
            f_s = forward_until(self.student, [layer], x)[layer]
            return hint_loss(self._regressed(f_s), f_t)

        params = [*self.student.parameters(), *self.regressor.parameters()]
        self.train()
        pretrain(
            "fitnet hint stage",
            loader,
            params,
            stage1,
            self.init_epochs,
            self.init_lr,
            cfg=cfg,
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        layers = [self.hint_layer] if self.hint_weight > 0 else []
        with capture(self.student, layers) as feats:
            logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        terms = _ce_kd_terms(
            logits_s, y, t["logits"], self.ce_weight, self.kd_weight, self.T
        )
        if self.hint_weight > 0:
            f_s = self._regressed(feats[self.hint_layer])
            terms["hint"] = self.hint_weight * hint_loss(f_s, t[self.hint_layer])
        return logits_s, terms


def _stage_names(model: nn.Module, what: str) -> list[str]:
    if not hasattr(model, "stage_layers"):
        raise ValueError(f"the {what} has no stage_layers(): SSKD needs its stages")
    return list(model.stage_layers())


@register("sskd", section="2.2.1")
class SSKD(Distiller):
    """Stage-by-stage KD (Gao et al. 2019): the student mimics the teacher one stage at a time.

    ``prepare`` (fresh runs) trains the ``S`` stages one after another. In
    phase ``k`` only student stage ``k`` (with the stem in the first) trains,
    for ``stage_epochs`` epochs, on ``hint_weight * MSE(f_S^k, f_T^k)``
    (survey Eq. (2)) against the live teacher; the stages before it are
    frozen (no gradient, batch norm in eval mode) and those after it are not
    run. Each phase has its own SGD (the run's momentum and weight decay) and
    its own per-step cosine learning rate from ``init_lr`` to 0, as Gao et
    al. give each phase its own schedule. The main training (the run's
    ``epochs`` and learning-rate schedule) is the classifier phase: the
    backbone is frozen and only ``fc`` trains, on the labels; it reads no
    teacher output. Each phase has one loss, so there is no weight to tune
    (``hint_weight`` = 1 only scales the stage losses).

    Defaults: ``stage_epochs=30`` and ``init_lr=0.05`` are this project's
    choice, not the paper's: the length and learning rate of the CIFAR
    benchmark's pre-training stage (RepDistiller's 30 ``init`` epochs, its
    0.05). The student mimics the teacher's features as they are: stage
    outputs of different shapes raise a ``ValueError``. The buffer
    ``stage_losses`` ``(S, stage_epochs)`` holds each phase's mean loss per
    epoch (checkpointed with the weights; NaN until ``prepare`` ran).

    Outside a schedule (a single forward before ``on_epoch``, in a test or a
    notebook) the forward returns the classifier's cross-entropy with
    gradients through the whole student; :meth:`stage_terms` gives the
    stage objectives. Not to be confused with the later self-supervised KD
    of the same acronym.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        stage_epochs: int = 30,
        init_lr: float = 0.05,
        hint_weight: float = 1.0,
    ) -> None:
        check_weights(hint_weight=hint_weight)
        if isinstance(stage_epochs, bool) or not isinstance(stage_epochs, int):
            raise ValueError(
                f"stage_epochs must be an integer >= 1, got {stage_epochs!r}"
            )
        if stage_epochs < 1:
            raise ValueError(f"stage_epochs must be >= 1, got {stage_epochs}")
        if not init_lr > 0:
            raise ValueError(f"init_lr must be > 0, got {init_lr}")
        super().__init__(student, teacher)
        self.stage_epochs, self.init_lr, self.hint_weight = (
            stage_epochs,
            init_lr,
            hint_weight,
        )
        self.student_stages = _stage_names(student, "student")
        self.teacher_stages = _stage_names(teacher, "teacher")
        if len(self.student_stages) != len(self.teacher_stages):
            raise ValueError(
                f"student stages {self.student_stages} and teacher stages "
                f"{self.teacher_stages} differ in number"
            )
        # The main training trains the classifier on the labels alone.
        self.teacher_layers = ()
        self.register_buffer(
            "stage_losses",
            torch.full((len(self.student_stages), stage_epochs), float("nan")),
        )
        # None: outside a schedule; k < S: stage phase k (prepare); S: classifier.
        self.phase: int | None = None

    @property
    def num_phases(self) -> int:
        return len(self.student_stages) + 1

    def setup(self, data) -> None:
        s = _shapes(self.student, self.student_stages, data)
        t = _shapes(self.teacher, self.teacher_stages, data)
        for ns, nt, a, b in zip(
            self.student_stages, self.teacher_stages, s, t, strict=True
        ):
            if a != b:
                raise ValueError(
                    f"SSKD mimics features without a connector: student {ns} "
                    f"{a} != teacher {nt} {b}"
                )

    def phase_modules(self) -> list[list[nn.Module]]:
        """Per phase, the student modules it trains: stem + stage 1, stage 2, ..., fc."""
        mods = dict(self.student.named_modules())
        groups = [[mods[n]] for n in self.student_stages]
        if "stem" in mods:
            groups[0].insert(0, mods["stem"])
        return [*groups, [mods["fc"]]]

    def _set_phase(self, phase: int | None) -> None:
        self.phase = phase
        self.train(self.training)

    def train(self, mode: bool = True) -> SSKD:
        super().train(mode)
        if mode and self.phase is not None:
            # Only the phase's own modules run in training mode.
            for k, group in enumerate(self.phase_modules()):
                if k != self.phase:
                    for m in group:
                        m.eval()
        return self

    def _student_run(self, x: Tensor, layers: Sequence[str] | None) -> dict:
        """The student's outputs of ``layers`` (None: its logits), cut before the phase.

        In phase ``k`` (not None) the input of the phase's first module is
        detached, so nothing before it gets a gradient.
        """
        handle = None
        if self.phase is not None and self.phase > 0:
            first = self.phase_modules()[self.phase][0]
            handle = first.register_forward_pre_hook(
                lambda _m, inp: tuple(a.detach() for a in inp)
            )
        try:
            if layers is None:
                return {"logits": self.student(x)}
            return forward_until(self.student, layers, x)
        finally:
            if handle is not None:
                handle.remove()

    def _teacher_stages(self, x: Tensor, layers: Sequence[str]) -> dict:
        with torch.no_grad():
            return forward_until(self.teacher, layers, x)

    def stage_terms(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage's objective on a batch: ``{"hint<k>": hint_weight * MSE(f_S^k, f_T^k)}``.

        Gradients flow through the whole student (outside a schedule).
        """
        f_s = forward_until(self.student, self.student_stages, x)
        f_t = self._teacher_stages(x, self.teacher_stages)
        return {
            f"hint{k + 1}": self.hint_weight * hint_loss(f_s[ns], f_t[nt])
            for k, (ns, nt) in enumerate(
                zip(self.student_stages, self.teacher_stages, strict=True)
            )
        }

    def stage_loss(self, k: int, x: Tensor) -> Tensor:
        """Phase ``k``'s objective, ``hint_weight * MSE(f_S^k, f_T^k)``, with the earlier stages cut off."""
        if self.phase != k:
            raise RuntimeError(f"stage_loss({k}) needs phase {k}, not {self.phase}")
        ns, nt = self.student_stages[k], self.teacher_stages[k]
        f_s = self._student_run(x, [ns])[ns]
        f_t = self._teacher_stages(x, [nt])[nt]
        return self.hint_weight * hint_loss(f_s, f_t)

    def prepare(self, loader, cfg=None) -> None:
        groups = self.phase_modules()
        try:
            for k in range(len(self.student_stages)):
                self.phase = k
                self.train()
                names = ", ".join(
                    n for n, m in self.student.named_children() if m in groups[k]
                )
                means = pretrain(
                    f"sskd stage {k + 1} ({names})",
                    loader,
                    [p for m in groups[k] for p in m.parameters()],
                    lambda x, k=k: self.stage_loss(k, x),
                    self.stage_epochs,
                    self.init_lr,
                    cosine=True,
                    cfg=cfg,
                )
                self.stage_losses[k] = torch.tensor(means)
        finally:
            self._set_phase(None)

    def on_epoch(self, epoch: int, epochs: int) -> None:
        # The whole main training is the classifier phase.
        self._set_phase(len(self.student_stages))

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if self.phase is not None and self.phase < len(self.student_stages):
            raise RuntimeError(
                f"SSKD is in stage phase {self.phase + 1}: its forward is the "
                "classifier's; use stage_loss"
            )
        logits_s = self._student_run(x, None)["logits"]
        return logits_s, {"ce": F.cross_entropy(logits_s, y)}


@register("ab", section="2.2.1", status="added")
class AB(Distiller):
    """Activation boundaries (Heo et al. 2019): the student's neurons switch on where the teacher's do.

    ``prepare`` is the authors' initialisation stage: for ``init_epochs``
    epochs the student (up to its last stage) and the connectors are trained
    on :func:`kdutils.losses.ab_loss` alone, a margin loss (``margin`` = the
    paper's 1) on the pre-ReLU outputs of the three stages. Connectors: none
    for equal shapes, else a conv + BN (the authors' 1x1 conv + BN, or the
    benchmark's strided variant when sizes differ). The main training is then
    ``ce_weight CE + kd_weight KD``: the authors' CIFAR script trains the
    initialised student with soft targets; here with ``kd``'s T=4,
    0.1/0.9 (RepDistiller's KD defaults). RepDistiller's benchmark uses CE alone (``ce_weight=1,
    kd_weight=0``) after 30 initialisation epochs, its ``init_epochs`` default.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        margin: float = 1.0,
        ab_weight: float = 1.0,
        ce_weight: float = 0.1,
        kd_weight: float = 0.9,
        T: float = 4.0,
        init_epochs: int = 30,
        init_lr: float = 0.05,
    ) -> None:
        check_weights(ab_weight=ab_weight, ce_weight=ce_weight, kd_weight=kd_weight)
        check_T(T)
        _check_init(init_epochs, init_lr)
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        super().__init__(student, teacher)
        self.margin, self.ab_weight = margin, ab_weight
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T
        self.init_epochs, self.init_lr = init_epochs, init_lr
        self.student_points = list(student.stage_layers(pre_relu=True))
        self.teacher_points = list(teacher.stage_layers(pre_relu=True))
        self.connectors = nn.ModuleList()

    def setup(self, data) -> None:
        s = _shapes(self.student, self.student_points, data)
        t = _shapes(self.teacher, self.teacher_points, data)
        self.connectors = nn.ModuleList(
            nn.Identity()
            if a == b
            else conv_regressor(
                a, b, relu=False, bias=False, names=(f"student {ns}", f"teacher {nt}")
            )
            for a, b, ns, nt in zip(
                s, t, self.student_points, self.teacher_points, strict=True
            )
        )

    def ab_term(self, x: Tensor) -> Tensor:
        """The weighted AB loss of a batch (the initialisation stage's objective)."""
        if len(self.connectors) != len(self.student_points):
            raise RuntimeError("call setup(data) first: it builds the connectors")
        with torch.no_grad():
            pre_t = forward_until(self.teacher, self.teacher_points, x)
        pre_s = forward_until(self.student, self.student_points, x)
        feats_s = [
            c(pre_s[n])
            for c, n in zip(self.connectors, self.student_points, strict=True)
        ]
        feats_t = [pre_t[n] for n in self.teacher_points]
        return self.ab_weight * ab_loss(feats_s, feats_t, self.margin)

    def prepare(self, loader, cfg=None) -> None:
        params = [*self.student.parameters(), *self.connectors.parameters()]
        self.train()
        pretrain(
            "ab initialisation",
            loader,
            params,
            self.ab_term,
            self.init_epochs,
            self.init_lr,
            cfg=cfg,
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s = self.student(x)
        logits_t = None
        if self.kd_weight > 0:
            t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
            logits_t = t["logits"]
        terms = _ce_kd_terms(
            logits_s, y, logits_t, self.ce_weight, self.kd_weight, self.T
        )
        return logits_s, terms


class Paraphraser(nn.Module):
    """FT's autoencoder on a teacher map: 3 convs down to ``k C`` channels, 3 transposed back.

    3x3 convolutions with bias and LeakyReLU(0.1), no batch norm, sizes kept
    (the authors' CIFAR module). ``encode`` gives the teacher factor.
    """

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1),
            act(),
            nn.Conv2d(c, k, 3, 1, 1),
            act(),
            nn.Conv2d(k, k, 3, 1, 1),
            act(),
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(k, k, 3, 1, 1),
            act(),
            nn.ConvTranspose2d(k, c, 3, 1, 1),
            act(),
            nn.ConvTranspose2d(c, c, 3, 1, 1),
            act(),
        )

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """The reconstruction of ``x``."""
        return self.decoder(self.encoder(x))


class Translator(nn.Module):
    """FT's student side: the paraphraser's encoder shape, from ``C_s`` to ``k C_t`` channels."""

    def __init__(self, channels: int, factor_channels: int) -> None:
        super().__init__()
        c, k = channels, factor_channels
        act = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1),
            act(),
            nn.Conv2d(c, k, 3, 1, 1),
            act(),
            nn.Conv2d(k, k, 3, 1, 1),
            act(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


@register("ft", section="2.2.1", status="added")
class FT(Distiller):
    """Factor transfer (Kim et al. 2018): match the teacher's paraphrased factors.

    ``prepare`` trains a paraphraser (an autoencoder with ``rate * C_t``
    factor channels, the paper's k = 0.5) to reconstruct the teacher's last
    feature map (L1, the authors' code; ``init_epochs=5``, ``init_lr=0.1`` as
    in their script), then freezes it. The student trains with ``ce_weight
    CE + ft_weight ft_loss(translator(f_S), paraphraser(f_T))``: the L1
    distance of the L2-normalised factors, ``ft_weight`` = the authors' beta
    of 500. Student and teacher maps must have the same spatial size.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        layer: str = "layer3",
        rate: float = 0.5,
        ft_weight: float = 500.0,
        ce_weight: float = 1.0,
        init_epochs: int = 5,
        init_lr: float = 0.1,
    ) -> None:
        check_weights(ft_weight=ft_weight, ce_weight=ce_weight)
        _check_init(init_epochs, init_lr)
        if not 0 < rate <= 1:
            raise ValueError(f"rate must be in (0, 1], got {rate}")
        super().__init__(student, teacher)
        self.layer, self.rate = layer, rate
        self.ft_weight, self.ce_weight = ft_weight, ce_weight
        self.init_epochs, self.init_lr = init_epochs, init_lr
        self.teacher_layers = (layer,)
        self.paraphraser: Paraphraser | None = None
        self.translator: Translator | None = None

    def setup(self, data) -> None:
        (s,) = _shapes(self.student, [self.layer], data)
        (t,) = _shapes(self.teacher, [self.layer], data)
        if s[1:] != t[1:]:
            raise ValueError(
                f"FT needs maps of one spatial size: student {self.layer} {s}, "
                f"teacher {self.layer} {t}"
            )
        k = max(1, int(round(t[0] * self.rate)))
        self.paraphraser = Paraphraser(t[0], k)
        self.translator = Translator(s[0], k)
        # Trained in ``prepare`` only, then a fixed part of the teacher's side.
        self.paraphraser.requires_grad_(False)

    def prepare(self, loader, cfg=None) -> None:
        if self.init_epochs == 0:
            return
        para, layer = self.paraphraser, self.layer

        def reconstruction(x: Tensor) -> Tensor:
            with torch.no_grad():
                f_t = forward_until(self.teacher, [layer], x)[layer]
            return F.l1_loss(para(f_t), f_t)

        para.requires_grad_(True)
        try:
            pretrain(
                "ft paraphraser",
                loader,
                para.parameters(),
                reconstruction,
                self.init_epochs,
                self.init_lr,
                cfg=cfg,
            )
        finally:
            para.requires_grad_(False)

    def factors(self, feat_s: Tensor, feat_t: Tensor) -> tuple[Tensor, Tensor]:
        """(student factor, teacher factor) for the two maps of ``layer``."""
        if self.translator is None:
            raise RuntimeError("call setup(data) first: it builds the paraphraser")
        with torch.no_grad():
            factor_t = self.paraphraser.encode(feat_t)
        return self.translator(feat_s), factor_t

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        with capture(self.student, [self.layer]) as feats:
            logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        factor_s, factor_t = self.factors(feats[self.layer], t[self.layer])
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "ft": self.ft_weight * ft_loss(factor_s, factor_t),
        }


class VIDRegressor(nn.Module):
    """VID's mean predictor (three 1x1 convs) and per-channel variance.

    ``var = softplus(log_scale) + eps``, initialised to ``init_var``; the
    middle width is the teacher's channel count (RepDistiller's ``VIDLoss``).
    """

    def __init__(
        self, c_s: int, c_t: int, init_var: float = 5.0, eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.mean = nn.Sequential(
            nn.Conv2d(c_s, c_t, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False),
            nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False),
        )
        # softplus^-1(init_var - eps), so that var starts at init_var.
        start = torch.log(torch.expm1(torch.tensor(init_var - eps)))
        self.log_scale = nn.Parameter(start * torch.ones(c_t))
        self.eps = eps

    def var(self) -> Tensor:
        return F.softplus(self.log_scale) + self.eps

    def forward(self, feat_s: Tensor) -> Tensor:
        return self.mean(feat_s)


def _pool_to_smaller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the spatially larger of two maps to the other's size."""
    if a.shape[2:] == b.shape[2:]:
        return a, b
    if a.shape[2] > b.shape[2]:
        return F.adaptive_avg_pool2d(a, b.shape[2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[2:])


@register("vid", section="2.2.1", status="added")
class VID(Distiller):
    """Variational information distillation (Ahn et al. 2019): maximise a likelihood of the teacher's features.

    For each stage output (post-ReLU, ``layer1..3`` as in RepDistiller), a
    regressor predicts the mean of a Gaussian over the teacher's map from the
    student's, with a learned per-channel variance;
    ``L = ce_weight CE + vid_weight sum_l NLL_l`` (:func:`kdutils.losses.vid_loss`).
    The larger map of a pair is average-pooled to the smaller. Defaults are
    RepDistiller's: ``-r 1 -a 0 -b 1``, initial variance 5.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        vid_weight: float = 1.0,
        ce_weight: float = 1.0,
        init_var: float = 5.0,
    ) -> None:
        check_weights(vid_weight=vid_weight, ce_weight=ce_weight)
        if init_var <= 0:
            raise ValueError(f"init_var must be > 0, got {init_var}")
        super().__init__(student, teacher)
        self.vid_weight, self.ce_weight, self.init_var = vid_weight, ce_weight, init_var
        self.student_layers = list(student.stage_layers())
        self.teacher_layers = tuple(teacher.stage_layers())
        self.regressors = nn.ModuleList()

    def setup(self, data) -> None:
        s = _shapes(self.student, self.student_layers, data)
        t = _shapes(self.teacher, self.teacher_layers, data)
        self.regressors = nn.ModuleList(
            VIDRegressor(a[0], b[0], self.init_var) for a, b in zip(s, t, strict=True)
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if len(self.regressors) != len(self.student_layers):
            raise RuntimeError("call setup(data) first: it builds the regressors")
        with capture(self.student, self.student_layers) as feats:
            logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        nll = logits_s.new_zeros(())
        for reg, ns, nt in zip(
            self.regressors, self.student_layers, self.teacher_layers, strict=True
        ):
            f_s, f_t = _pool_to_smaller(feats[ns], t[nt])
            nll = nll + vid_loss(reg(f_s), f_t, reg.var())
        return logits_s, {
            "ce": self.ce_weight * F.cross_entropy(logits_s, y),
            "vid": self.vid_weight * nll,
        }
