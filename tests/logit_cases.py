"""Fixed test cases shared by the logit-method tests (section 2.1 and the
methods after the survey): random logits and labels from a seed, a float64
log-softmax for the independent computations, and a small student, teacher
and image batch for the distillers."""

from __future__ import annotations

import numpy as np
import torch

import kdutils as kd

BATCH, CLASSES, CHANNELS, SIZE = 8, 10, 3, 16


def log_softmax_np(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def logits(seed: int, b: int = 7, k: int = 5, scale: float = 3.0, n: int = 3):
    """``n`` float64 ``(b, k)`` logit tensors from one generator (so the first
    two are the same whatever ``n``)."""
    g = torch.Generator().manual_seed(seed)
    return tuple(
        scale * torch.randn(b, k, generator=g, dtype=torch.float64) for _ in range(n)
    )


def labels(seed: int, b: int = 7, k: int = 5) -> torch.Tensor:
    return torch.randint(0, k, (b,), generator=torch.Generator().manual_seed(seed))


def to_np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def models(seed: int = 0):
    """A ResNet8 student and a ResNet14 teacher for ``CLASSES`` classes."""
    torch.manual_seed(seed)
    student = kd.create_model("resnet8", num_classes=CLASSES, in_channels=CHANNELS)
    teacher = kd.create_model("resnet14", num_classes=CLASSES, in_channels=CHANNELS)
    return student, teacher


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return x, y
