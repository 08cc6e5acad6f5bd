"""Self-distillation with a self-teacher (survey 2.3.2): FRSKD.

The self-teacher's BiFPN layer against a re-computation written level by
level from the authors' description, its 'same' max pooling against numpy,
FRSKD's four terms against float64 references with explicit loops, what
each term trains, the self-teacher's accuracy metric, bad inputs, and a
short run through ``kd.run``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdutils as kd
from kdutils.distillers.selfkd_refined import SelfTeacher, _maxpool_same

B, K, C, S = 6, 10, 3, 16


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, S, S, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    return x, y


def _frskd(seed: int = 0, **kw):
    torch.manual_seed(seed)
    student = kd.create_model("resnet8", num_classes=K, in_channels=C)
    return kd.build("frskd", student, **kw)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


@pytest.mark.parametrize("size", [4, 7, 8, 13, 28])
def test_same_max_pooling_against_numpy(size):
    g = torch.Generator().manual_seed(size)
    x = torch.rand(2, 3, size, size, generator=g)
    out = _maxpool_same(x)
    n = math.ceil(size / 2)
    assert out.shape == (2, 3, n, n)
    pad = (n - 1) * 2 - size + 3  # TensorFlow's 'same': the extra row at the end
    lo = pad // 2
    a = np.zeros((2, 3, size + pad, size + pad))
    a[:, :, lo : lo + size, lo : lo + size] = _np(x)
    for i in range(n):
        for j in range(n):
            ref = a[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(2, 3))
            np.testing.assert_allclose(_np(out[:, :, i, j]), ref, rtol=1e-6)


def _bifpn_reference(st: SelfTeacher, feats):
    """The BiFPN layer level by level: lateral, top-down, bottom-up."""

    def w(p):
        v = p.clamp_min(0)
        return v / (v.sum() + 1e-6)

    f1, f2, f3 = (F.relu(f) for f in feats)
    p1, p2, p3 = (st.lateral[i](f) for i, f in enumerate((f1, f2, f3)))
    q2, q3 = st.lateral2[0](f2), st.lateral2[1](f3)
    # Top-down: level 3 is P3; level 2 fuses P2 with upsampled level 3, etc.
    a = w(st.up_weight[1])
    t2 = st.up_conv[1](a[0] * p2 + a[1] * st.up[1](F.interpolate(p3, scale_factor=2)))
    a = w(st.up_weight[0])
    t1 = st.up_conv[0](
        a[0] * p1 + a[1] * st.up[0](F.interpolate(F.relu(t2), scale_factor=2))
    )
    # Bottom-up: level 1 is T1; levels 2 and 3 take the pooled level below.
    pool = lambda t: F.max_pool2d(F.pad(F.relu(t), [0, 1, 0, 1]), 3, 2)  # noqa: E731
    a = w(st.down_weight[0])
    r2 = st.down_conv[0](a[0] * q2 + a[1] * F.relu(t2) + a[2] * st.down[0](pool(t1)))
    a = w(st.down_weight[1])
    r3 = st.down_conv[1](a[0] * q3 + a[1] * st.down[1](pool(r2)))
    refined = [F.relu(t1), F.relu(r2), F.relu(r3)]
    return refined, st.fc(refined[-1].mean((2, 3)))


def test_the_self_teacher_against_a_level_by_level_recomputation():
    d = _frskd().double().eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in (*d.self_teacher.up_weight, *d.self_teacher.down_weight):
            p.copy_(torch.rand(p.shape, generator=g, dtype=torch.float64) - 0.2)
    x = torch.randn(B, C, S, S, generator=g, dtype=torch.float64)
    _, maps, logits_t, refined = d.outputs(x)
    ref_maps, ref_logits = _bifpn_reference(d.self_teacher, maps)
    assert [tuple(r.shape[1:]) for r in refined] == [
        (32, 16, 16),
        (64, 8, 8),
        (128, 4, 4),
    ]
    for a, b in zip(refined, ref_maps, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(logits_t, ref_logits)


def _kd_loops(s, t, T):
    total = 0.0
    for b in range(s.shape[0]):
        p_t = np.exp(_np(t[b]) / T - (_np(t[b]) / T).max())
        p_t /= p_t.sum()
        log_p_s = _np(s[b]) / T - np.log(np.exp(_np(s[b]) / T).sum())
        total += sum(p_t[k] * (np.log(p_t[k]) - log_p_s[k]) for k in range(len(p_t)))
    return T**2 * total / s.shape[0]


def _at_loops(maps_s, maps_t):
    total = 0.0
    for fs, ft in zip(maps_s, maps_t, strict=True):
        fs, ft = _np(fs), _np(ft)
        err = 0.0
        for b in range(fs.shape[0]):
            qs = (fs[b] ** 2).mean(0).ravel()
            qt = (ft[b] ** 2).mean(0).ravel()
            err += ((qs / np.linalg.norm(qs) - qt / np.linalg.norm(qt)) ** 2).sum()
        total += err / (fs.shape[0] * fs.shape[2] * fs.shape[3])
    return total


def test_frskd_terms_against_float64_loops():
    d = _frskd().double().train()
    x, y = _batch()
    x = x.double()
    state = {k: v.clone() for k, v in d.state_dict().items()}
    logits, terms = d(x, y)
    d.load_state_dict(state)  # the same batch-norm statistics for the re-run
    z, maps, z_t, refined = d.outputs(x)
    torch.testing.assert_close(logits, z)
    assert set(terms) == {"ce", "self_ce", "kd", "at"}
    torch.testing.assert_close(terms["ce"], F.cross_entropy(z, y))
    torch.testing.assert_close(terms["self_ce"], F.cross_entropy(z_t, y))
    assert terms["kd"].item() == pytest.approx(2.0 * _kd_loops(z, z_t, 4.0), rel=1e-9)
    assert terms["at"].item() == pytest.approx(
        100.0 * _at_loops(maps, refined), rel=1e-9
    )


def test_what_each_term_trains():
    d = _frskd().train()
    x, y = _batch(1)
    _, terms = d(x, y)
    st = list(d.self_teacher.parameters())
    stem = d.student.stem[0].weight
    for name, reaches_teacher in (("kd", False), ("at", False), ("self_ce", True)):
        grads = torch.autograd.grad(
            terms[name], [stem, *st], retain_graph=True, allow_unused=True
        )
        # Every term trains the student's stages; the self-teacher's own
        # cross-entropy trains them too (its input is not detached).
        assert grads[0] is not None and grads[0].abs().sum() > 0, name
        touched = any(g is not None and g.abs().sum() > 0 for g in grads[1:])
        assert touched == reaches_teacher, name
    (g,) = torch.autograd.grad(
        terms["ce"], [d.self_teacher.fc.weight], allow_unused=True
    )
    assert g is None


def test_identical_maps_and_logits_give_zero_distillation():
    z = torch.randn(B, K)
    maps = [torch.rand(B, 8, 4, 4), torch.rand(B, 16, 2, 2)]
    assert kd.losses.kd_loss(z, z, 4.0).abs().item() < 1e-6
    # The attention map is a channel mean: the channel count may differ.
    wider = [torch.cat([m, m], 1) for m in maps]
    assert kd.losses.at_loss(maps, wider).item() < 1e-12


def test_weights_scale_their_terms():
    x, y = _batch(2)
    base = _frskd(seed=5).eval()
    scaled = _frskd(seed=5, kd_weight=1.0, at_weight=10.0, self_ce_weight=0.5).eval()
    _, a = base(x, y)
    _, b = scaled(x, y)
    torch.testing.assert_close(b["kd"], a["kd"] / 2)
    torch.testing.assert_close(b["at"], a["at"] / 10)
    torch.testing.assert_close(b["self_ce"], a["self_ce"] / 2)
    torch.testing.assert_close(b["ce"], a["ce"])


def test_the_self_teacher_accuracy_metric():
    d = _frskd().eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, C, S, S), generator=g).to(torch.uint8)
    test = kd.data.TensorData(images, torch.arange(40) % K, "cifar10")
    with torch.no_grad():
        m = d.epoch_metrics(test)
        z = kd.predict_logits(d.teacher_model(), test)
    assert m == {
        "self_teacher_acc": pytest.approx(
            (z.argmax(1) == test.labels).double().mean().item()
        )
    }


@pytest.mark.parametrize(
    "bad, words",
    [
        (dict(T=0.0), "T"),
        (dict(kd_weight=-1.0), "kd_weight"),
        (dict(at_weight=-1.0), "at_weight"),
        (dict(width=0), "width"),
        (dict(depth=1.5), "depth"),
    ],
)
def test_frskd_rejects_bad_hyperparameters(bad, words):
    with pytest.raises(ValueError, match=words):
        _frskd(**bad)


def test_frskd_needs_a_cifar_resnet_and_stage_maps():
    with pytest.raises(ValueError, match="CIFAR ResNet"):
        kd.build(
            "frskd", torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, K))
        )
    st = SelfTeacher([8, 16, 32], K)
    with pytest.raises(ValueError, match="expects 3 feature maps"):
        st([torch.rand(1, 8, 4, 4)])
    with pytest.raises(ValueError, match=">= 2 levels"):
        SelfTeacher([8], K)


def test_frskd_trains_through_run(digits_config):
    res = kd.run(digits_config(method="frskd", epochs=1), progress=False)
    h = res.history[-1]
    assert {"train_ce", "train_self_ce", "train_kd", "train_at"} <= set(h)
    assert 0 <= h["metric_self_teacher_acc"] <= 1
    d = kd.load_distiller(res)
    assert isinstance(d.self_teacher, SelfTeacher)
