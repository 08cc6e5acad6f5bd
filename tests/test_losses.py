"""kdutils.losses against independent float64 computations of their definitions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdutils import losses


def _log_softmax_np(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def kl_reference(logits_s, logits_t, T: float) -> float:
    """mean_b sum_k p_t log(p_t / p_s), p = softmax(z / T), in float64 numpy.

    Hinton et al. 2015 without the T^2 factor (the tests apply it).
    """
    s = np.asarray(logits_s, dtype=np.float64) / T
    t = np.asarray(logits_t, dtype=np.float64) / T
    log_ps, log_pt = _log_softmax_np(s), _log_softmax_np(t)
    per_sample = (np.exp(log_pt) * (log_pt - log_ps)).sum(axis=-1)  # (B, K) -> (B,)
    return float(per_sample.mean())


def _logits(seed: int, b: int = 6, k: int = 10, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return (
        scale * torch.randn(b, k, generator=g, dtype=torch.float64),
        scale * torch.randn(b, k, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("T", [0.5, 1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_kd_loss_equals_T2_times_reference_kl(T, seed):
    s, t = _logits(seed)
    got = losses.kd_loss(s, t, T=T)
    assert got.shape == ()
    expected = T**2 * kl_reference(s.numpy(), t.numpy(), T)
    assert got.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)


def test_kd_loss_default_temperature_is_4():
    s, t = _logits(3)
    assert losses.kd_loss(s, t).item() == pytest.approx(
        16 * kl_reference(s.numpy(), t.numpy(), 4.0), rel=1e-10
    )


def test_kd_loss_float32_matches_reference():
    s, t = _logits(4)
    got = losses.kd_loss(s.float(), t.float(), T=4.0)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(
        16 * kl_reference(s.numpy(), t.numpy(), 4.0), rel=1e-5
    )


def test_kd_loss_is_a_batch_mean_not_a_sum():
    s, t = _logits(5, b=4)
    once = losses.kd_loss(s, t, T=2.0)
    twice = losses.kd_loss(torch.cat([s, s]), torch.cat([t, t]), T=2.0)
    torch.testing.assert_close(once, twice)


def test_kd_loss_of_identical_logits_is_zero():
    s, _ = _logits(6)
    assert losses.kd_loss(s, s.clone(), T=4.0).item() == pytest.approx(0.0, abs=1e-12)
    assert losses.kd_loss(s.float(), s.float(), T=1.0).item() == pytest.approx(
        0.0, abs=1e-6
    )


@pytest.mark.parametrize("seed", range(5))
def test_kd_loss_is_non_negative_and_positive_for_different_logits(seed):
    s, t = _logits(seed, scale=5.0)
    value = losses.kd_loss(s, t, T=3.0).item()
    assert value > 0


def test_kd_loss_T2_scaling():
    """Doubling T multiplies the returned value by 4 relative to the plain KL."""
    s, t = _logits(7)
    for T in (1.0, 3.0, 10.0):
        plain = kl_reference(s.numpy(), t.numpy(), T)
        assert losses.kd_loss(s, t, T=T).item() / T**2 == pytest.approx(
            plain, rel=1e-10
        )


def test_kd_loss_high_temperature_limit_is_logit_matching():
    """For T -> inf, T^2 KL -> mean_b (1 / 2K) sum_k ((s - mean s) - (t - mean t))^2.

    Hinton et al. 2015, section 2.1: expand softmax(z / T) to first order in 1/T.
    """
    s, t = _logits(8, b=5, k=7, scale=1.0)
    k = s.shape[1]
    a = s - s.mean(dim=1, keepdim=True)
    b = t - t.mean(dim=1, keepdim=True)
    limit = ((a - b) ** 2).sum(dim=1).mean().item() / (2 * k)
    assert losses.kd_loss(s, t, T=1e3).item() == pytest.approx(limit, rel=1e-2)
    # ... and at T=1 it is far from that limit, so the check above can fail.
    assert losses.kd_loss(s, t, T=1.0).item() != pytest.approx(limit, rel=1e-2)


def test_kd_loss_gradient_reaches_only_the_student():
    s, t_raw = _logits(9)
    s.requires_grad_(True)
    t_raw.requires_grad_(True)
    T, bsz = 4.0, s.shape[0]
    losses.kd_loss(s, t_raw.detach(), T=T).backward()
    assert t_raw.grad is None
    # d/ds [T^2 mean_b KL] = (T / B) (softmax(s / T) - softmax(t / T))
    expected = (T / bsz) * (
        torch.softmax(s.detach() / T, 1) - torch.softmax(t_raw.detach() / T, 1)
    )
    torch.testing.assert_close(s.grad, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("T", [0, 0.0, -1, -4.0])
def test_kd_loss_rejects_non_positive_temperature(T):
    s, t = _logits(10)
    with pytest.raises(ValueError, match="T"):
        losses.kd_loss(s, t, T=T)


def test_kd_loss_invariant_to_per_sample_logit_shifts():
    s, t = _logits(11)
    shift_s = torch.linspace(-50, 50, s.shape[0], dtype=s.dtype).view(-1, 1)
    shift_t = torch.linspace(30, -10, t.shape[0], dtype=t.dtype).view(-1, 1)
    torch.testing.assert_close(
        losses.kd_loss(s + shift_s, t + shift_t, T=2.0), losses.kd_loss(s, t, T=2.0)
    )


def test_soft_targets_is_tempered_softmax():
    s, _ = _logits(12)
    p = losses.soft_targets(s, T=3.0)
    expected = np.exp(_log_softmax_np(s.numpy() / 3.0))
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(p.sum(-1).numpy(), 1.0, rtol=1e-12)
