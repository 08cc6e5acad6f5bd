"""Dense-prediction losses (survey section 5.2) against float64 loops written
from their definitions, their invariances, gradients and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdutils import losses


def _maps(seed, n=2, c=3, h=4, w=5, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        scale * torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
        for _ in range(2)
    )


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


def pixel_reference(s, t) -> float:
    s, t = s.numpy(), t.numpy()
    n, k, h, w = s.shape
    total = 0.0
    for i in range(n):
        for y in range(h):
            for x in range(w):
                p_t = _softmax(t[i, :, y, x])
                log_q = np.log(_softmax(s[i, :, y, x]))
                total -= float((p_t * log_q).sum())
    return total / (h * w)


def _pool_np(f, kh, kw):
    n, c, h, w = f.shape
    oh, ow = math.ceil(h / kh), math.ceil(w / kw)
    out = np.empty((n, c, oh, ow))
    for a in range(oh):
        for b in range(ow):
            out[:, :, a, b] = f[:, :, a * kh : (a + 1) * kh, b * kw : (b + 1) * kw].max(
                axis=(2, 3)
            )
    return out


def pair_reference(s, t, scale) -> float:
    s, t = s.numpy(), t.numpy()
    kh, kw = int(t.shape[2] * scale), int(t.shape[3] * scale)
    ps, pt = _pool_np(s, kh, kw), _pool_np(t, kh, kw)
    n = t.shape[0]
    nodes = pt.shape[2] * pt.shape[3]
    total = 0.0
    for i in range(n):
        vs = [ps[i, :, a, b] for a in range(ps.shape[2]) for b in range(ps.shape[3])]
        vt = [pt[i, :, a, b] for a in range(pt.shape[2]) for b in range(pt.shape[3])]
        for p in range(nodes):
            for q in range(nodes):
                cos_t = (
                    vt[p]
                    @ vt[q]
                    / ((np.linalg.norm(vt[p]) + 1e-8) * (np.linalg.norm(vt[q]) + 1e-8))
                )
                cos_s = (
                    vs[p]
                    @ vs[q]
                    / ((np.linalg.norm(vs[p]) + 1e-8) * (np.linalg.norm(vs[q]) + 1e-8))
                )
                total += (cos_t - cos_s) ** 2
    return total / nodes**2 / n


def channel_reference(s, t, tau) -> float:
    s, t = s.numpy(), t.numpy()
    n, c = s.shape[:2]
    total = 0.0
    for i in range(n):
        for j in range(c):
            p = _softmax(t[i, j].ravel() / tau)
            q = _softmax(s[i, j].ravel() / tau)
            total += float((p * (np.log(p) - np.log(q))).sum())
    return total * tau**2 / (n * c)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pixel_wise_matches_the_per_pixel_sum(seed):
    s, t = _maps(seed)
    assert losses.pixel_wise_loss(s, t).item() == pytest.approx(
        pixel_reference(s, t), rel=1e-10
    )


def test_pixel_wise_grows_with_the_batch_as_the_authors_sum():
    s, t = _maps(3, n=1)
    one = losses.pixel_wise_loss(s, t).item()
    two = losses.pixel_wise_loss(torch.cat([s, s]), torch.cat([t, t])).item()
    assert two == pytest.approx(2 * one, rel=1e-12)


@pytest.mark.parametrize(
    "seed, h, w, scale", [(0, 4, 6, 0.5), (1, 5, 5, 0.5), (2, 6, 4, 1 / 3)]
)
def test_pair_wise_matches_pooled_cosine_sums(seed, h, w, scale):
    s, t = _maps(seed, h=h, w=w)
    t = torch.cat([t, t[:, :1]], dim=1)  # the teacher may have more channels
    got = losses.pair_wise_loss(s, t, scale).item()
    assert got == pytest.approx(pair_reference(s, t, scale), rel=1e-10)


def test_pair_wise_ignores_the_length_of_each_feature_vector():
    s, t = _maps(4, h=4, w=4)
    g = torch.Generator().manual_seed(9)
    lengths = torch.rand(2, 1, 4, 4, generator=g, dtype=torch.float64) + 0.5
    a = losses.pair_wise_loss(s, t, 1.0).item()
    b = losses.pair_wise_loss(s * lengths, t, 1.0).item()
    assert a == pytest.approx(b, rel=1e-9)


def test_pair_similarity_norm_carries_no_gradient():
    feat = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    norm = feat.detach().pow(2).sum(1, keepdim=True).sqrt() + 1e-8
    unit = (feat / norm).flatten(2)
    want = torch.autograd.grad(torch.einsum("icm,icn->imn", unit, unit).sum(), feat)[0]
    got = torch.autograd.grad(losses.pair_similarity(feat).sum(), feat)[0]
    assert torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_channel_wise_matches_per_channel_kl(seed, tau):
    s, t = _maps(seed)
    assert losses.channel_wise_loss(s, t, tau).item() == pytest.approx(
        channel_reference(s, t, tau), rel=1e-10
    )


def test_channel_wise_ignores_a_constant_added_to_a_channel():
    s, t = _maps(5)
    shift = torch.randn(2, 3, 1, 1, dtype=torch.float64)
    a = losses.channel_wise_loss(s, t, 4.0).item()
    assert losses.channel_wise_loss(s + shift, t - shift, 4.0).item() == pytest.approx(
        a
    )


def test_each_loss_is_zero_for_a_student_equal_to_its_teacher():
    s, _ = _maps(6)
    assert losses.pixel_wise_loss(s, s).item() == pytest.approx(
        pixel_reference(s, s), rel=1e-12
    )  # a cross-entropy: the teacher's entropy, not zero
    assert losses.pair_wise_loss(s, s).item() == 0.0
    assert abs(losses.channel_wise_loss(s, s).item()) < 1e-12


@pytest.mark.parametrize(
    "fn, args, match",
    [
        (
            losses.pixel_wise_loss,
            (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)),
            "N, C, H, W",
        ),
        (
            losses.pixel_wise_loss,
            (torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4)),
            "same channels",
        ),
        (
            losses.channel_wise_loss,
            (torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 5, 4)),
            "spatial",
        ),
        (
            losses.pair_wise_loss,
            (torch.zeros(1, 3, 4, 4), torch.zeros(2, 3, 4, 4)),
            "batch",
        ),
    ],
)
def test_bad_shapes_name_the_loss(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(*args)


def test_bad_scale_and_tau():
    s, t = _maps(0)
    with pytest.raises(ValueError, match="scale"):
        losses.pair_wise_loss(s, t, 0.0)
    with pytest.raises(ValueError, match="empty kernel"):
        losses.pair_wise_loss(s, t, 0.1)
    with pytest.raises(ValueError, match="tau"):
        losses.channel_wise_loss(s, t, 0.0)
