"""The generation losses (survey §5.4) against independent computations of
their definitions: the GAN's two losses, Chen et al. 2020b's pixel,
perceptual and triplet terms."""

from __future__ import annotations

import math

import pytest
import torch

from kdutils import losses

DT = torch.float64


def _g():
    return torch.Generator().manual_seed(0)


def test_d_loss_is_bce_real_one_fake_zero():
    g = _g()
    lr, lf = (
        torch.randn(5, generator=g, dtype=DT),
        torch.randn(3, generator=g, dtype=DT),
    )
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    real = -sum(math.log(sig(v)) for v in lr.tolist()) / 5
    fake = -sum(math.log(1 - sig(v)) for v in lf.tolist()) / 3
    assert losses.gan_d_loss(lr, lf).item() == pytest.approx(real + fake, rel=1e-12)


def test_g_loss_is_the_non_saturating_form():
    g = _g()
    lf = torch.randn(6, generator=g, dtype=DT, requires_grad=True)
    loss = losses.gan_g_loss(lf)
    expected = -sum(math.log(1 / (1 + math.exp(-v))) for v in lf.tolist()) / 6
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    # non-saturating: where D is sure the sample is fake (very negative
    # logit), the gradient stays near -1/B, not near 0
    far = torch.tensor([-20.0], dtype=DT, requires_grad=True)
    losses.gan_g_loss(far).backward()
    assert far.grad.item() == pytest.approx(-1.0, abs=1e-6)


def test_pixel_loss_is_mean_absolute_difference():
    g = _g()
    s, t = (torch.randn(2, 1, 4, 4, generator=g, dtype=DT) for _ in range(2))
    total = sum(
        abs(a - b)
        for a, b in zip(s.flatten().tolist(), t.flatten().tolist(), strict=True)
    )
    assert losses.gan_pixel_loss(s, t).item() == pytest.approx(total / 32, rel=1e-12)
    assert losses.gan_pixel_loss(t, t).item() == 0


def test_perceptual_loss_is_mean_absolute_feature_difference():
    g = _g()
    s, t = (torch.randn(3, 10, generator=g, dtype=DT) for _ in range(2))
    expected = (
        sum(
            sum(abs(a - b) for a, b in zip(rs, rt, strict=True)) / 10
            for rs, rt in zip(s.tolist(), t.tolist(), strict=True)
        )
        / 3
    )
    assert losses.gan_perceptual_loss(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_triplet_loss_against_a_loop():
    g = _g()
    pos, neg, anchor = (torch.randn(4, 2, 3, generator=g, dtype=DT) for _ in range(3))
    margin = 0.3
    terms = []
    for i in range(4):
        d_pos = (pos[i] - anchor[i]).abs().sum().item() / 6
        d_neg = (neg[i] - anchor[i]).abs().sum().item() / 6
        terms.append(max(0.0, d_pos - d_neg + margin))
    got = losses.gan_triplet_loss(pos, neg, anchor, margin).item()
    assert got == pytest.approx(sum(terms) / 4, rel=1e-12)


def test_triplet_loss_is_zero_once_the_negative_is_far_enough():
    anchor = torch.zeros(2, 5, dtype=DT)
    pos = anchor + 0.1  # distance 0.1
    neg = anchor + 2.0  # distance 2.0 > 0.1 + margin 1
    assert losses.gan_triplet_loss(pos, neg, anchor, margin=1.0).item() == 0
    assert losses.gan_triplet_loss(
        pos, neg, anchor, margin=3.0
    ).item() == pytest.approx(0.1 - 2.0 + 3.0)


def test_gradients_reach_only_the_student_side():
    g = _g()
    img_s = torch.randn(2, 1, 4, 4, generator=g, dtype=DT, requires_grad=True)
    img_t = torch.randn(2, 1, 4, 4, generator=g, dtype=DT)
    (
        losses.gan_pixel_loss(img_s, img_t) + losses.gan_perceptual_loss(img_s, img_t)
    ).backward()
    assert img_s.grad is not None and img_s.grad.abs().sum() > 0
    assert img_t.grad is None


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: losses.gan_d_loss(torch.zeros(2, 1), torch.zeros(2)), r"\(B,\)"),
        (lambda: losses.gan_g_loss(torch.zeros(2, 1)), r"\(B,\)"),
        (
            lambda: losses.gan_pixel_loss(
                torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5)
            ),
            "shape",
        ),
        (
            lambda: losses.gan_perceptual_loss(torch.zeros(2, 3), torch.zeros(3, 3)),
            "shape",
        ),
        (
            lambda: losses.gan_triplet_loss(
                torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), margin=-1
            ),
            "margin",
        ),
        (
            lambda: losses.gan_triplet_loss(
                torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, 3)
            ),
            "shape",
        ),
    ],
)
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
