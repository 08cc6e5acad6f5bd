"""Multi-level logit distillation (MLKD, Jin et al. 2023): its losses against
independent float64 computations written the way the authors' code reads, its
strong view (kdutils.augment), and the distiller."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from logit_cases import log_softmax_np as _log_softmax
from logit_cases import logits
from logit_cases import models as _models
from logit_cases import to_np as _np
from PIL import Image, ImageOps

import kdutils as kd
from kdutils import augment, losses

TEMPS = (4.0, 3.0, 5.0, 2.0, 6.0)


def _softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(z))


def _kd_np(s, t, T) -> float:
    """KL(p_t || p_s) at T, summed over classes, mean over the batch, times T^2."""
    ls, lt = _log_softmax(s / T), _log_softmax(t / T)
    return float(np.mean(np.sum(np.exp(lt) * (lt - ls), axis=1)) * T * T)


def _gram_np(s, t, T, axis: str) -> float:
    """Loops over the entries of the Gram matrices (samples or classes)."""
    ps, pt = _softmax(s / T), _softmax(t / T)
    if axis == "batch":
        n, norm = ps.shape[0], ps.shape[0]
        entry = lambda p, i, j: sum(p[i, k] * p[j, k] for k in range(p.shape[1]))  # noqa: E731
    else:
        n, norm = ps.shape[1], ps.shape[1]
        entry = lambda p, i, j: sum(p[b, i] * p[b, j] for b in range(p.shape[0]))  # noqa: E731
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += (entry(pt, i, j) - entry(ps, i, j)) ** 2
    return total / norm


def _authors_np(ws, wt, ss, st, temps=TEMPS):
    """The authors' forward_train in numpy: reduced scalars times boolean masks,
    then the mean; the strong instance term at the last two temperatures on
    the weak logits; the strong batch- and class-level terms left out."""
    ws, wt, ss, st = (_np(a) for a in (ws, wt, ss, st))
    p = _softmax(wt)
    conf = p.max(axis=1)
    mask = conf <= np.percentile(conf, 50)
    cls = p.sum(axis=0)
    cmask = cls <= np.percentile(cls, 50)
    kd_w = sum((_kd_np(ws, wt, T) * mask).mean() for T in temps)
    kd_s = sum(_kd_np(ss, st, T) for T in temps[:3]) + sum(
        _kd_np(ws, wt, T) for T in temps[3:]
    )
    cc = sum((_gram_np(ws, wt, T, "class") * cmask).mean() for T in temps)
    bc = sum((_gram_np(ws, wt, T, "batch") * mask).mean() for T in temps)
    return {"kd": kd_w + kd_s, "cc": cc, "bc": bc}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_correlation_losses_match_entrywise_sums(seed, T):
    s, t = logits(seed, b=6, k=5, n=2)
    got_b = losses.batch_correlation_loss(s, t, T).item()
    got_c = losses.class_correlation_loss(s, t, T).item()
    assert got_b == pytest.approx(_gram_np(_np(s), _np(t), T, "batch"), rel=1e-10)
    assert got_c == pytest.approx(_gram_np(_np(s), _np(t), T, "class"), rel=1e-10)


def test_correlation_losses_vanish_for_identical_predictions_only():
    s, t = logits(3, n=2)
    for fn in (losses.batch_correlation_loss, losses.class_correlation_loss):
        assert fn(s, s, 4.0).item() == 0.0
        assert fn(s, t, 4.0).item() > 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_confidence_fractions_are_the_authors_masks_means(seed):
    _, t = logits(seed, b=9, k=6, n=2)
    p = _softmax(_np(t))
    conf, cls = p.max(axis=1), p.sum(axis=0)
    f_s, f_c = losses.confidence_fractions(t)
    assert f_s.item() == pytest.approx((conf <= np.percentile(conf, 50)).mean())
    assert f_c.item() == pytest.approx((cls <= np.percentile(cls, 50)).mean())
    assert f_s.item() >= 0.5 and f_c.item() >= 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mlkd_loss_matches_the_authors_forward(seed):
    ws, wt, ss, st = logits(seed, b=8, k=5, n=4)
    got = losses.mlkd_loss(ws, wt, ss, st)
    want = _authors_np(ws, wt, ss, st)
    assert set(got) == {"kd", "cc", "bc"}
    for k in want:
        assert got[k].item() == pytest.approx(want[k], rel=1e-9), k


def test_mlkd_loss_strong_view_enters_only_three_instance_terms():
    ws, wt, ss, st = logits(5, b=8, k=5, n=4)
    moved_ss = ss + torch.randn(ss.shape, dtype=ss.dtype)
    base = losses.mlkd_loss(ws, wt, ss, st)
    moved = losses.mlkd_loss(ws, wt, moved_ss, st)
    assert moved["cc"].item() == base["cc"].item()
    assert moved["bc"].item() == base["bc"].item()
    want = sum(
        _kd_np(_np(moved_ss), _np(st), T) - _kd_np(_np(ss), _np(st), T)
        for T in TEMPS[:3]
    )
    assert moved["kd"].item() - base["kd"].item() == pytest.approx(want, rel=1e-9)


def test_mlkd_loss_is_zero_when_the_student_is_the_teacher():
    ws, ss = logits(7, n=2)
    out = losses.mlkd_loss(ws, ws, ss, ss)
    for v in out.values():
        assert abs(v.item()) < 1e-12


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(temperatures=(4.0, 3.0)), "5 values"),
        (dict(temperatures=(4.0, 3.0, 5.0, 2.0, 0.0)), "T"),
    ],
)
def test_mlkd_loss_rejects_bad_temperatures(kwargs, match):
    ws, wt, ss, st = logits(0, n=4)
    with pytest.raises(ValueError, match=match):
        losses.mlkd_loss(ws, wt, ss, st, **kwargs)


def test_mlkd_loss_rejects_mismatched_shapes():
    ws, wt, ss, st = logits(0, n=4)
    with pytest.raises(ValueError, match="same shape"):
        losses.mlkd_loss(ws, wt, ss[:, :3], st[:, :3])
    with pytest.raises(ValueError, match="same shape"):
        losses.batch_correlation_loss(ws, wt[:3], 4.0)


# The strong view


def _images(seed=0, b=6, c=3, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("c", [1, 3])
def test_rand_augment_keeps_shape_and_type_and_is_seeded(c):
    x = _images(c=c)
    torch.manual_seed(0)
    a = augment.rand_augment(x)
    torch.manual_seed(0)
    b = augment.rand_augment(x)
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, b)
    assert not torch.equal(a, x)


def test_rand_augment_follows_its_draws(monkeypatch):
    """With the draws fixed, the result is the named Pillow operations, then
    Cutout, applied to each image."""
    x = _images(b=1, c=3)
    names = list(augment.RANDAUGMENT_OPS)
    draws = iter([torch.tensor([[names.index("Rotate"), names.index("Posterize")]])])
    monkeypatch.setattr(augment.torch, "randint", lambda *a, **k: next(draws))
    rands = iter([torch.tensor([[0.75, 0.0]]), torch.tensor([[0.5, 0.0, 1.0]])])
    monkeypatch.setattr(augment.torch, "rand", lambda *a, **k: next(rands))
    got = augment.rand_augment(x)
    img = Image.fromarray(x[0].numpy().transpose(1, 2, 0), mode="RGB")
    img = ImageOps.posterize(img.rotate(-30 + 60 * 0.75), 4)
    # Cutout: side 0.25 * 16 = 4 px, centre (16 + (1 - 16) * 0, 16 + (1 - 16) * 1) = (16, 1)
    img = augment.cutout(img, 4.0, 16.0, 1.0)
    want = torch.from_numpy(np.array(img).transpose(2, 0, 1).copy())
    assert torch.equal(got[0], want)


def test_cutout_paints_the_authors_rectangle():
    img = Image.new("L", (10, 10), 0)
    out = np.array(augment.cutout(img, 4.0, 5.0, 3.0))
    # corner (5 - 2, 3 - 2) = (3, 1), far corner (7, 5), both included
    assert (out[1:6, 3:8] == augment.CUTOUT_FILL["L"]).all()
    assert out.sum() == 25 * augment.CUTOUT_FILL["L"]
    assert np.array(augment.cutout(img, 0.0, 5.0, 5.0)).sum() == 0


def test_color_leaves_a_grey_image_alone():
    img = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8), mode="L")
    assert np.array_equal(np.array(augment.apply_op(img, "Color", 0.1)), np.array(img))


def test_rand_augment_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        augment.rand_augment(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        augment.rand_augment(torch.zeros(2, 2, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="n must be"):
        augment.rand_augment(_images(), n=-1)
    with pytest.raises(ValueError, match="unknown operation"):
        augment.apply_op(Image.new("L", (4, 4)), "Blur", 1.0)


# The distiller


class _Data:
    """What setup() reads: the data set's info (here CIFAR-10's)."""

    info = kd.data.DATASETS["cifar10"]


def _distiller(**kw):
    student, teacher = _models()
    d = kd.distillers.build("mlkd", student, teacher, **kw)
    d.setup(_Data())
    return d


def _normalised_batch(seed=0, b=8):
    x = kd.data.normalize(_images(seed, b=b, c=3, size=16), _Data.info)
    y = torch.randint(0, 10, (b,), generator=torch.Generator().manual_seed(seed))
    return x, y


def test_strong_view_undoes_the_normalisation_exactly(monkeypatch):
    d = _distiller()
    x, _ = _normalised_batch()
    monkeypatch.setattr(
        "kdutils.distillers.after_survey_levels.rand_augment", lambda u8, n: u8
    )
    assert torch.allclose(d.strong_view(x), x, atol=1e-6)


def test_distiller_terms_and_weights():
    torch.manual_seed(0)
    d = _distiller(ce_weight=0.5, kd_weight=2.0)
    x, y = _normalised_batch()
    torch.manual_seed(1)
    logits_s, terms = d(x, y)
    assert set(terms) == {"ce", "kd", "cc", "bc"}
    assert logits_s.shape == (8, 10)
    # the same strong view again, to recompute the terms by hand
    torch.manual_seed(1)
    xs = d.strong_view(x)
    with torch.no_grad():
        ws, ss = d.student(x), d.student(xs)
        wt, st = d.teacher(x), d.teacher(xs)
    want = losses.mlkd_loss(ws, wt, ss, st, (4.0, 3.0, 5.0, 2.0, 6.0))
    for k in want:
        assert terms[k].item() == pytest.approx(2.0 * want[k].item(), rel=1e-4)
    ce = torch.nn.functional.cross_entropy
    assert terms["ce"].item() == pytest.approx(
        0.5 * (ce(ws, y) + ce(ss, y)).item(), rel=1e-4
    )


def test_distiller_needs_setup_and_checks_its_hyperparameters():
    student, teacher = _models()
    d = kd.distillers.build("mlkd", student, teacher)
    x, y = _normalised_batch()
    with pytest.raises(RuntimeError, match="setup"):
        d(x, y)
    for kw in (dict(T=0.0), dict(n_ops=-1), dict(kd_weight=-1.0)):
        with pytest.raises(ValueError):
            kd.distillers.build("mlkd", student, teacher, **kw)


def test_mlkd_is_registered_after_the_survey():
    cls = kd.distillers.get_method("mlkd")
    assert cls.status == "after" and cls.status_year == 2023
    assert cls.survey_section == "2.1"
