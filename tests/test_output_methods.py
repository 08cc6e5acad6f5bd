"""Survey section 2.1: the better output losses against independent float64
computations of their definitions, their properties, bad input, and the
distillers that use them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from logit_cases import BATCH, CHANNELS, CLASSES
from logit_cases import batch as _batch
from logit_cases import labels as _labels
from logit_cases import log_softmax_np as _log_softmax
from logit_cases import logits as _logits
from logit_cases import models as _models
from logit_cases import to_np as _np

import kdutils as kd
from kdutils import losses
from kdutils.distillers.output import other_class_partners

# Conditional teacher-student learning


def cts_reference(s, t, y) -> float:
    """Per-sample loop: soft cross-entropy if argmax(t) == y, else -log p_s(y)."""
    total = 0.0
    for sb, tb, yb in zip(_np(s), _np(t), y.tolist(), strict=True):
        log_ps = _log_softmax(sb)
        if int(np.argmax(tb)) == yb:
            total += -(np.exp(_log_softmax(tb)) * log_ps).sum()
        else:
            total += -log_ps[yb]
    return total / len(y)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conditional_ts_equals_the_per_sample_definition(seed):
    s, t, _ = _logits(seed)
    y = _labels(seed)
    got = losses.conditional_ts_loss(s, t, y)
    assert got.shape == ()
    assert got.item() == pytest.approx(cts_reference(s, t, y), rel=1e-12)


def test_conditional_ts_reduces_to_its_two_sources():
    s, t, _ = _logits(3)
    # Every label the teacher's top class: soft cross-entropy with the teacher.
    y_right = t.argmax(1)
    soft = -(F.softmax(t, 1) * F.log_softmax(s, 1)).sum(1).mean()
    torch.testing.assert_close(losses.conditional_ts_loss(s, t, y_right), soft)
    # Every label another class: plain cross-entropy with the labels.
    y_wrong = (t.argmax(1) + 1) % t.shape[1]
    torch.testing.assert_close(
        losses.conditional_ts_loss(s, t, y_wrong), F.cross_entropy(s, y_wrong)
    )
    assert losses.teacher_correct(t, y_right).all()
    assert not losses.teacher_correct(t, y_wrong).any()


def test_conditional_ts_gradient_reaches_only_the_student():
    s, t, _ = _logits(4)
    s.requires_grad_(True)
    losses.conditional_ts_loss(s, t, _labels(4)).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert t.grad is None


# Dynamic temperature distillation


def dtd_reference(s, t, T, beta, gamma):
    """Temperatures and loss by explicit loops in float64 numpy."""
    s, t = _np(s), _np(t)
    w = np.array(
        [
            (1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) ** gamma
            for a, b in zip(s, t, strict=True)
        ]
    )
    tau = T + beta * (w.mean() - w)
    kl = []
    for sb, tb, tb_tau in zip(s, t, tau, strict=True):
        ls, lt = _log_softmax(sb / tb_tau), _log_softmax(tb / tb_tau)
        kl.append(tb_tau**2 * (np.exp(lt) * (lt - ls)).sum())
    return w, tau, float(np.mean(kl))


@pytest.mark.parametrize(("T", "beta", "gamma"), [(4, 1, 1), (4, 1.5, 2), (8, 3, 0.5)])
def test_dtd_equals_the_per_sample_definition(T, beta, gamma):
    s, t, _ = _logits(5)
    w, tau, loss = dtd_reference(s, t, T, beta, gamma)
    np.testing.assert_allclose(_np(losses.dtd_weights(s, t, gamma)), w, rtol=1e-10)
    np.testing.assert_allclose(
        _np(losses.dtd_temperatures(s, t, T, beta, gamma)), tau, rtol=1e-10
    )
    assert losses.dtd_loss(s, t, T, beta, gamma).item() == pytest.approx(
        loss, rel=1e-10
    )


def test_dtd_temperatures_average_to_T_and_cool_the_confusing_samples():
    s, t, _ = _logits(6)
    tau = losses.dtd_temperatures(s, t, T=4.0, beta=1.0)
    assert tau.mean().item() == pytest.approx(4.0, abs=1e-12)
    cos = F.cosine_similarity(s, t, dim=1)
    # The sample on which student and teacher disagree most is the coldest.
    assert cos.argmin() == tau.argmin() and cos.argmax() == tau.argmax()


def test_dtd_without_beta_is_hintons_kd():
    s, t, _ = _logits(7)
    torch.testing.assert_close(
        losses.dtd_loss(s, t, T=3.0, beta=0.0), losses.kd_loss(s, t, T=3.0)
    )


def test_dtd_temperatures_carry_no_gradient():
    s, t, _ = _logits(8)
    s.requires_grad_(True)
    tau = losses.dtd_temperatures(s, t)
    assert not tau.requires_grad
    # The loss's gradient is that of KD at the fixed per-sample temperatures.
    losses.dtd_loss(s, t).backward()
    s2 = s.detach().clone().requires_grad_(True)
    fixed = tau[:, None]
    kl = F.kl_div(
        F.log_softmax(s2 / fixed, 1),
        F.log_softmax(t / fixed, 1),
        log_target=True,
        reduction="none",
    ).sum(1)
    (fixed.squeeze(1) ** 2 * kl).mean().backward()
    torch.testing.assert_close(s.grad, s2.grad)


def test_dtd_rejects_temperatures_that_are_not_positive():
    s, t, _ = _logits(9)
    with pytest.raises(ValueError, match="T must be > 0"):
        losses.dtd_temperatures(s, t, T=0.0)
    with pytest.raises(ValueError, match="temperature fell"):
        losses.dtd_temperatures(s, t, T=0.5, beta=20.0)
    student, teacher = _models()
    with pytest.raises(ValueError, match="beta"):
        kd.build("dtd", student, teacher, T=2.0, beta=1.0, gamma=1.0)


def test_probability_shift_swaps_the_top_class_and_the_label():
    s, t, _ = _logits(10)
    y = _labels(10)
    got = losses.probability_shift(t, y)
    ref = _np(t).copy()
    for b, yb in enumerate(y.tolist()):
        top = int(np.argmax(ref[b]))
        ref[b, top], ref[b, yb] = ref[b, yb], ref[b, top]
    np.testing.assert_array_equal(_np(got), ref)
    assert (got.argmax(1) == y).all()
    right = losses.teacher_correct(t, y)
    torch.testing.assert_close(got[right], t[right])  # right rows untouched
    # Softened probabilities are permuted, not changed, at any temperature.
    for T in (1.0, 4.0):
        p, q = F.softmax(t / T, 1), F.softmax(got / T, 1)
        torch.testing.assert_close(p.sort(1).values, q.sort(1).values)


# Prime-aware adaptive distillation


def pad_reference(s, t, log_var, eps=1e-5) -> float:
    s, t, lv = _np(s), _np(t), _np(log_var)
    if lv.ndim == 1:
        lv = np.repeat(lv[:, None], s.shape[1], axis=1)
    total = 0.0
    for b in range(s.shape[0]):
        for d in range(s.shape[1]):
            total += (s[b, d] - t[b, d]) ** 2 / (np.exp(lv[b, d]) + eps) + lv[b, d]
    return total / s.size


@pytest.mark.parametrize("per_dim", [False, True])
@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.3])
def test_pad_equals_the_gaussian_likelihood(per_dim, eps):
    s, t, lv = _logits(11)
    log_var = lv if per_dim else lv[:, 0]
    got = losses.pad_loss(s, t, log_var, eps=eps)
    assert got.item() == pytest.approx(pad_reference(s, t, log_var, eps), rel=1e-12)


def test_pad_with_unit_variance_is_mse_and_its_best_variance_is_the_gap():
    s, t, _ = _logits(12)
    zero = torch.zeros(len(s), dtype=s.dtype)
    torch.testing.assert_close(losses.pad_loss(s, t, zero, eps=0.0), F.mse_loss(s, t))
    # d/d(log var) vanishes where sigma_b^2 = mean_d (s - t)^2.
    best = ((s - t) ** 2).mean(1).log().requires_grad_(True)
    losses.pad_loss(s, t, best, eps=0.0).backward()
    torch.testing.assert_close(best.grad, torch.zeros_like(best.grad))


def test_pad_eps_bounds_the_weight_of_a_vanishing_variance():
    s, t, _ = _logits(14)
    tiny = torch.full((len(s), s.shape[1]), -200.0, dtype=s.dtype)
    got = losses.pad_loss(s, t, tiny)  # 1 / (e^-200 + 1e-5) ~ 1e5, not e^200
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(pad_reference(s, t, tiny), rel=1e-9)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        losses.pad_loss(s, t, tiny, eps=-1.0)


def test_pad_rejects_a_log_variance_of_the_wrong_shape():
    s, t, _ = _logits(13)
    with pytest.raises(ValueError, match=r"log_var \(7, 2\)"):
        losses.pad_loss(s, t, torch.zeros(7, 2, dtype=s.dtype))
    with pytest.raises(ValueError, match=r"out_s \(7, 5\) and out_t \(7, 4\)"):
        losses.pad_loss(s, t[:, :4], torch.zeros(7, dtype=s.dtype))


# Triplet loss


def triplet_reference(s, t, n, margin, eps=1e-6) -> float:
    """mean_b max(0, |t - s + eps| - |t - n + eps| + margin), as torch's TripletMarginLoss."""
    s, t, n = _np(s), _np(t), _np(n)
    d_pos = np.sqrt(((t - s + eps) ** 2).sum(1))
    d_neg = np.sqrt(((t - n + eps) ** 2).sum(1))
    return float(np.maximum(0.0, d_pos - d_neg + margin).mean())


@pytest.mark.parametrize("margin", [0.0, 1.0, 5.0])
def test_triplet_equals_the_reference(margin):
    s, t, n = _logits(14)
    got = losses.triplet_kd_loss(s, t, n, margin)
    assert got.item() == pytest.approx(triplet_reference(s, t, n, margin), rel=1e-10)


def test_triplet_is_zero_when_the_negative_is_far_and_matches_torch():
    s, t, n = _logits(15)
    assert losses.triplet_kd_loss(t, t, t + 100.0, margin=5.0).item() == 0.0
    ref = torch.nn.TripletMarginLoss(margin=5.0)(t, s, n)
    torch.testing.assert_close(losses.triplet_kd_loss(s, t, n), ref)


def test_triplet_rejects_mismatched_shapes_and_negative_margins():
    s, t, n = _logits(16)
    with pytest.raises(ValueError, match=r"logits_neg \(6, 5\)"):
        losses.triplet_kd_loss(s, t, n[:6])
    with pytest.raises(ValueError, match="margin"):
        losses.triplet_kd_loss(s, t, n, margin=-1.0)


def test_other_class_partners_are_of_another_class():
    torch.manual_seed(0)
    y = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    j, valid = other_class_partners(y)
    assert valid.all() and (y[j] != y).all()
    j, valid = other_class_partners(torch.zeros(5, dtype=torch.long))
    assert not valid.any()


# Uncertainty-aware mixup


def test_prediction_entropy_is_the_entropy():
    s, _, _ = _logits(17)
    p = np.exp(_log_softmax(_np(s)))
    np.testing.assert_allclose(
        _np(losses.prediction_entropy(s)), -(p * np.log(p)).sum(1), rtol=1e-12
    )


@pytest.mark.parametrize(
    ("n", "b", "w"), [(64, 32, 10.0), (128, 64, 10.0), (8, 3, 1.0)]
)
def test_unix_mixing_weights_follow_the_authors_ramp(n, b, w):
    got = losses.unix_mixing_weights(n, b, w).double().numpy()
    m = (2 * b - 1) / (2 * n)
    ref = [1 / (1 + np.exp(-w * (r / n - m))) for r in range(n)]
    np.testing.assert_allclose(got, ref, rtol=1e-6)
    assert np.all(np.diff(got) > 0)  # more uncertain, less mixed


def test_unix_mixing_weights_with_a_sharp_ramp_are_a_step_at_b():
    got = losses.unix_mixing_weights(64, 32, w=1000.0)
    assert got[:32].max() < 1e-3 and got[32:].min() > 1 - 1e-3
    with pytest.raises(ValueError, match="b must be"):
        losses.unix_mixing_weights(8, 9)


def test_mixup_cross_entropy_is_the_mixed_label_loss():
    s, _, _ = _logits(18)
    y_a, y_b = _labels(18), _labels(19)
    coef = torch.linspace(0, 1, 7, dtype=s.dtype)
    ls = _log_softmax(_np(s))
    ref = np.mean(
        [
            (1 - c) * -ls[i, a] + c * -ls[i, b]
            for i, (a, b, c) in enumerate(
                zip(y_a.tolist(), y_b.tolist(), coef.tolist(), strict=True)
            )
        ]
    )
    got = losses.mixup_cross_entropy(s, y_a, y_b, coef)
    assert got.item() == pytest.approx(ref, rel=1e-12)
    with pytest.raises(ValueError, match="coef"):
        losses.mixup_cross_entropy(s, y_a, y_b, coef[:3])


# The distillers


def _snapshot(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_defaults_are_the_papers_or_stated():
    student, teacher = _models()
    assert kd.build("triplet", student, teacher).hparams() == dict(
        T=1.0, margin=5.0, ce_weight=1.0, kd_weight=1.0, triplet_weight=2.0
    )
    assert kd.build("unix", student, teacher).hparams() == dict(
        k_ratio=0.75, b_ratio=0.5, w=10.0, T=4.0, ce_weight=0.0, kd_weight=1.0
    )
    dtd = kd.build("dtd", student, teacher).hparams()
    assert (dtd["T"], dtd["ce_weight"], dtd["kd_weight"]) == (4.0, 0.1, 0.9)
    assert kd.build("cts", student, teacher).hparams() == {}


def test_cts_distiller_is_the_conditional_loss():
    student, teacher = _models()
    d = kd.build("cts", student, teacher).train()
    x, y = _batch()
    logits_s, terms = d(x, y)
    with torch.no_grad():
        logits_t = teacher(x)
    torch.testing.assert_close(
        terms["cts"], losses.conditional_ts_loss(logits_s, logits_t, y)
    )


@pytest.mark.parametrize("shift", [False, True])
def test_dtd_distiller_terms(shift):
    student, teacher = _models()
    d = kd.build("dtd", student, teacher, probability_shift=shift).train()
    x, y = _batch()
    logits_s, terms = d(x, y)
    with torch.no_grad():
        logits_t = teacher(x)
    if shift:
        logits_t = losses.probability_shift(logits_t, y)
    torch.testing.assert_close(terms["ce"], 0.1 * F.cross_entropy(logits_s, y))
    torch.testing.assert_close(terms["kd"], 0.9 * losses.dtd_loss(logits_s, logits_t))


def test_pad_distiller_is_the_likelihood_of_the_pooled_embeddings():
    student, teacher = _models()
    d = kd.build("pad", student, teacher, pad_weight=2.0).train()
    x, y = _batch()
    logits_s, terms = d(x, y)
    with torch.no_grad(), kd.capture(teacher, ["pool"]) as ft:
        teacher(x)
    with kd.capture(student, ["pool"]) as fs:
        student(x)
    # The head: a linear layer, then batch norm in training mode (batch statistics).
    z = _np(d.log_var_head[0](fs["pool"]))
    lv = (z - z.mean(0)) / np.sqrt(z.var(0) + d.log_var_head[1].eps)
    lv = lv * _np(d.log_var_head[1].weight) + _np(d.log_var_head[1].bias)
    want = 2.0 * pad_reference(fs["pool"], ft["pool"], torch.from_numpy(lv))
    assert terms["pad"].item() == pytest.approx(want, rel=1e-4)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits_s, y))
    sum(terms.values()).backward()
    assert d.log_var_head[0].weight.grad.abs().sum() > 0
    assert d.teacher_layers == ("pool",)


def test_pad_refuses_embeddings_of_different_widths():
    student = kd.create_model("resnet8", num_classes=CLASSES, in_channels=CHANNELS)
    wide = kd.create_model(
        "resnet8_w16-32-64-128", num_classes=CLASSES, in_channels=CHANNELS
    )
    with pytest.raises(
        ValueError, match=r"student pool \(64,\) != teacher pool \(128,\)"
    ):
        kd.build("pad", student, wide)


def test_triplet_distiller_terms_and_a_batch_of_one_class():
    student, teacher = _models()
    d = kd.build("triplet", student, teacher).train()
    x, y = _batch()
    torch.manual_seed(3)
    logits_s, terms = d(x, y)
    with torch.no_grad():
        logits_t = teacher(x)
    torch.manual_seed(3)
    j, valid = other_class_partners(y)
    expected = losses.triplet_kd_loss(
        logits_s[valid], logits_t[valid], logits_s[j[valid]]
    )
    torch.testing.assert_close(terms["triplet"], 2.0 * expected)
    torch.testing.assert_close(terms["kd"], losses.kd_loss(logits_s, logits_t, T=1.0))
    _, terms = d(x, torch.zeros_like(y))
    assert terms["triplet"].item() == 0.0 and terms["triplet"].requires_grad


def test_unix_sends_only_the_k_most_uncertain_images_to_the_teacher():
    """With an infinitely sharp ramp and b = B nothing is mixed: the distiller's
    KD term is KD on the k samples with the highest student entropy, and with
    precomputed teacher logits the teacher sees no image at all."""
    student, teacher = _models()
    d = kd.build("unix", student, teacher, k_ratio=0.5, b_ratio=1.0, w=1e4).train()
    x, y = _batch()
    state = _snapshot(d)
    with torch.no_grad():
        logits_t = teacher(x)
        scores = losses.prediction_entropy(student(x))
    pick = torch.argsort(scores, descending=True, stable=True)[:4]
    d.load_state_dict(state)
    logits_all, terms = d(x, y, teacher_out={"logits": logits_t})
    assert d.teacher_images == [0] and d.batch_images == [BATCH]
    assert logits_all.shape == (BATCH, CLASSES)
    d.load_state_dict(state)
    with torch.no_grad():
        student(x)  # the scoring pass moves the BN statistics first
    ref = losses.kd_loss(student(x[pick]), logits_t[pick], T=4.0)
    torch.testing.assert_close(terms["kd"], ref)


def test_unix_counts_teacher_images_per_epoch():
    student, teacher = _models()
    d = kd.build("unix", student, teacher).train()
    x, y = _batch()
    d.on_epoch(0, 2)
    d(x, y)
    d(x[:5], y[:5])
    d.on_epoch(1, 2)
    d(x, y)
    # k = round(0.75 B): 6 of 8, then 4 of 5 (round(3.75)); every image is mixed.
    assert d.teacher_images == [10, 6]
    assert d.batch_images == [13, 8]


def test_unix_mixed_label_cross_entropy():
    student, teacher = _models()
    d = kd.build("unix", student, teacher, ce_weight=1.0).train()
    x, y = _batch()
    torch.manual_seed(0)
    _, terms = d(x, y)
    assert torch.isfinite(terms["ce"]) and terms["ce"].item() > 0


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("unix", dict(k_ratio=0.0)),
        ("unix", dict(b_ratio=1.5)),
        ("unix", dict(T=0.0)),
        ("triplet", dict(margin=-1.0)),
        ("triplet", dict(triplet_weight=-1.0)),
        ("pad", dict(pad_weight=-0.5)),
        ("pad", dict(eps=-1.0)),
        ("dtd", dict(beta=-1.0)),
    ],
)
def test_bad_hyperparameters_are_refused(name, bad):
    student, teacher = _models()
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build(name, student, teacher, **bad)
