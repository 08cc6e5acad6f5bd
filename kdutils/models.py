"""CIFAR ResNets (He et al. 2016, the 6n+2 family) and feature capture.

The family used throughout the KD literature: a 3x3 stem, three stages of
basic blocks (16/32/64 channels, or x4 wider), global average pooling and a
linear classifier. Downsampling shortcuts are a 1x1 convolution plus batch
norm. Input size and channel count are free: pooling is adaptive.

Models stay plain classifiers, ``model(x) -> logits``. Intermediate features
come through :func:`capture`, a context manager of forward hooks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import DATASETS

__all__ = [
    "ResNet",
    "MODELS",
    "create_model",
    "build_model",
    "check_model_name",
    "model_name",
    "capture",
    "num_params",
]


class PointwiseDownsample(nn.Conv2d):
    """The downsampling shortcut's strided 1x1 convolution, safe on CPUs.

    With fewer than 16 input channels the strided convolution is computed as
    what it is, a stride-1 1x1 convolution of every ``stride``-th pixel: the
    same products and sums, the same parameters. Why: in torch 2.14.1
    (oneDNN 3.12) the backward pass of a strided 1x1 convolution in
    channels_last with few input channels crashes (SIGSEGV, SIGABRT "double
    free or corruption") or spins:

    - on a CPU limited to AVX2 (no AVX-512), under 8 input channels, with one
      thread (it spins with two);
    - on an AVX-512 AMD EPYC (session 19), under 16 input channels, with two
      threads and a batch that is not a multiple of the blocking (7 or 39
      images: a data set's last batch), also with every output width tried.

    A stride-1 1x1 convolution, 3x3 convolutions, and 16 or more input
    channels are fine on both (``bench/avx2_pointwise.py`` reproduces it).
    Only the narrow networks of channel planting (chapter 11) have such a
    shortcut; every other model (shortcuts of 16 channels or more) takes the
    plain path.
    """

    def forward(self, x: Tensor) -> Tensor:
        if self.in_channels >= 16 or self.stride == (1, 1):
            return super().forward(x)
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection.

    ``preact`` is an identity that marks the sum before the last ReLU, so that
    methods which distil pre-activation features (AB, OFD-style hints) can
    capture it; the ReLU after it is not in-place for the same reason.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.preact = nn.Identity()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                PointwiseDownsample(in_planes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(self.preact(out + self.shortcut(x)))


class ResNet(nn.Module):
    """CIFAR ResNet of depth ``6n+2``.

    Stages, for :func:`capture`: ``stem`` (B, w0, H, W), ``layer1`` (B, w1, H, W),
    ``layer2`` (B, w2, H/2, W/2), ``layer3`` (B, w3, H/4, W/4), ``pool`` (B, w3).
    :meth:`stage_layers` names the three stage outputs, after or before their
    last ReLU.
    """

    feature_layers = ("stem", "layer1", "layer2", "layer3", "pool")

    def __init__(
        self,
        depth: int,
        widths: Sequence[int] = (16, 16, 32, 64),
        num_classes: int = 10,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.depth, self.widths = depth, tuple(widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        layers, in_planes = [], widths[0]
        for i, planes in enumerate(widths[1:]):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if getattr(m, "weight", None) is not None and m.weight.is_meta:
                continue  # shapes only (a config's check): no values to draw
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stage_layers(self, pre_relu: bool = False) -> list[str]:
        """``["layer1", "layer2", "layer3"]``, or with ``pre_relu`` the
        ``preact`` point of each stage's last block (e.g. ``"layer3.2.preact"``)."""
        if not pre_relu:
            return ["layer1", "layer2", "layer3"]
        n = len(self.layer1)
        return [f"layer{i}.{n - 1}.preact" for i in (1, 2, 3)]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x))


_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
MODELS: dict[str, dict] = {f"resnet{d}": dict(depth=d) for d in _DEPTHS}
MODELS.update(
    {f"resnet{d}x4": dict(depth=d, widths=(32, 64, 128, 256)) for d in (8, 32)}
)


# Any depth and widths by name, for searches and channel growth:
# "resnet14_w8-8-16-32" is a ResNet14 whose stem and stages have 8, 8, 16, 32
# channels.
_CUSTOM = re.compile(r"resnet(\d+)_w(\d+)-(\d+)-(\d+)-(\d+)")


def _spec(name: str) -> dict | None:
    if name in MODELS:
        return MODELS[name]
    m = _CUSTOM.fullmatch(name)
    if m is None:
        return None
    depth, *widths = (int(g) for g in m.groups())
    if (depth - 2) % 6 != 0 or depth < 8 or min(widths) < 1:
        return None
    return dict(depth=depth, widths=tuple(widths))


def check_model_name(name: str) -> None:
    if _spec(name) is None:
        raise ValueError(
            f"unknown model {name!r}; choose from: {', '.join(MODELS)}, or any "
            "'resnet<6n+2>_w<stem>-<stage1>-<stage2>-<stage3>' (e.g. resnet14_w8-8-16-32)"
        )


def model_name(depth: int, widths: Sequence[int]) -> str:
    """The name :func:`create_model` accepts for a depth and four widths."""
    name = f"resnet{depth}_w{'-'.join(str(int(w)) for w in widths)}"
    check_model_name(name)
    return name


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """Build a model by name, e.g. ``create_model("resnet20", 10, 3)``."""
    check_model_name(name)
    return ResNet(**_spec(name), num_classes=num_classes, in_channels=in_channels)


def model_depth(name: str) -> int:
    return int(re.match(r"resnet(\d+)", name).group(1))


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def capture(
    model: nn.Module, names: Sequence[str] | None = None
) -> Iterator[dict[str, Tensor]]:
    """Record the outputs of named submodules during forward passes.

    >>> with capture(model, ["layer1", "layer3"]) as feats:
    ...     logits = model(x)
    >>> feats["layer3"].shape   # (B, 64, H/4, W/4)

    The dict is refilled on every forward inside the block.
    """
    # None: every feature layer the model lists; an empty list: none.
    names = list(getattr(model, "feature_layers", ()) if names is None else names)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        raise ValueError(f"{type(model).__name__} has no layer(s) {missing}")
    feats: dict[str, Tensor] = {}
    handles = []
    for n in names:

        def hook(_m, _inp, out, n=n):
            feats[n] = out

        handles.append(modules[n].register_forward_hook(hook))
    try:
        yield feats
    finally:
        for h in handles:
            h.remove()


def param_check() -> dict[str, int]:
    """Parameter counts at 3 channels, 10 classes (for the docs and tests)."""
    with torch.device("meta"):
        return {name: num_params(create_model(name)) for name in MODELS}


def build_model(name: str, dataset: str) -> nn.Module:
    """``create_model`` with the classes and input channels of ``dataset``."""
    info = DATASETS[dataset]
    return create_model(name, num_classes=info.classes, in_channels=info.channels)
