"""Feature-map plumbing shared by the feature families (survey sections 2.2.1, 2.2.2).

What the distillers of :mod:`~kdutils.distillers.fitting`,
:mod:`~kdutils.distillers.fitting_added`,
:mod:`~kdutils.distillers.extracting` and
:mod:`~kdutils.distillers.extracting_learned` share: reading a network's
intermediate maps (:func:`forward_until` stops the forward pass at the last
requested layer; :func:`student_features` and :func:`teacher_features` give
the maps a training step reads), sizing connectors from the maps' shapes on
one training image (:func:`layer_shapes`, :func:`paired_shapes`), the FitNet
regressor (:func:`conv_regressor`), the cross-entropy (+ KD) terms and the
check of a pre-training stage's settings. No method is registered here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import normalize
from ..losses import kd_loss
from ..models import capture
from .base import Distiller, feature_shapes

__all__ = [
    "forward_until",
    "conv_regressor",
    "layer_shapes",
    "paired_shapes",
    "student_features",
    "teacher_features",
    "ce_kd_terms",
    "check_init",
]

Shape = tuple[int, ...]


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


def layer_shapes(
    model: nn.Module, layers: Sequence[str], data
) -> list[tuple[int, ...]]:
    """Per-sample shapes of ``model``'s ``layers`` on one training image (on the CPU)."""
    shapes = feature_shapes(model, layers, _sample(data))
    return [shapes[n] for n in layers]


def paired_shapes(
    distiller: Distiller, data, layers_s: Sequence[str], layers_t: Sequence[str]
) -> tuple[list[Shape], list[Shape]]:
    """Per-sample shapes of the student's and the teacher's layers on one image."""
    x = normalize(data.images[:1], data.info)
    dev_s = next(distiller.student.parameters()).device
    dev_t = next(distiller.teacher.parameters()).device
    s = feature_shapes(distiller.student, layers_s, x.to(dev_s))
    t = feature_shapes(distiller.teacher, layers_t, x.to(dev_t))
    return [s[k] for k in layers_s], [t[k] for k in layers_t]


def student_features(
    distiller: Distiller, x: Tensor, layers: Sequence[str]
) -> tuple[Tensor, list[Tensor]]:
    """The student's logits and the outputs of ``layers`` for ``x``."""
    with capture(distiller.student, layers) as feats:
        logits = distiller.student(x)
    return logits, [feats[k] for k in layers]


def teacher_features(distiller: Distiller, x: Tensor, teacher_out) -> dict:
    """``teacher_out`` (the trainer's cached teacher outputs), else the teacher's on ``x``."""
    return teacher_out if teacher_out is not None else distiller.teacher_outputs(x)


def ce_kd_terms(
    logits_s: Tensor,
    y: Tensor,
    logits_t: Tensor | None,
    ce_weight: float,
    kd_weight: float,
    T: float,
) -> dict[str, Tensor]:
    """``{"ce": ce_weight CE}``, plus ``"kd": kd_weight KD(T)`` when ``kd_weight > 0``."""
    terms = {"ce": ce_weight * F.cross_entropy(logits_s, y)}
    if kd_weight > 0:
        terms["kd"] = kd_weight * kd_loss(logits_s, logits_t, T)
    return terms


def check_init(init_epochs: int, init_lr: float) -> None:
    """The settings of a stage before the main training (FitNet, AB, FT)."""
    if init_epochs < 0:
        raise ValueError(f"init_epochs must be >= 0, got {init_epochs}")
    if init_lr <= 0:
        raise ValueError(f"init_lr must be > 0, got {init_lr}")
