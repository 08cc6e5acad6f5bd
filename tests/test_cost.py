"""Model cost: MACs against hand counts, latency's form (never its value)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import kdutils as kd
from kdutils.cost import count_macs, measure_latency, model_cost


def test_macs_of_a_convolution_and_a_linear_layer_match_the_formula():
    # conv: C_out * C_in * k * k * H_out * W_out; linear: in * out.
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten())
    assert count_macs(conv, (3, 10, 10)) == 8 * 3 * 3 * 3 * 10 * 10
    strided = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    assert count_macs(strided, (4, 9, 9)) == 6 * 4 * 9 * 5 * 5
    linear = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    assert count_macs(linear, (3, 2, 2)) == 12 * 5


def _resnet_macs_by_hand(depth: int, hw: int, cin: int = 3, k: int = 10) -> int:
    """Every 3x3 and 1x1 convolution of a CIFAR ResNet, plus the classifier."""
    n = (depth - 2) // 6
    macs = 16 * cin * 9 * hw * hw  # stem
    c_in, size = 16, hw
    for stage, c in enumerate((16, 32, 64)):
        for j in range(n):
            stride = 2 if stage > 0 and j == 0 else 1
            out = -(-size // stride)
            macs += c * c_in * 9 * out * out + c * c * 9 * out * out
            if stride != 1 or c_in != c:
                macs += c * c_in * out * out  # 1x1 shortcut
            c_in, size = c, out
    return macs + 64 * k


@pytest.mark.parametrize("name,depth", [("resnet8", 8), ("resnet20", 20)])
def test_resnet_macs_match_a_count_by_hand(name, depth):
    model = kd.create_model(name)
    assert count_macs(model, (3, 32, 32)) == _resnet_macs_by_hand(depth, 32)


def test_resnet20_macs_are_the_usual_41_million():
    macs = count_macs(kd.create_model("resnet20"), (3, 32, 32))
    assert 40e6 < macs < 42e6


def test_latency_reports_median_and_spread_and_restores_the_mode():
    model = kd.create_model("resnet8", in_channels=1).train()
    out = measure_latency(model, (1, 28, 28), repeats=5, warmup=1)
    assert out["latency_ms"] > 0 and out["latency_iqr_ms"] >= 0
    assert out["batch_size"] == 1 and model.training
    with pytest.raises(ValueError, match="repeats"):
        measure_latency(model, (1, 28, 28), repeats=2)


def test_model_cost_without_latency_is_deterministic():
    model = kd.create_model("resnet8", in_channels=1)
    a = model_cost(model, (1, 28, 28), latency=False)
    assert a == model_cost(model, (1, 28, 28), latency=False)
    assert a["params"] == kd.num_params(model) and set(a) == {"params", "macs"}
    assert torch.is_grad_enabled()
