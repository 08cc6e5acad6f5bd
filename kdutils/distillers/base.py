"""The Distiller interface and the method registry.

A Distiller wraps a student and its teacher(s). ``forward(x, y)`` returns the
student's logits and a dict of named, already-weighted loss terms; the trainer
sums the terms and steps. Teachers are frozen and stay in eval mode whatever
``train()`` is called with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["Distiller", "register", "get_method", "METHODS", "check_weights"]

METHODS: dict[str, type[Distiller]] = {}


def register(name: str, section: str) -> Callable[[type[Distiller]], type[Distiller]]:
    """Class decorator: ``@register("kd", section="1")`` adds a method to the registry."""
    if name != name.lower():
        raise ValueError(f"registry names are lowercase, got {name!r}")

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        cls.method_name, cls.survey_section = name, section
        METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> type[Distiller]:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from: {', '.join(METHODS)}")
    return METHODS[name]


def check_weights(**weights: float) -> None:
    """Raise ``ValueError`` for any negative loss weight."""
    for k, v in weights.items():
        if v < 0:
            raise ValueError(f"{k} must be >= 0, got {v}")


class Distiller(nn.Module):
    """Base class. Subclasses set ``needs_teacher`` and implement ``forward``.

    ``logits_only`` marks methods that use nothing of the teacher but its
    logits: for those, the trainer may precompute the teacher's logits once
    (when there is no augmentation) and pass them as ``teacher_logits``.
    """

    method_name: str = ""
    survey_section: str = ""
    needs_teacher: bool = True
    logits_only: bool = False

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None) -> None:
        super().__init__()
        if self.needs_teacher and teacher is None:
            raise ValueError(f"{type(self).__name__} needs a teacher")
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def student_modules(self) -> nn.Module:
        """What gets deployed and evaluated: the student alone."""
        return self.student

    @torch.no_grad()
    def teacher_logits(self, x: Tensor) -> Tensor:
        return self.teacher(x)

    def forward(
        self, x: Tensor, y: Tensor, teacher_logits: Tensor | None = None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.hparams().items())

    def hparams(self) -> dict:
        return {}
