"""Pruning a trained network and recovering it with few-sample KD: survey section 3.1.

Model surgery on residual networks, and the pipeline that uses it:

- :func:`l1_filter_prune` removes the weakest filters of each block's first
  convolution (Li et al. 2017); :func:`insert_pointwise` adds a 1x1
  convolution (:class:`ConvPointwise`) after each convolution of a pruned
  block, and :func:`absorb_pointwise` merges them back.
- :func:`fskd_least_squares` fits the 1x1 convolutions to the unpruned
  network's features by least squares, :func:`recover` by SGD (KD or labels).
- :func:`prune_and_recover` prunes a trained network, inserts 1x1
  convolutions and recovers it from a few hundred samples with the unpruned
  network as teacher (few-sample KD, Li et al. 2020b).

The pruned network has no name and is trained with :func:`kdutils.fit`, not
cached by :func:`kdutils.run`.

Imports: ``kdutils`` modules below ``kdutils.pipelines``, and
``.candidates`` (for an input shape) and ``.registry`` of this package.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .. import data as kdata
from ..config import Config
from ..cost import count_macs
from ..distillers import build
from ..inference import evaluate, predict_logits
from ..loop import fit, load_split, seed_everything
from ..models import num_params
from .candidates import _input_shape
from .registry import pipeline

__all__ = [
    "ConvPointwise",
    "l1_filter_prune",
    "insert_pointwise",
    "absorb_pointwise",
    "fskd_least_squares",
    "recover",
    "prune_and_recover",
]


class ConvPointwise(nn.Module):
    """A convolution followed by a 1x1 convolution ``pw`` (identity at first).

    Few-sample KD (Li et al. 2020b) fits ``pw`` so that the output matches the
    teacher's at ``target_channels``; with nothing between them, the two
    merge into one convolution of the original size (:func:`absorb_pointwise`).
    ``(B, C_in, H, W) -> conv -> (B, C, H', W') -> pw -> (B, C, H', W')``.
    """

    def __init__(self, conv: nn.Conv2d, target_channels: Tensor) -> None:
        super().__init__()
        if conv.bias is not None or conv.groups != 1:
            raise ValueError("ConvPointwise wraps a convolution without bias or groups")
        c = conv.out_channels
        if target_channels.shape != (c,):
            raise ValueError(
                f"target_channels must have one index per output channel ({c}), "
                f"got shape {tuple(target_channels.shape)}"
            )
        self.conv = conv
        like = dict(device=conv.weight.device, dtype=conv.weight.dtype)
        self.pw = nn.Conv2d(c, c, 1, bias=False, **like)
        with torch.no_grad():
            self.pw.weight.copy_(torch.eye(c, **like).view(c, c, 1, 1))
        self.register_buffer("target_channels", target_channels.clone().long())

    def forward(self, x: Tensor) -> Tensor:
        return self.pw(self.conv(x))

    def merged(self) -> nn.Conv2d:
        """One convolution equal to ``pw(conv(x))``: ``W'[o] = sum_c Q[o, c] W[c]``."""
        conv = self.conv
        out = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=False,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        q = self.pw.weight.detach()[:, :, 0, 0]  # (C, C)
        with torch.no_grad():
            out.weight.copy_(torch.einsum("oc,cikl->oikl", q, conv.weight.detach()))
        return out


def _blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (n, m)
        for n, m in model.named_modules()
        if hasattr(m, "conv1") and hasattr(m, "conv2") and hasattr(m, "bn1")
    ]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


@torch.no_grad()
def l1_filter_prune(
    model: nn.Module, ratio: float, blocks: Sequence[str] | None = None
) -> nn.Module:
    """A copy of ``model`` with the weakest filters of each block's first conv removed.

    L1-norm filter pruning (Li et al. 2017, :cite:`li2017pruning`), as that
    paper prunes ResNets: in each residual block the first convolution keeps
    the ``ceil((1 - ratio) * C)`` filters of largest L1 norm ``sum |W[c]|``;
    its batch norm and the second convolution's input channels follow. Block
    outputs keep their width, so the residual structure is unchanged.
    ``blocks`` names the blocks to prune (default: all). The copy records the
    kept filters in ``pruned_channels`` (``{"layer1.0.conv1": indices}``).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    pruned = copy.deepcopy(model)
    available = dict(_blocks(pruned))
    if not available:
        raise ValueError(
            f"{type(model).__name__} has no residual blocks (conv1, bn1, conv2)"
        )
    names = list(available) if blocks is None else list(blocks)
    missing = [b for b in names if b not in available]
    if missing:
        raise ValueError(
            f"no residual block(s) {missing}; blocks are {list(available)}"
        )
    kept: dict[str, Tensor] = {}
    for name in names:
        block = available[name]
        conv1, bn1, conv2 = block.conv1, block.bn1, block.conv2
        key = f"{name}.conv1" if name else "conv1"
        if key in getattr(model, "pruned_channels", {}) or not isinstance(
            conv1, nn.Conv2d
        ):
            raise ValueError(f"block {name} is already pruned")
        c = conv1.out_channels
        keep_n = max(1, c - int(ratio * c))
        norms = conv1.weight.abs().sum(dim=(1, 2, 3))  # (C,) L1 norm per filter
        idx = norms.topk(keep_n).indices.sort().values
        like = dict(device=conv1.weight.device, dtype=conv1.weight.dtype)
        new1 = nn.Conv2d(
            conv1.in_channels,
            keep_n,
            conv1.kernel_size,
            conv1.stride,
            conv1.padding,
            bias=False,
            **like,
        )
        new1.weight.copy_(conv1.weight[idx])
        newbn = nn.BatchNorm2d(keep_n, eps=bn1.eps, momentum=bn1.momentum, **like)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            getattr(newbn, attr).copy_(getattr(bn1, attr)[idx])
        newbn.num_batches_tracked.copy_(bn1.num_batches_tracked)
        new2 = nn.Conv2d(
            keep_n,
            conv2.out_channels,
            conv2.kernel_size,
            conv2.stride,
            conv2.padding,
            bias=False,
            **like,
        )
        new2.weight.copy_(conv2.weight[:, idx])
        block.conv1, block.bn1, block.conv2 = new1, newbn, new2
        kept[key] = idx.cpu()
    pruned.pruned_channels = {**getattr(model, "pruned_channels", {}), **kept}
    pruned.train(model.training)
    return pruned


def insert_pointwise(model: nn.Module) -> nn.Module:
    """A copy of a pruned ``model`` with a 1x1 conv after each conv of a pruned block.

    As few-sample KD does after pruning (Li et al. 2020b): the first
    convolution's 1x1 targets the teacher's kept filters, the second's (whose
    input lost channels) all of the teacher's. Each starts as the identity,
    so the copy computes exactly what ``model`` does.
    """
    kept = getattr(model, "pruned_channels", None)
    if not kept:
        raise ValueError("model has no pruned_channels: prune it with l1_filter_prune")
    out = copy.deepcopy(model)
    for conv1_name, idx in kept.items():
        block_name = conv1_name.rpartition(".")[0]
        block = out.get_submodule(block_name) if block_name else out
        if isinstance(block.conv1, ConvPointwise):
            raise ValueError(f"{block_name} already has 1x1 convolutions")
        block.conv1 = ConvPointwise(block.conv1, idx)
        c2 = block.conv2.out_channels
        block.conv2 = ConvPointwise(block.conv2, torch.arange(c2))
    return out


def absorb_pointwise(model: nn.Module) -> nn.Module:
    """A copy with every :class:`ConvPointwise` merged into one convolution."""
    out = copy.deepcopy(model)
    names = [n for n, m in out.named_modules() if isinstance(m, ConvPointwise)]
    for name in names:
        _set_submodule(out, name, out.get_submodule(name).merged())
    return out


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted layer has run."""


def _output(model: nn.Module, layer: str, x: Tensor, pre: bool = False) -> Tensor:
    """The output of ``layer`` (its input with ``pre``) for ``x``; the forward
    pass stops there."""
    got: list[Tensor] = []

    def hook(_m, inp, out=None):
        got.append(inp[0] if pre else out)
        raise _Stop

    sub = model.get_submodule(layer)
    handle = (
        sub.register_forward_pre_hook(hook) if pre else sub.register_forward_hook(hook)
    )
    try:
        model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return got[0]


def _batched(fn, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.no_grad()
def fskd_least_squares(
    student: nn.Module,
    teacher: nn.Module,
    data: kdata.TensorData,
    batch_size: int = 250,
) -> nn.Module:
    """Fit every 1x1 conv of ``student`` by least squares to ``teacher``'s features.

    Few-sample KD (Li et al. 2020b, :cite:`li2020few`; survey section 3.1),
    as the authors' code does it: for each :class:`ConvPointwise` in forward
    order, with the earlier ones already fitted, collect the student's conv
    output ``X`` and the teacher's output of the same conv at
    ``target_channels`` ``Y`` (both ``(N * H * W, C)`` over the ``N`` images of
    ``data``; no labels are used) and set ``Q = argmin ||X Q^T - Y||^2``
    (float64, through the normal equations). Both networks run in eval mode.
    The residual blocks must run one after another (as in kdutils' ResNets):
    each block's input is kept for all images, so every layer costs a pass
    through its own block only. Returns a fitted copy; merge it with
    :func:`absorb_pointwise`.
    """
    out = copy.deepcopy(student).eval()
    teacher = teacher.eval()
    dev = next(out.parameters()).device
    x = kdata.normalize(data.images, data.info).to(dev)
    if not any(isinstance(m, ConvPointwise) for m in out.modules()):
        raise ValueError("student has no 1x1 convolutions: call insert_pointwise first")
    blocks = _blocks(out)
    first = blocks[0][0]
    # (N, C, H, W) inputs of the current block, in the student and the teacher
    h_s = _batched(lambda b: _output(out, first, b, pre=True), x, batch_size)
    h_t = _batched(lambda b: _output(teacher, first, b, pre=True), x, batch_size)
    for name, block in blocks:
        t_block = teacher.get_submodule(name)
        for sub, m in block.named_modules():
            if not isinstance(m, ConvPointwise):
                continue
            c = m.pw.out_channels
            # Normal equations, accumulated in float64: (X^T X) Q^T = X^T Y,
            # the least-squares solution when X has full column rank.
            xtx = torch.zeros(c, c, dtype=torch.float64, device=dev)
            xty = torch.zeros(c, c, dtype=torch.float64, device=dev)
            for i in range(0, len(x), batch_size):
                f_s = _output(block, f"{sub}.conv", h_s[i : i + batch_size])
                f_t = _output(t_block, sub, h_t[i : i + batch_size])
                xs = f_s.permute(0, 2, 3, 1).reshape(-1, c).double()  # (b*H*W, C)
                yt = f_t[:, m.target_channels].permute(0, 2, 3, 1).reshape(-1, c)
                xtx += xs.T @ xs
                xty += xs.T @ yt.double()
            q_t = torch.linalg.lstsq(xtx.cpu(), xty.cpu(), driver="gelsd").solution
            m.pw.weight.copy_(q_t.T.reshape(c, c, 1, 1).to(m.pw.weight))
        h_s = _batched(block, h_s, batch_size)
        h_t = _batched(t_block, h_t, batch_size)
    return out


def recover(
    student: nn.Module,
    teacher: nn.Module | None,
    data: kdata.TensorData,
    test: kdata.TensorData,
    cfg: Config,
    method: str = "kd",
    trainable: str = "pointwise",
    epochs: int = 30,
    lr: float = 0.01,
    batch_size: int = 50,
    **method_args: Any,
) -> tuple[nn.Module, list[dict]]:
    """Fine-tune a pruned ``student`` on the few samples ``data`` with SGD.

    ``method="kd"`` distils from ``teacher`` (the unpruned network; defaults
    ``ce_weight=0, kd_weight=1``: no labels, as few-sample KD assumes);
    ``"ce"`` uses the labels alone. ``trainable="pointwise"`` trains only the
    1x1 convolutions (the parameters few-sample KD fits); ``"all"`` trains
    every parameter. Everything else of the recipe (momentum, weight decay,
    schedule, seed) comes from ``cfg``. Returns a trained copy and its history.
    """
    if trainable not in ("pointwise", "all"):
        raise ValueError(f"trainable must be 'pointwise' or 'all', got {trainable!r}")
    model = copy.deepcopy(student)
    pw = [m.pw for m in model.modules() if isinstance(m, ConvPointwise)]
    if trainable == "pointwise" and not pw:
        raise ValueError(
            "trainable='pointwise' needs 1x1 convolutions: call insert_pointwise"
        )
    for p in model.parameters():
        p.requires_grad_(trainable == "all")
    for m in pw:
        m.weight.requires_grad_(True)
    if method == "kd":
        method_args = {"ce_weight": 0.0, "kd_weight": 1.0, **method_args}
    t = None if teacher is None else copy.deepcopy(teacher).eval()
    seed_everything(cfg.seed)
    distiller = build(method, model, t, **method_args)
    dev = next(model.parameters()).device
    t_out = None
    if distiller.teacher is not None:
        t_out = {"logits": predict_logits(distiller.teacher, data, device=dev)}
    loader = kdata.Loader(data, batch_size, shuffle=True, seed=cfg.seed, device=dev)
    rcfg = cfg.replace(
        epochs=epochs, lr=lr, batch_size=batch_size, eval_every=epochs, augment=False
    )
    history = fit(distiller, loader, test, rcfg, teacher_out=t_out, progress=False)
    for p in model.parameters():
        p.requires_grad_(True)
    return model.eval(), history


def _stage(name: str, model: nn.Module, test, shape) -> dict[str, Any]:
    return {
        "stage": name,
        "acc": 100 * evaluate(model, test)["acc"],
        "params": num_params(model),
        "macs": count_macs(model, shape),
    }


@pipeline("prune_and_recover", section="3.1")
def prune_and_recover(
    model: nn.Module,
    cfg: Config,
    ratio: float = 0.5,
    n_samples: int = 500,
    epochs: int = 30,
    lr: float = 0.01,
    trainable: str = "pointwise",
    sample_seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, nn.Module]]:
    """Prune a trained network and recover it from ``n_samples`` images.

    Few-sample KD after pruning (Li et al. 2020b, :cite:`li2020few`; survey
    section 3.1). ``model`` is trained on ``cfg``'s data; it is pruned with
    :func:`l1_filter_prune` at ``ratio``, given 1x1 convolutions
    (:func:`insert_pointwise`), and the 1x1 convolutions are fitted on
    ``n_samples`` training images (a fixed subset drawn with ``sample_seed``)
    in three ways, each from the same pruned start: the paper's least squares
    on features (no labels, no SGD), SGD on the unpruned network's soft
    outputs (KD, no labels), and SGD on the labels alone (CE). Every fitted
    network is merged back (:func:`absorb_pointwise`), so it costs exactly
    what the pruned network costs.

    Returns rows ``{"stage", "acc" (%), "params", "macs"}`` in the order
    unpruned, pruned, least squares, KD, labels only, and the models by stage.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    train, test = load_split(cfg, True), load_split(cfg, False)
    if n_samples > len(train):
        raise ValueError(
            f"n_samples={n_samples} but the training set has {len(train)} images"
        )
    few = train.subset(n_samples, seed=sample_seed)
    shape = _input_shape(cfg.dataset)
    teacher = copy.deepcopy(model).eval()
    pruned = l1_filter_prune(teacher, ratio).eval()
    with_pw = insert_pointwise(pruned)
    models = {
        "unpruned": teacher,
        "pruned": pruned,
        "least squares (FSKD)": absorb_pointwise(
            fskd_least_squares(with_pw, teacher, few)
        ),
    }
    for stage, method, t in (("KD", "kd", teacher), ("labels only", "ce", None)):
        fitted, _ = recover(
            with_pw, t, few, test, cfg, method, trainable, epochs=epochs, lr=lr
        )
        models[stage] = absorb_pointwise(fitted)
    rows = [_stage(k, m, test, shape) for k, m in models.items()]
    return rows, models
