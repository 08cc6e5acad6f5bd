"""Knowledge extracted from feature maps (survey 2.2.2): losses and distillers.

Each loss is checked against an independent float64 numpy computation of its
reference definition, written with explicit loops; then properties, the clear
errors for bad input, and what each Distiller adds to the registry-wide tests
of ``test_distillers.py``.
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import kdutils as kd  # noqa: E402
from kdutils.losses import (  # noqa: E402
    afd_loss,
    afm_loss,
    at_loss,
    attention_map,
    fsp_loss,
    fsp_matrix,
    hcl_loss,
    nst_loss,
)

B = 3


def _maps(*shapes, seed=0, relu=True):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(B, *s, generator=g, dtype=torch.float64) for s in shapes]
    return [f.relu() if relu else f for f in out]


def _np(t):
    return t.detach().double().numpy()


def _block_mean(a, h, w):
    """Average-pool ``a`` (B, C, H, W) to (h, w) when H, W are multiples of h, w."""
    b, c, hh, ww = a.shape
    return a.reshape(b, c, h, hh // h, w, ww // w).mean(axis=(3, 5))


def _pool_pair(a, b):
    if a.shape[2] > b.shape[2]:
        return _block_mean(a, *b.shape[2:]), b
    if b.shape[2] > a.shape[2]:
        return a, _block_mean(b, *a.shape[2:])
    return a, b


# AT


def _at_reference(feats_s, feats_t, p):
    total = 0.0
    for s, t in zip(feats_s, feats_t, strict=True):
        s, t = _pool_pair(_np(s), _np(t))
        diffs = []
        for b in range(s.shape[0]):
            qs = (s[b] ** p).mean(0).ravel()
            qt = (t[b] ** p).mean(0).ravel()
            qs, qt = qs / np.sqrt((qs**2).sum()), qt / np.sqrt((qt**2).sum())
            diffs.extend((qs - qt) ** 2)
        total += np.mean(diffs)
    return total


@pytest.mark.parametrize("p", [1.0, 2.0, 4.0])
def test_at_loss_matches_the_reference(p):
    # Student maps larger, smaller and equal to the teacher's; channels differ.
    feats_s = _maps((4, 8, 8), (8, 4, 4), (6, 2, 2))
    feats_t = _maps((16, 4, 4), (5, 8, 8), (3, 2, 2), seed=1)
    ours = at_loss(feats_s, feats_t, p)
    assert ours.item() == pytest.approx(_at_reference(feats_s, feats_t, p), rel=1e-10)


def test_attention_map_is_unit_norm_and_scale_invariant():
    (f,) = _maps((5, 6, 7))
    q = attention_map(f)
    assert q.shape == (B, 42)
    torch.testing.assert_close(q.norm(dim=1), torch.ones(B, dtype=torch.float64))
    torch.testing.assert_close(attention_map(3.0 * f), q)


def test_at_loss_is_zero_for_identical_maps_and_positive_otherwise():
    feats = _maps((4, 8, 8), (8, 4, 4))
    assert at_loss(feats, feats).item() == 0.0
    assert at_loss(feats, _maps((4, 8, 8), (8, 4, 4), seed=2)).item() > 0


def test_at_loss_gradient_reaches_only_the_student():
    feats_s = [f.requires_grad_() for f in _maps((4, 8, 8))]
    feats_t = _maps((4, 8, 8), seed=1)
    at_loss(feats_s, feats_t).backward()
    assert feats_s[0].grad is not None and feats_t[0].grad is None


# FSP


def _fsp_reference(feats_s, feats_t):
    def fsp(a, b):
        a, b = _pool_pair(_np(a), _np(b))
        n, c1, h, w = a.shape
        g = np.zeros((n, c1, b.shape[1]))
        for k in range(n):
            for i in range(c1):
                for j in range(b.shape[1]):
                    g[k, i, j] = (a[k, i] * b[k, j]).sum() / (h * w)
        return g

    return sum(
        (
            (fsp(feats_s[i], feats_s[i + 1]) - fsp(feats_t[i], feats_t[i + 1])) ** 2
        ).mean()
        for i in range(len(feats_s) - 1)
    )


def test_fsp_loss_matches_the_reference():
    shapes = [(3, 8, 8), (4, 8, 8), (5, 4, 4), (6, 2, 2)]
    feats_s, feats_t = _maps(*shapes), _maps(*shapes, seed=1)
    ours = fsp_loss(feats_s, feats_t)
    assert ours.item() == pytest.approx(_fsp_reference(feats_s, feats_t), rel=1e-10)


def test_fsp_matrix_shape_and_pooling():
    a, b = _maps((3, 8, 8), (5, 4, 4))
    g = fsp_matrix(a, b)
    assert g.shape == (B, 3, 5)
    pooled = torch.nn.functional.avg_pool2d(a, 2)
    torch.testing.assert_close(g, fsp_matrix(pooled, b))


def test_fsp_loss_errors_name_the_shapes():
    feats_s = _maps((3, 8, 8), (4, 4, 4))
    with pytest.raises(ValueError, match=r"4 student channels but 5.*\(3, 5, 4, 4\)"):
        fsp_loss(feats_s, _maps((3, 8, 8), (5, 4, 4)))
    with pytest.raises(ValueError, match="at least two"):
        fsp_loss(feats_s[:1], feats_s[:1])
    with pytest.raises(ValueError, match="2 student maps but 1 teacher"):
        fsp_loss(feats_s, feats_s[:1])


# NST


def _nst_reference(feats_s, feats_t):
    total = 0.0
    for s, t in zip(feats_s, feats_t, strict=True):
        s, t = _pool_pair(_np(s), _np(t))
        s = s.reshape(*s.shape[:2], -1)
        t = t.reshape(*t.shape[:2], -1)
        s = s / np.linalg.norm(s, axis=2, keepdims=True)
        t = t / np.linalg.norm(t, axis=2, keepdims=True)

        def k_mean(a, b):
            vals = [
                (a[n, i] @ b[n, j]) ** 2
                for n in range(a.shape[0])
                for i in range(a.shape[1])
                for j in range(b.shape[1])
            ]
            return np.mean(vals)

        total += k_mean(t, t) + k_mean(s, s) - 2 * k_mean(s, t)
    return total


def test_nst_loss_matches_the_reference():
    # Not rectified: a 2x2 channel of zeros would have no direction.
    feats_s = _maps((4, 8, 8), (6, 2, 2), relu=False)
    feats_t = _maps((7, 4, 4), (6, 4, 4), seed=1, relu=False)
    ours = nst_loss(feats_s, feats_t)
    assert ours.item() == pytest.approx(_nst_reference(feats_s, feats_t), rel=1e-10)


def test_nst_loss_properties():
    feats = _maps((4, 8, 8))
    assert nst_loss(feats, feats).item() == pytest.approx(0.0, abs=1e-12)
    other = _maps((4, 8, 8), seed=3)
    assert nst_loss(feats, other).item() > 0
    # Each channel is normalised: rescaling channels changes nothing.
    scale = torch.rand(1, 4, 1, 1, dtype=torch.float64) + 0.5
    torch.testing.assert_close(
        nst_loss([feats[0] * scale], other), nst_loss(feats, other)
    )


def test_pooling_refuses_maps_neither_larger():
    with pytest.raises(ValueError, match="neither map is larger"):
        nst_loss(_maps((2, 8, 4)), _maps((2, 4, 8)))
    with pytest.raises(ValueError, match=r"pair 0 must be \(B, C, H, W\)"):
        at_loss([torch.zeros(2, 3, 4)], [torch.zeros(2, 3, 4)])


# AFD


def _afd_reference(feats_s, feats_t, rhos, eps=1e-6):
    total = 0.0
    for s, t, rho in zip(feats_s, feats_t, rhos, strict=True):
        s, t, rho = _np(s), _np(t), _np(rho)
        per_sample = []
        for n in range(s.shape[0]):
            acc = 0.0
            for c in range(s.shape[1]):
                a = s[n, c] / (np.sqrt((s[n, c] ** 2).sum()) + eps)
                b = t[n, c] / (np.sqrt((t[n, c] ** 2).sum()) + eps)
                acc += rho[n, c] * ((a - b) ** 2).mean()
            per_sample.append(acc)
        total += np.mean(per_sample)
    return total / len(feats_s)


def test_afd_loss_matches_the_reference():
    shapes = [(4, 8, 8), (6, 4, 4)]
    feats_s, feats_t = _maps(*shapes), _maps(*shapes, seed=1)
    g = torch.Generator().manual_seed(2)
    rhos = [torch.rand(B, c, generator=g, dtype=torch.float64) for c in (4, 6)]
    rhos = [r / r.sum(1, keepdim=True) for r in rhos]
    ours = afd_loss(feats_s, feats_t, rhos)
    assert ours.item() == pytest.approx(
        _afd_reference(feats_s, feats_t, rhos), rel=1e-10
    )


def test_afd_loss_needs_equal_shapes():
    rho = torch.full((B, 4), 0.25, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"pair 0.*\(3, 4, 8, 8\), \(3, 4, 4, 4\)"):
        afd_loss(_maps((4, 8, 8)), _maps((4, 4, 4)), [rho])


# AFM


def test_afm_loss_matches_the_reference():
    g = torch.Generator().manual_seed(0)
    n_s, sizes = 3, (16, 4)
    values_s = [
        torch.rand(B, n_s, hw, generator=g, dtype=torch.float64) for hw in sizes
    ]
    values_t = [torch.rand(B, hw, generator=g, dtype=torch.float64) for hw in sizes]
    att = torch.softmax(
        torch.randn(B, len(sizes), n_s, generator=g, dtype=torch.float64), 2
    )
    expected = 0.0
    for t in range(len(sizes)):
        vs, vt, a = _np(values_s[t]), _np(values_t[t]), _np(att)
        expected += np.mean(
            [
                sum(a[b, t, s] * ((vs[b, s] - vt[b]) ** 2).mean() for s in range(n_s))
                for b in range(B)
            ]
        )
    ours = afm_loss(values_s, values_t, att)
    assert ours.item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="teacher layer 1"):
        afm_loss(values_s, [values_t[0], values_t[0]], att)


# ReviewKD's hierarchical context loss


def test_hcl_loss_matches_the_reference():
    shapes = [(4, 8, 8), (5, 4, 4), (6, 2, 2), (7, 1, 1)]
    feats_s, feats_t = _maps(*shapes, relu=False), _maps(*shapes, seed=1, relu=False)
    expected = 0.0
    for s, t in zip(feats_s, feats_t, strict=True):
        s, t = _np(s), _np(t)
        h = s.shape[2]
        terms, weights, w = [((s - t) ** 2).mean()], [1.0], 1.0
        for level in (4, 2, 1):
            if level < h:
                w /= 2
                ps, pt = _block_mean(s, level, level), _block_mean(t, level, level)
                terms.append(w * ((ps - pt) ** 2).mean())
                weights.append(w)
        expected += sum(terms) / sum(weights)
    ours = hcl_loss(feats_s, feats_t)
    assert ours.item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="teacher's shape"):
        hcl_loss(feats_s[:1], feats_t[1:2])


# The distillers


SIZE = 16


def _pair(teacher="resnet14", seed=0):
    torch.manual_seed(seed)
    return kd.create_model("resnet8"), kd.create_model(teacher)


def _data(n=16):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    return kd.data.TensorData(images, torch.arange(n) % 10, "cifar10")


def _x(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 3, SIZE, SIZE, generator=g), torch.arange(4)


def _built(name, teacher="resnet14", **hp):
    student, t = _pair(teacher)
    d = kd.build(name, student, t, **hp)
    d.setup(_data())
    return d.train()


def test_defaults_are_the_reference_codes():
    assert _built("at").hparams() == {"p": 2.0, "ce_weight": 1.0, "at_weight": 1000.0}
    assert _built("nst").hparams() == {"ce_weight": 1.0, "nst_weight": 50.0}
    assert _built("afd").hparams() == {
        "ce_weight": 1.0,
        "afd_weight": 500.0,
        "att_f": 1.0,
    }
    assert _built("fsp").hparams() == {
        "ce_weight": 1.0,
        "fsp_weight": 0.0,
        "init_epochs": 30,
        "init_lr": 0.05,
    }
    assert _built("afm").hparams() == {
        "ce_weight": 1.0,
        "kd_weight": 0.9,
        "T": 4.0,
        "afm_weight": 200.0,
        "qk_dim": 128,
    }
    assert _built("reviewkd").hparams() == {
        "ce_weight": 1.0,
        "reviewkd_weight": 0.6,
        "warmup_epochs": 20.0,
        "max_mid_channels": 512,
    }


@pytest.mark.parametrize(
    "name, term, loss",
    [("at", "at", at_loss), ("nst", "nst", nst_loss)],
)
def test_stage_terms_are_the_weighted_losses_on_the_stage_outputs(name, term, loss):
    d = _built(name, ce_weight=0.5, **{f"{term}_weight": 7.0})
    x, y = _x()
    with kd.capture(d.student, ["layer1", "layer2", "layer3"]) as fs:
        logits, terms = d(x, y)
    t = d.teacher_outputs(x)
    feats_s = [fs[k] for k in ("layer1", "layer2", "layer3")]
    feats_t = [t[k] for k in ("layer1", "layer2", "layer3")]
    torch.testing.assert_close(terms[term], 7.0 * loss(feats_s, feats_t))
    ce = torch.nn.functional.cross_entropy(logits, y)
    torch.testing.assert_close(terms["ce"], 0.5 * ce)


def test_at_and_nst_accept_a_wider_teacher():
    for name in ("at", "nst"):
        d = _built(name, teacher="resnet8x4")
        _, terms = d(*_x())
        assert all(torch.isfinite(v) for v in terms.values())


@pytest.mark.parametrize("name", ["afd", "fsp"])
def test_shape_mismatch_is_a_clear_error_naming_the_layers(name):
    student, teacher = _pair("resnet8x4")
    d = kd.build(name, student, teacher)
    with pytest.raises(
        ValueError, match=r"'(stem|layer1)' \(16, 16, 16\).*\((32|64), 16, 16\)"
    ):
        d.setup(_data())


def test_fsp_stage_one_lowers_the_fsp_loss_and_stage_two_is_the_task():
    d = _built("fsp", init_epochs=3, init_lr=0.05)
    data = _data(32)
    loader = kd.data.Loader(data, 8, seed=0)
    x = kd.data.normalize(data.images, data.info)
    d.eval()
    with torch.no_grad():
        before = d.fsp_terms(x).item()
    d.prepare(loader)
    d.eval()
    with torch.no_grad():
        after = d.fsp_terms(x).item()
    assert after < before
    d.train()
    _, terms = d(*_x())
    assert set(terms) == {"ce"} and d.teacher_layers == ()
    d_on = _built("fsp", fsp_weight=2.0)
    _, terms = d_on(*_x())
    assert set(terms) == {"ce", "fsp"} and d_on.teacher_layers[0] == "stem"


def test_afd_channel_weights_are_a_distribution_and_learn():
    d = _built("afd")
    t = d.teacher_outputs(_x()[0])
    rhos = d.channel_weights([t[k] for k in d.teacher_layers])
    for rho, c in zip(rhos, (16, 32, 64), strict=True):
        assert rho.shape == (4, c) and (rho > 0).all()
        torch.testing.assert_close(rho.sum(1), torch.ones(4))
    _, terms = d(*_x())
    terms["afd"].backward()
    assert all(p.grad is not None for p in d.attention.parameters())


def test_afm_attends_over_every_student_block_and_packs_teacher_summaries():
    d = _built("afm")  # resnet8 (3 blocks) <- resnet14 (6 blocks)
    assert d.student_layers == ("layer1.0", "layer2.0", "layer3.0")
    assert len(d.teacher_layers) == 6
    x, y = _x()
    t = d.teacher_outputs(x)
    with kd.capture(d.teacher, ["layer2.1"]) as raw:
        d.teacher(x)
    f = raw["layer2.1"]  # (4, 32, 8, 8) -> 32 channel means + 64 map entries
    assert t["layer2.1"].shape == (4, 32 + 64)
    torch.testing.assert_close(t["layer2.1"][:, 32:], attention_map(f))
    with kd.capture(d.student, d.student_layers) as fs:
        d.student(x)
    chan_t = [t[k][:, :c] for k, c in zip(d.teacher_layers, d._channels_t, strict=True)]
    att = d.attention([fs[k] for k in d.student_layers], chan_t)
    assert att.shape == (4, 6, 3)
    torch.testing.assert_close(att.sum(2), torch.ones(4, 6))
    _, terms = d(x, y)
    assert set(terms) == {"ce", "kd", "afm"}


def test_reviewkd_fuses_to_the_teachers_shapes_and_warms_up():
    d = _built("reviewkd", teacher="resnet8x4")  # stages 16/32/64 -> 64/128/256
    x, y = _x()
    with kd.capture(d.student, d.student_layers) as fs:
        d.student(x)
    outs = d.review([fs[k] for k in d.student_layers])
    t = d.teacher_outputs(x)
    assert [tuple(o.shape) for o in outs] == [
        (4, 64, 16, 16),
        (4, 128, 8, 8),
        (4, 256, 4, 4),
        (4, 256, 1, 1),
    ]
    assert tuple(t["layer3.0.preact"].shape) == (4, 256, 4, 4)
    d.on_epoch(0, 240)
    assert d(x, y)[1]["reviewkd"].item() == 0.0
    d.on_epoch(5, 240)
    quarter = d(x, y)[1]["reviewkd"].item()
    d.on_epoch(30, 240)
    full = d(x, y)[1]["reviewkd"].item()
    assert d.warmup == 1.0 and quarter == pytest.approx(full / 4, rel=1e-6)


@pytest.mark.parametrize("name", ["at", "fsp", "nst", "afd", "afm", "reviewkd"])
def test_a_short_training_run_goes_end_to_end(name, digits_config):
    overrides = {"fsp": dict(init_epochs=1), "reviewkd": dict(warmup_epochs=1.0)}
    cfg = digits_config(method=name, epochs=1, **overrides.get(name, {}))
    res = kd.run(cfg, progress=False)
    assert 0.0 <= res.test_acc <= 1.0
    assert math.isfinite(res.history[-1][f"train_{'ce'}"])


# The chapter's figures


def test_attention_maps_and_fsp_matrices_figures():
    maps = {"teacher": np.random.rand(2, 4, 4), "student": np.random.rand(2, 4, 4)}
    fig = kd.plots.attention_maps(np.zeros((2, 1, 8, 8)), maps, captions=["a", "b"])
    assert len(fig.axes) == 2 * 3
    assert [fig.axes[j].get_title() for j in (1, 2)] == ["teacher", "student"]
    fig = kd.plots.fsp_matrices(
        {"teacher": np.eye(3), "student": -np.eye(3)}, "l1", "l2"
    )
    assert len(fig.axes) == 3  # two matrices and one shared colour bar
    assert (
        fig.axes[0].images[0].get_clim() == fig.axes[1].images[0].get_clim() == (-1, 1)
    )


def test_context_pyramid_shows_the_levels_hcl_weighs():
    fig = kd.plots.context_pyramid(np.random.rand(7, 7))
    assert [ax.get_title() for ax in fig.axes] == [
        "full map, weight 1",
        "4x4 pool, weight 0.5",
        "2x2 pool, weight 0.25",
        "1x1 pool, weight 0.125",
    ]
    assert len(kd.plots.context_pyramid(np.random.rand(2, 2)).axes) == 2
