"""Logit methods published after the survey (beside section 2.1): DKD, DIST, logit
standardisation (KD and DKD) and NKD, against independent float64 computations
of their papers' definitions, their properties, bad input, and the distillers."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from logit_cases import batch as _batch
from logit_cases import labels as _labels
from logit_cases import log_softmax_np as _log_softmax
from logit_cases import logits
from logit_cases import models as _models
from logit_cases import to_np as _np

import kdutils as kd
from kdutils import losses


def _logits(seed: int, b: int = 7, k: int = 5, scale: float = 3.0):
    return logits(seed, b, k, scale, n=2)


def _softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(z))


# Decoupled KD (Zhao et al. 2022)


def dkd_reference(s, t, y, alpha, beta, T) -> float:
    """DKD from its definition, in float64 numpy: the target class's binary KL
    and the KL over the other classes with the target's column *removed* (the
    authors mask it with -1000 instead)."""
    s, t, y = _np(s) / T, _np(t) / T, y.numpy()
    total = 0.0
    for b in range(len(y)):
        p_s, p_t = _softmax(s[b]), _softmax(t[b])
        bs = np.array([p_s[y[b]], 1 - p_s[y[b]]])
        bt = np.array([p_t[y[b]], 1 - p_t[y[b]]])
        tckd = np.sum(bt * (np.log(bt) - np.log(bs)))
        rest = np.arange(len(p_s)) != y[b]
        q_s, q_t = _softmax(s[b][rest]), _softmax(t[b][rest])
        nckd = np.sum(q_t * (np.log(q_t) - np.log(q_s)))
        total += alpha * tckd + beta * nckd
    return T**2 * total / len(y)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("alpha", "beta", "T"), [(1.0, 2.0, 4.0), (0.5, 8.0, 1.0)])
def test_dkd_loss_is_its_definition(seed, alpha, beta, T):
    s, t = _logits(seed)
    y = _labels(seed)
    got = losses.dkd_loss(s, t, target=y, alpha=alpha, beta=beta, T=T)
    assert got.item() == pytest.approx(dkd_reference(s, t, y, alpha, beta, T), rel=1e-9)


def test_dkd_loss_signature_and_mdistillers_defaults():
    params = inspect.signature(losses.dkd_loss).parameters
    assert list(params) == ["logits_s", "logits_t", "target", "alpha", "beta", "T"]
    assert [params[k].default for k in ("alpha", "beta", "T")] == [1.0, 8.0, 4.0]
    s, t = _logits(5)
    y = _labels(5)
    got = losses.dkd_loss(s, t, y)
    assert got.item() == pytest.approx(dkd_reference(s, t, y, 1.0, 8.0, 4.0), rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_dkd_decomposes_hintons_kd(seed):
    """Zhao et al.'s Eq. (1): KD = TCKD + (1 - p_t(y)) * NCKD, sample by sample."""
    s, t = _logits(seed, b=1)
    y = _labels(seed, b=1)
    p_t = F.softmax(t / 4.0, dim=1)[0, y[0]]
    dkd = losses.dkd_loss(s, t, y, alpha=1.0, beta=(1 - p_t).item(), T=4.0)
    torch.testing.assert_close(dkd, losses.kd_loss(s, t, T=4.0))


@pytest.mark.parametrize("name", ["dkd_loss", "nkd_loss"])
def test_losses_with_labels_refuse_bad_labels_and_shapes(name):
    fn = getattr(losses, name)
    s, t = _logits(6)
    y = _labels(6)
    with pytest.raises(ValueError, match=r"target \(6,\) must be \(B,\)"):
        fn(s, t, y[:6])
    with pytest.raises(ValueError, match="class indices"):
        fn(s, t, y.double())
    with pytest.raises(ValueError, match=r"logits_s \(7, 5\) and logits_t \(7, 4\)"):
        fn(s, t[:, :4], y)
    with pytest.raises(ValueError, match="temperature T must be > 0"):
        fn(s, t, y, T=0.0)


# DIST (Huang et al. 2022)


def pearson_reference(u: np.ndarray, v: np.ndarray, eps: float) -> float:
    """The Pearson correlation from its sums, DIST's eps on the norms' product."""
    du, dv = u - u.mean(), v - v.mean()
    return float((du * dv).sum() / (np.sqrt((du**2).sum() * (dv**2).sum()) + eps))


def dist_reference(s, t, beta, gamma, tau, eps=1e-8) -> float:
    """Inter-class: per sample over the classes; intra-class: per class over
    the batch; both 1 - mean correlation, times tau^2 (float64 numpy loops)."""
    p_s, p_t = _softmax(_np(s) / tau), _softmax(_np(t) / tau)
    inter = 1 - _mean_rows(p_s, p_t, lambda a, b: pearson_reference(a, b, eps))
    intra = 1 - _mean_rows(p_s.T, p_t.T, lambda a, b: pearson_reference(a, b, eps))
    return tau**2 * (beta * inter + gamma * intra)


def _mean_rows(p: np.ndarray, q: np.ndarray, rho) -> float:
    """Mean over the rows i of rho(p[i], q[i])."""
    return float(np.mean([rho(p[i], q[i]) for i in range(len(p))]))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    ("beta", "gamma", "tau"), [(1.0, 1.0, 1.0), (2.0, 2.0, 4.0), (0.5, 3.0, 2.0)]
)
def test_dist_loss_is_its_definition(seed, beta, gamma, tau):
    s, t = _logits(seed)
    got = losses.dist_loss(s, t, beta=beta, gamma=gamma, tau=tau)
    assert got.shape == ()
    want = dist_reference(s, t, beta, gamma, tau)
    assert got.item() == pytest.approx(want, rel=1e-10)
    # The paper's correlation (no eps) differs by the eps alone.
    p_s, p_t = _softmax(_np(s) / tau), _softmax(_np(t) / tau)

    def corr(a, b):
        return np.corrcoef(a, b)[0, 1]

    inter = 1 - _mean_rows(p_s, p_t, corr)
    intra = 1 - _mean_rows(p_s.T, p_t.T, corr)
    paper = tau**2 * (beta * inter + gamma * intra)
    assert got.item() == pytest.approx(paper, rel=1e-5, abs=1e-6)


def test_pearson_correlation_ignores_the_scale_and_the_offset():
    """Huang et al.'s point: d_p(a u + b, v) = d_p(u, v) for a > 0, so the
    student need not match the teacher's values, only their relations."""
    u, v = _logits(7)
    a = torch.linspace(0.1, 5.0, len(u), dtype=u.dtype)[:, None]
    b = torch.linspace(-3.0, 2.0, len(u), dtype=u.dtype)[:, None]
    rho = losses.pearson_correlation(u, v)
    torch.testing.assert_close(losses.pearson_correlation(a * u + b, v), rho)
    torch.testing.assert_close(losses.pearson_correlation(-a * u + b, v), -rho)
    torch.testing.assert_close(losses.pearson_correlation(v, v), torch.ones_like(rho))
    flat = torch.ones_like(u)  # a constant row: correlation 0, not NaN
    assert (losses.pearson_correlation(flat, v) == 0).all()


def test_dist_is_zero_for_the_teachers_logits_and_symmetric():
    s, t = _logits(8)
    # Zero but for the eps: 1 - n^2 / (n^2 + 1e-8) per row or column.
    assert losses.dist_loss(t, t, tau=4.0).item() == pytest.approx(0.0, abs=1e-4)
    assert losses.dist_loss(t, t, tau=4.0).item() > 0
    torch.testing.assert_close(losses.dist_loss(s, t), losses.dist_loss(t, s))
    # tau^2 is the authors' factor outside the relations.
    torch.testing.assert_close(
        losses.dist_loss(s, t, tau=4.0), 16.0 * losses.dist_loss(s / 4.0, t / 4.0)
    )


def test_dist_refuses_bad_input():
    s, t = _logits(9)
    with pytest.raises(ValueError, match=r"logits_s \(7, 5\) and logits_t \(6, 5\)"):
        losses.dist_loss(s, t[:6])
    with pytest.raises(ValueError, match="must both be"):
        losses.dist_loss(s[0], t[0])
    with pytest.raises(ValueError, match="temperature tau must be > 0"):
        losses.dist_loss(s, t, tau=0.0)
    with pytest.raises(ValueError, match=r"a \(7, 5\) and b \(7, 4\)"):
        losses.pearson_correlation(s, t[:, :4])


# Logit standardisation (Sun et al. 2024)


def standardize_reference(z: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    mean = z.mean(axis=-1, keepdims=True)
    std = z.std(axis=-1, ddof=1, keepdims=True)  # the sample deviation
    return (z - mean) / (eps + std)


@pytest.mark.parametrize("eps", [1e-7, 0.0, 0.5])
def test_standardize_logits_is_the_authors_z_score(eps):
    s, _ = _logits(10)
    got = losses.standardize_logits(s, eps=eps)
    np.testing.assert_allclose(_np(got), standardize_reference(_np(s), eps), rtol=1e-12)
    if eps == 0.0:
        np.testing.assert_allclose(_np(got).mean(-1), 0.0, atol=1e-12)
        np.testing.assert_allclose(_np(got).std(-1, ddof=1), 1.0, rtol=1e-12)


def kd_ls_reference(s, t, T, eps=1e-7) -> float:
    """KL(p_t || p_s) of the z-scored logits at T, times T^2, batch mean."""
    ls = _log_softmax(standardize_reference(_np(s), eps) / T)
    lt = _log_softmax(standardize_reference(_np(t), eps) / T)
    return float(T**2 * (np.exp(lt) * (lt - ls)).sum(-1).mean())


@pytest.mark.parametrize("T", [1.0, 2.0, 3.0])
def test_kd_on_standardized_logits_is_its_definition(T):
    s, t = _logits(11)
    got = losses.kd_loss(
        losses.standardize_logits(s), losses.standardize_logits(t), T=T
    )
    assert got.item() == pytest.approx(kd_ls_reference(s, t, T), rel=1e-10)


def test_standardization_is_a_temperature_per_sample_and_ignores_the_range():
    """Sun et al.: softmax(Z(z) / T) = softmax(z / (T * sigma(z))), and a
    student's logits scaled and shifted per sample give the same KD loss."""
    s, t = _logits(12)
    T, eps = 2.0, 1e-7
    z = losses.standardize_logits(s, eps)
    sigma = s.std(dim=1, keepdim=True)
    torch.testing.assert_close(
        F.softmax(z / T, 1), F.softmax(s / (T * (sigma + eps)), 1)
    )
    a = torch.linspace(0.2, 6.0, len(s), dtype=s.dtype)[:, None]
    b = torch.linspace(-5.0, 5.0, len(s), dtype=s.dtype)[:, None]
    zt = losses.standardize_logits(t)
    moved = losses.kd_loss(losses.standardize_logits(a * s + b), zt, T)
    assert moved.item() == pytest.approx(losses.kd_loss(z, zt, T).item(), rel=1e-6)


def test_standardize_logits_refuses_one_class_and_a_negative_eps():
    with pytest.raises(ValueError, match="at least 2 classes"):
        losses.standardize_logits(torch.zeros(4, 1))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        losses.standardize_logits(torch.zeros(4, 3), eps=-1.0)


# Normalized KD (Yang et al. 2023)


def nkd_reference(s, t, y, T, gamma) -> float:
    """The paper's form: -p_t(y) log p_s(y) at temperature 1, and
    N(p)_i = p_i / (1 - p_y) of the *full* softmax at T for i != y."""
    s, t, y = _np(s), _np(t), y.numpy()
    total = 0.0
    for b in range(len(y)):
        p_s, p_t = _softmax(s[b]), _softmax(t[b])
        target = -p_t[y[b]] * np.log(p_s[y[b]])
        ps_T, pt_T = _softmax(s[b] / T), _softmax(t[b] / T)
        rest = np.arange(len(p_s)) != y[b]
        n_s = ps_T[rest] / (1 - ps_T[y[b]])
        n_t = pt_T[rest] / (1 - pt_T[y[b]])
        total += target - gamma * T**2 * np.sum(n_t * np.log(n_s))
    return total / len(y)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("T", "gamma"), [(1.0, 1.5), (3.0, 3.5), (4.0, 0.0)])
def test_nkd_loss_is_its_definition(seed, T, gamma):
    s, t = _logits(seed)
    y = _labels(seed)
    got = losses.nkd_loss(s, t, target=y, T=T, gamma=gamma)
    assert got.item() == pytest.approx(nkd_reference(s, t, y, T, gamma), rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_nkd_is_kd_with_the_non_target_weight_fixed(seed):
    """Yang et al.'s decomposition at T = 1: KD's cross-entropy
    -sum p_t log p_s = -p_t(y) log p_s(y) - (1 - p_t(y)) log(1 - p_s(y))
    - (1 - p_t(y)) sum N(p_t) log N(p_s); NKD with gamma = 1 - p_t(y) is that
    without the middle term."""
    s, t = _logits(seed, b=1)
    y = _labels(seed, b=1)
    p_s, p_t = F.softmax(s, 1)[0], F.softmax(t, 1)[0]
    w = (1 - p_t[y[0]]).item()
    nkd = losses.nkd_loss(s, t, y, T=1.0, gamma=w)
    cross_entropy = losses.kd_loss(s, t, T=1.0) - (p_t * p_t.log()).sum()
    torch.testing.assert_close(nkd, cross_entropy + w * torch.log1p(-p_s[y[0]]))


def test_nkd_target_weight_is_detached_as_the_authors():
    s, t = _logits(13)
    t.requires_grad_(True)
    losses.nkd_loss(s, t, _labels(13), gamma=0.0).backward()
    assert t.grad is None or (t.grad == 0).all()
    with pytest.raises(ValueError, match="at least 2 classes"):
        losses.nkd_loss(s[:, :1], t[:, :1].detach(), torch.zeros(7, dtype=torch.long))


# The distillers


def _run(name: str, **hparams):
    student, teacher = _models()
    d = kd.build(name, student, teacher, **hparams).train()
    x, y = _batch()
    logits_s, terms = d(x, y)
    with torch.no_grad():
        logits_t = teacher(x)
    return d, logits_s, logits_t, y, terms


def test_defaults_are_the_authors_cifar_settings():
    student, teacher = _models()
    names = ("dkd", "dist", "kd_ls", "dkd_ls", "nkd")
    hp = {m: kd.build(m, student, teacher).hparams() for m in names}
    assert hp["dkd"] == dict(
        T=4.0, alpha=1.0, beta=2.0, ce_weight=1.0, warmup_epochs=20
    )
    assert hp["dist"] == dict(tau=4.0, beta=2.0, gamma=2.0, ce_weight=1.0)
    assert hp["kd_ls"] == dict(T=2.0, ce_weight=0.1, kd_weight=9.0)
    assert hp["dkd_ls"] == dict(
        T=3.0, alpha=18.0, beta=36.0, ce_weight=1.0, warmup_epochs=20
    )
    assert hp["nkd"] == dict(T=3.0, gamma=3.5, ce_weight=1.0)


@pytest.mark.parametrize(
    ("name", "year"),
    [("dkd", 2022), ("dist", 2022), ("kd_ls", 2024), ("dkd_ls", 2024), ("nkd", 2023)],
)
def test_registered_after_the_survey_with_their_year(name, year):
    cls = kd.METHODS[name]
    assert (cls.status, cls.status_year, cls.survey_section) == ("after", year, "2.1")
    assert cls.__module__ == "kdutils.distillers.after_survey"
    assert cls.version == 1


def test_dkd_distiller_warms_its_term_up_over_its_epochs():
    student, teacher = _models()
    d = kd.build("dkd", student, teacher, warmup_epochs=4).train()
    assert d.hparams() == dict(
        T=4.0, alpha=1.0, beta=2.0, ce_weight=1.0, warmup_epochs=4
    )
    x, y = _batch()
    logits_s, terms = d(x, y)  # before any epoch: the full term
    with torch.no_grad():
        logits_t = teacher(x)
    full = losses.dkd_loss(logits_s, logits_t, y, 1.0, 2.0, 4.0)
    torch.testing.assert_close(terms["dkd"], full)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits_s, y))
    for epoch, w in [(0, 0.25), (1, 0.5), (3, 1.0), (9, 1.0)]:
        d.on_epoch(epoch, 10)
        torch.testing.assert_close(d(x, y)[1]["dkd"], w * full)


@pytest.mark.parametrize("method", ["dkd", "dkd_ls"])
def test_dkd_warm_up_is_scaled_to_the_run(method):
    """20 of the reference 240 epochs: 1 in an 8-epoch run, 10 in a 120-epoch one."""
    assert kd.make_config("quick", method=method).method_args["warmup_epochs"] == 1
    cfg = kd.make_config("paper", method=method, epochs=120)
    assert cfg.method_args["warmup_epochs"] == 10
    assert kd.make_config("paper", method=method).method_args["warmup_epochs"] == 20
    given = kd.make_config("quick", method=method, warmup_epochs=3)
    assert given.method_args["warmup_epochs"] == 3


def test_dist_distiller_terms():
    _, logits_s, logits_t, y, terms = _run("dist")
    assert set(terms) == {"ce", "dist"}
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits_s, y))
    torch.testing.assert_close(
        terms["dist"], losses.dist_loss(logits_s, logits_t, 2.0, 2.0, 4.0)
    )
    # The authors' form: kd_loss_weight 2 times DIST(beta=1, gamma=1, tau=4).
    torch.testing.assert_close(
        terms["dist"], 2.0 * losses.dist_loss(logits_s, logits_t, tau=4.0)
    )


def test_kd_ls_distiller_terms():
    _, logits_s, logits_t, y, terms = _run("kd_ls")
    torch.testing.assert_close(terms["ce"], 0.1 * F.cross_entropy(logits_s, y))
    z_s, z_t = losses.standardize_logits(logits_s), losses.standardize_logits(logits_t)
    torch.testing.assert_close(terms["kd"], 9.0 * losses.kd_loss(z_s, z_t, T=2.0))


def test_dkd_ls_distiller_terms_and_warm_up():
    d, logits_s, logits_t, y, terms = _run("dkd_ls", warmup_epochs=2)
    z_s, z_t = losses.standardize_logits(logits_s), losses.standardize_logits(logits_t)
    full = losses.dkd_loss(z_s, z_t, y, alpha=18.0, beta=36.0, T=3.0)
    torch.testing.assert_close(terms["dkd"], full)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits_s, y))
    d.on_epoch(0, 4)
    x, _ = _batch()
    torch.testing.assert_close(d(x, y)[1]["dkd"], 0.5 * full)


def test_nkd_distiller_terms():
    _, logits_s, logits_t, y, terms = _run("nkd")
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits_s, y))
    torch.testing.assert_close(
        terms["nkd"], losses.nkd_loss(logits_s, logits_t, y, T=3.0, gamma=3.5)
    )


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("dkd", dict(beta=-1.0)),
        ("dkd", dict(T=0.0)),
        ("dkd", dict(warmup_epochs=-1)),
        ("dkd_ls", dict(alpha=-1.0)),
        ("dkd_ls", dict(warmup_epochs=1.5)),
        ("dist", dict(tau=0.0)),
        ("dist", dict(gamma=-1.0)),
        ("kd_ls", dict(T=-2.0)),
        ("kd_ls", dict(kd_weight=-9.0)),
        ("nkd", dict(gamma=-0.5)),
        ("nkd", dict(T=0.0)),
    ],
)
def test_bad_hyperparameters_are_refused(name, bad):
    student, teacher = _models()
    key = next(iter(bad))
    with pytest.raises(ValueError, match="temperature" if key in ("T", "tau") else key):
        kd.build(name, student, teacher, **bad)
