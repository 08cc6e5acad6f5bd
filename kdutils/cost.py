"""What a model costs: parameters, multiply-accumulates and measured latency.

Multiply-accumulates (MACs) come from PyTorch's own operator-level counter,
:class:`torch.utils.flop_counter.FlopCounterMode`, which counts every
convolution and matrix product of a forward pass (2 FLOPs per MAC); batch norm,
ReLU and pooling are not counted, as is usual in the compression literature.
Latency is measured, not estimated: the median wall time of repeated forward
passes on this machine, so it varies between machines and runs.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import num_params

__all__ = ["count_macs", "measure_latency", "model_cost"]


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one input of ``input_shape``.

    ``input_shape`` is ``(C, H, W)``; the count is for a batch of one.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() // 2


@torch.inference_mode()
def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    repeats: int = 30,
    warmup: int = 5,
) -> dict[str, float]:
    """Median and interquartile range (ms) of a forward pass of ``batch_size``.

    Runs in eval mode, in inference mode, on the model's device; on a GPU each
    pass is synchronised. The numbers depend on the machine and its load.
    """
    if repeats < 3:
        raise ValueError(f"repeats must be >= 3, got {repeats}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.randn(batch_size, *input_shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        model(x)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        sync()
        times.append(1000 * (time.perf_counter() - t0))
    model.train(was_training)
    q1, _, q3 = statistics.quantiles(times, n=4)
    return {
        "latency_ms": statistics.median(times),
        "latency_iqr_ms": q3 - q1,
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
    }


def model_cost(
    model: nn.Module, input_shape: tuple[int, ...], latency: bool = True, **kw
) -> dict[str, float]:
    """Parameters, MACs and (optionally) measured latency of ``model``."""
    out: dict[str, float] = {
        "params": num_params(model),
        "macs": count_macs(model, input_shape),
    }
    if latency:
        out.update(measure_latency(model, input_shape, **kw))
    return out
