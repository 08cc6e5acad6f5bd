"""Curriculum temperature KD (Li et al. 2023, after the survey, beside section 2.1):
the gradient reversal, the cosine curriculum, the learned temperature and the
distiller, against independent computations of the authors' definitions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import kdutils as kd
from kdutils import losses


def _logits(seed: int, b: int = 7, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    return tuple(3 * torch.randn(b, k, generator=g, dtype=torch.float64) for _ in "st")


@pytest.mark.parametrize("lam", [0.0, -0.3, -1.0, 0.5])
def test_gradient_reversal_is_the_identity_with_a_scaled_gradient(lam):
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, dtype=torch.float64)
    y = losses.gradient_reversal(x, lam)
    torch.testing.assert_close(y, x)
    (w * y).sum().backward()
    torch.testing.assert_close(x.grad, lam * w)


def authors_cosine_decay(i: int, loops: float, vmax: float, vmin: float) -> float:
    """CTKD's ``CosineDecay.get_value``, written from its definition."""
    i = min(max(i, 0), loops)
    return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (vmax - vmin) + vmin


@pytest.mark.parametrize("epoch", [0, 1, 3, 5, 9, 10, 11, 240])
def test_cosine_reversal_is_the_authors_curriculum(epoch):
    got = losses.cosine_reversal(epoch, 10, start=0.0, end=-1.0)
    assert got == pytest.approx(authors_cosine_decay(epoch, 10, 0.0, -1.0), abs=1e-15)


def test_cosine_reversal_runs_from_start_to_end():
    assert losses.cosine_reversal(0, 10) == 0.0
    assert losses.cosine_reversal(5, 10) == pytest.approx(-0.5)
    assert losses.cosine_reversal(10, 10) == -1.0
    assert losses.cosine_reversal(50, 10) == -1.0
    assert losses.cosine_reversal(3, 0) == -1.0  # no curriculum: reversed at once
    values = [losses.cosine_reversal(e, 10) for e in range(11)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_ctkd_temperature_and_its_reversed_gradient():
    theta = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    tau = losses.ctkd_temperature(theta, lam=-0.5, t_start=1.0, t_end=20.0)
    sig = 1 / (1 + math.exp(-0.3))
    assert tau.item() == pytest.approx(1 + 20 * sig, rel=1e-12)
    tau.sum().backward()
    # d tau / d theta = t_end * s (1 - s), times lambda by the reversal.
    assert theta.grad.item() == pytest.approx(-0.5 * 20 * sig * (1 - sig), rel=1e-12)


@pytest.mark.parametrize("T", [1.0, 4.0, 15.6])
def test_kd_at_a_learned_temperature_is_kd_and_differentiates_in_T(T):
    s, t = _logits(int(T))
    tau = torch.tensor([T], dtype=torch.float64, requires_grad=True)
    got = losses.kd_loss_learned_T(s, t, tau)
    torch.testing.assert_close(got, losses.kd_loss(s, t, T=T))
    got.backward()
    h = 1e-4
    numeric = (losses.kd_loss(s, t, T + h) - losses.kd_loss(s, t, T - h)) / (2 * h)
    assert tau.grad.item() == pytest.approx(numeric.item(), rel=1e-5)
    with pytest.raises(ValueError, match="one temperature"):
        losses.kd_loss_learned_T(s, t, torch.ones(2, dtype=s.dtype))


# The distiller

BATCH, CLASSES, CHANNELS, SIZE = 8, 10, 3, 16


def _built(**hparams):
    torch.manual_seed(0)
    student = kd.create_model("resnet8", num_classes=CLASSES, in_channels=CHANNELS)
    teacher = kd.create_model("resnet14", num_classes=CLASSES, in_channels=CHANNELS)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, CHANNELS, SIZE, SIZE, generator=g)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g)
    return kd.build("ctkd", student, teacher, **hparams).train(), teacher, x, y


def test_ctkd_defaults_and_registry():
    d, *_ = _built()
    assert d.hparams() == dict(
        t_start=1.0,
        t_end=20.0,
        decay_epochs=10,
        lambda_start=0.0,
        lambda_end=-1.0,
        ce_weight=0.1,
        kd_weight=0.9,
    )
    cls = kd.METHODS["ctkd"]
    assert (cls.status, cls.status_year, cls.survey_section) == ("after", 2023, "2.1")
    assert d.theta.item() == 1.0  # the authors' Global_T starts at 1


def test_ctkd_terms_and_the_temperature_metric():
    d, teacher, x, y = _built()
    logits_s, terms = d(x, y)
    with torch.no_grad():
        logits_t = teacher(x)
    tau0 = 1 + 20 / (1 + math.exp(-1.0))  # about 15.62
    assert d.step_metrics["temperature"].item() == pytest.approx(tau0, rel=1e-6)
    torch.testing.assert_close(terms["ce"], 0.1 * F.cross_entropy(logits_s, y))
    torch.testing.assert_close(
        terms["kd"], 0.9 * losses.kd_loss(logits_s, logits_t, T=tau0)
    )


@pytest.mark.parametrize("epoch", [0, 4, 9, 30])
def test_the_temperature_ascends_the_kd_loss_with_the_curriculums_strength(epoch):
    """theta's gradient is lambda(e + 1) times the plain gradient of the loss."""
    d, _, x, y = _built()
    d.on_epoch(epoch, 40)
    lam = losses.cosine_reversal(epoch + 1, 10)
    assert d.lam == pytest.approx(lam)
    _, terms = d(x, y)
    sum(terms.values()).backward()
    reversed_grad = d.theta.grad.item()
    d.zero_grad()
    d.lam = 1.0  # no reversal: the plain gradient
    _, terms = d(x, y)
    sum(terms.values()).backward()
    assert reversed_grad == pytest.approx(lam * d.theta.grad.item(), rel=1e-4)


def test_ctkd_curriculum_is_scaled_to_the_run():
    """10 of the reference 240 epochs: at least 1 in a short run, 5 in 120."""
    assert kd.make_config("quick", method="ctkd").method_args["decay_epochs"] == 1
    cfg = kd.make_config("paper", method="ctkd", epochs=120)
    assert cfg.method_args["decay_epochs"] == 5
    assert kd.make_config("paper", method="ctkd").method_args["decay_epochs"] == 10


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(t_start=0.0), "t_start"),
        (dict(t_end=-1.0), "t_end"),
        (dict(decay_epochs=-1), "decay_epochs"),
        (dict(lambda_end=0.5), "lambda_end"),
        (dict(lambda_start=1.0), "lambda_start"),
        (dict(kd_weight=-0.9), "kd_weight"),
    ],
)
def test_ctkd_refuses_bad_hyperparameters(bad, words):
    with pytest.raises(ValueError, match=words):
        _built(**bad)
