"""CIFAR ResNets: parameter counts, any input size, feature capture."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import kdutils as kd
from kdutils.models import MODELS, PointwiseDownsample, ResNet, param_check


@pytest.mark.parametrize(
    "name, classes, expected",
    [
        ("resnet20", 10, 272_474),
        ("resnet56", 10, 855_770),
        ("resnet110", 10, 1_730_714),
        ("resnet20", 100, 278_324),
    ],
)
def test_parameter_counts_match_the_literature(name, classes, expected):
    with torch.device("meta"):  # counting needs no memory or initialisation
        model = kd.create_model(name, num_classes=classes, in_channels=3)
    assert kd.num_params(model) == expected


def test_param_check_reports_the_same_counts():
    counts = param_check()
    assert set(counts) == set(MODELS)
    assert counts["resnet20"] == 272_474
    assert counts["resnet56"] == 855_770
    assert counts["resnet110"] == 1_730_714


def test_deeper_and_wider_models_have_more_parameters():
    counts = param_check()
    assert (
        counts["resnet8"] < counts["resnet14"] < counts["resnet20"] < counts["resnet32"]
    )
    assert counts["resnet8x4"] > counts["resnet8"]
    assert counts["resnet32x4"] > counts["resnet32"]


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (3, 20, 24)])
def test_every_model_builds_and_runs(name, shape):
    c, h, w = shape
    torch.manual_seed(0)
    model = kd.create_model(name, num_classes=7, in_channels=c).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, c, h, w))
    assert logits.shape == (2, 7)
    assert torch.isfinite(logits).all()


def _feature_shapes(widths, b, h, w):
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    h4, w4 = (h2 + 1) // 2, (w2 + 1) // 2
    return {
        "stem": (b, widths[0], h, w),
        "layer1": (b, widths[1], h, w),
        "layer2": (b, widths[2], h2, w2),
        "layer3": (b, widths[3], h4, w4),
        "pool": (b, widths[3]),
    }


@pytest.mark.parametrize(
    "name, widths", [("resnet20", (16, 16, 32, 64)), ("resnet8x4", (32, 64, 128, 256))]
)
@pytest.mark.parametrize("hw", [(32, 32), (20, 24)])
def test_capture_gives_the_documented_feature_shapes(name, widths, hw):
    h, w = hw
    model = kd.create_model(name, num_classes=10, in_channels=3).eval()
    with torch.no_grad(), kd.capture(model) as feats:
        model(torch.randn(3, 3, h, w))
    shapes = {k: tuple(v.shape) for k, v in feats.items()}
    assert shapes == _feature_shapes(widths, 3, h, w)


def test_capture_selected_layers_only():
    model = kd.create_model("resnet8", in_channels=1).eval()
    with torch.no_grad(), kd.capture(model, ["layer1", "layer3"]) as feats:
        model(torch.randn(2, 1, 8, 8))
    assert set(feats) == {"layer1", "layer3"}


def test_capture_does_not_change_the_logits():
    torch.manual_seed(0)
    model = kd.create_model("resnet20").eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)
        with kd.capture(model) as feats:
            captured = model(x)
    assert torch.equal(plain, captured)
    # The pooled features really are what the classifier saw.
    torch.testing.assert_close(model.fc(feats["pool"]), plain)


def test_capture_refills_on_every_forward():
    model = kd.create_model("resnet8", in_channels=1).eval()
    x1, x2 = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    with torch.no_grad(), kd.capture(model, ["pool"]) as feats:
        model(x1)
        first = feats["pool"].clone()
        model(x2)
        second = feats["pool"]
    assert not torch.equal(first, second)


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_capture_removes_its_hooks_afterwards():
    model = kd.create_model("resnet8", in_channels=1).eval()
    before = _hook_count(model)
    with kd.capture(model) as feats:
        assert _hook_count(model) == before + len(ResNet.feature_layers)
        model(torch.randn(2, 1, 8, 8))
    assert _hook_count(model) == before
    stale = {k: v.clone() for k, v in feats.items()}
    model(torch.randn(2, 1, 8, 8))
    assert all(torch.equal(stale[k], feats[k]) for k in stale)


def test_capture_removes_its_hooks_on_error():
    model = kd.create_model("resnet8", in_channels=1)
    with pytest.raises(RuntimeError, match="boom"), kd.capture(model):
        raise RuntimeError("boom")
    assert _hook_count(model) == 0


def test_capture_unknown_layer_is_a_clear_error():
    model = kd.create_model("resnet8", in_channels=1)
    with pytest.raises(ValueError, match="layer9"), kd.capture(model, ["layer9"]):
        pass
    assert _hook_count(model) == 0


def test_unknown_model_name_names_the_choices():
    with pytest.raises(ValueError) as info:
        kd.create_model("resnet7")
    message = str(info.value)
    assert "resnet7" in message
    for name in MODELS:
        assert name in message


@pytest.mark.parametrize("depth", [7, 9, 2])
def test_invalid_depth_is_rejected(depth):
    with pytest.raises(ValueError, match="6n\\+2"):
        ResNet(depth)


def test_shortcuts_are_1x1_conv_plus_bn():
    model = kd.create_model("resnet20")
    block = model.layer2[0]  # first block of a stage downsamples
    conv, bn = block.shortcut
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (1, 1)
    assert conv.stride == (2, 2)
    assert isinstance(bn, torch.nn.BatchNorm2d)


def test_preact_points_capture_the_sum_before_the_last_relu():
    model = kd.create_model("resnet14", in_channels=1).eval()
    pre, post = model.stage_layers(pre_relu=True), model.stage_layers()
    assert pre == ["layer1.1.preact", "layer2.1.preact", "layer3.1.preact"]
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad(), kd.capture(model, pre + post) as feats:
        model(x)
    for a, b in zip(pre, post, strict=True):
        assert (feats[a] < 0).any()  # really before the ReLU
        torch.testing.assert_close(torch.relu(feats[a]), feats[b], rtol=0, atol=0)


def test_any_depth_and_widths_by_name():
    model = kd.create_model("resnet14_w8-8-16-32", in_channels=1)
    assert model.depth == 14 and model.widths == (8, 8, 16, 32)
    assert kd.models.model_name(14, (8, 8, 16, 32)) == "resnet14_w8-8-16-32"
    standard = kd.create_model("resnet20_w16-16-32-64")
    assert kd.num_params(standard) == kd.num_params(kd.create_model("resnet20"))
    for bad in ("resnet15_w8-8-16-32", "resnet14_w0-8-16-32", "resnet14_w8-8-16"):
        with pytest.raises(ValueError, match="unknown model"):
            kd.create_model(bad)


@pytest.mark.parametrize("cin", [2, 7, 8, 12, 16])
def test_pointwise_downsample_is_the_strided_1x1_convolution(cin):
    torch.manual_seed(0)
    plain = nn.Conv2d(cin, 4, 1, 2, bias=False)
    safe = PointwiseDownsample(cin, 4, 1, 2, bias=False)
    safe.load_state_dict(plain.state_dict())
    x = torch.randn(3, cin, 9, 9).to(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    torch.testing.assert_close(safe(x2), plain(x1))
    plain(x1).square().sum().backward()
    safe(x2).square().sum().backward()
    torch.testing.assert_close(safe.weight.grad, plain.weight.grad)
    torch.testing.assert_close(x2.grad, x1.grad)


def test_narrow_downsampling_shortcuts_train_with_onednn_limited_to_avx2():
    """The crash of a strided 1x1 weight gradient with < 8 input channels (torch
    2.14.1, oneDNN 3.12, AVX2 only, channels_last) cannot reach a ResNet.

    ONEDNN_MAX_CPU_ISA=AVX2 imitates an AVX2-only CPU on an AVX-512 one; with a
    plain nn.Conv2d shortcut this child dies with SIGSEGV or SIGABRT.
    """
    code = (
        "import torch; torch.set_num_threads(1)\n"
        "import kdutils as kd\n"
        "m = kd.create_model('resnet8_w2-2-2-2', 10, 1)"
        ".to(memory_format=torch.channels_last)\n"
        "x = torch.randn(64, 1, 8, 8).to(memory_format=torch.channels_last)\n"
        "for _ in range(5):\n"
        "    torch.nn.functional.cross_entropy(m(x), torch.zeros(64).long())"
        ".backward()\n"
    )
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    shortcuts = [
        m
        for m in kd.create_model("resnet8_w2-2-2-2", 10, 1).modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
    ]
    assert shortcuts and all(isinstance(m, PointwiseDownsample) for m in shortcuts)


def test_shortcuts_of_8_to_15_channels_train_with_two_threads_and_odd_batches():
    """The crash of a strided 1x1 backward pass with under 16 input channels,
    two threads and a batch of 7 or 39 (torch 2.14.1, an AVX-512 AMD EPYC,
    channels_last): it killed chapter 11's smoke run at THREADS=2 in the
    planted resnet8_w8-8-8-16, whose data's last batch has 7 images. With a
    plain nn.Conv2d shortcut this child dies on that CPU."""
    code = (
        "import torch; torch.set_num_threads(2)\n"
        "import kdutils as kd\n"
        "m = kd.create_model('resnet8_w8-8-12-12', 10, 1)"
        ".to(memory_format=torch.channels_last)\n"
        "for bs in (7, 39, 7, 39):\n"
        "    x = torch.randn(bs, 1, 28, 28).to(memory_format=torch.channels_last)\n"
        "    for _ in range(5):\n"
        "        torch.nn.functional.cross_entropy(m(x), torch.zeros(bs).long())"
        ".backward()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
