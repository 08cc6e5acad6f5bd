"""Structural knowledge (survey 2.2.3): each loss against an independent
computation of its reference definition (numpy float64, explicit loops), its
properties, its errors; the distillers; CRD's memory and an exact resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from training_stops import interrupt as _interrupt

import kdutils as kd
from kdutils import data as kdata
from kdutils import loop as kloop
from kdutils import runs as kruns
from kdutils.config import teacher_config
from kdutils.losses import (
    ContrastMemory,
    category_structure_losses,
    cc_loss,
    crd_nce_loss,
    irg_edge_loss,
    irg_transform_loss,
    irg_vertex_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    rkd_loss,
    sp_loss,
)


def _randn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def _np(t):
    return t.detach().double().numpy()


def _smooth_l1(a, b):
    d = np.abs(np.asarray(a) - np.asarray(b))
    return float(np.mean(np.where(d < 1, 0.5 * d**2, d - 0.5)))


# RKD


def _rkd_reference(s, t):
    """Distance and angle terms with explicit loops over pairs and triplets."""
    s, t = _np(s), _np(t)
    b = len(s)

    def dist(e):
        d = np.array(
            [[np.linalg.norm(e[i] - e[j]) for j in range(b)] for i in range(b)]
        )
        return d / d[d > 0].mean()

    def angles(e):
        out = np.zeros((b, b, b))
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    u, v = e[j] - e[i], e[k] - e[i]
                    if j != i and k != i:
                        out[i, j, k] = u @ v / np.linalg.norm(u) / np.linalg.norm(v)
        return out

    return _smooth_l1(dist(s), dist(t)), _smooth_l1(angles(s), angles(t))


def test_rkd_terms_equal_the_reference_definition():
    s, t = _randn(7, 5, seed=1), _randn(7, 9, seed=2)
    ref_d, ref_a = _rkd_reference(s, t)
    assert rkd_distance_loss(s, t).item() == pytest.approx(ref_d, rel=1e-6)
    assert rkd_angle_loss(s, t).item() == pytest.approx(ref_a, rel=1e-6)
    assert rkd_loss(s, t).item() == pytest.approx(25 * ref_d + 50 * ref_a, rel=1e-6)
    assert rkd_loss(s, t, 1.0, 0.0).item() == pytest.approx(ref_d, rel=1e-6)


def test_rkd_is_scale_invariant_and_zero_for_identical_relations():
    s, t = _randn(8, 6, seed=3), _randn(8, 4, seed=4)
    base = rkd_loss(s, t)
    torch.testing.assert_close(rkd_loss(3.7 * s, 0.2 * t), base)
    # Translation and rotation do not change distances or angles either.
    q, _ = torch.linalg.qr(_randn(6, 6, seed=5))
    torch.testing.assert_close(rkd_loss(s @ q + 1.5, t), base)
    assert rkd_loss(2 * s, s).item() == pytest.approx(0.0, abs=1e-10)


def test_rkd_gradients_reach_the_student_only():
    s = _randn(6, 5, seed=6).requires_grad_(True)
    t = _randn(6, 8, seed=7)
    rkd_loss(s, t).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert s.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "fn", [rkd_loss, rkd_distance_loss, rkd_angle_loss, pkt_loss, irg_edge_loss]
)
def test_relation_losses_refuse_mismatched_batches(fn):
    with pytest.raises(ValueError, match=r"\(6, 5\).*\(5, 5\)"):
        fn(_randn(6, 5), _randn(5, 5))
    with pytest.raises(ValueError, match="2-d"):
        fn(_randn(6, 5, 2), _randn(6, 5))


# SP


def _sp_reference(fs, ft):
    total = 0.0
    for s, t in zip(fs, ft, strict=True):
        s, t = _np(s).reshape(len(s), -1), _np(t).reshape(len(t), -1)
        b = len(s)

        def gram(f, b=b):
            g = np.array([[f[i] @ f[j] for j in range(b)] for i in range(b)])
            return g / np.linalg.norm(g, axis=1, keepdims=True)

        total += ((gram(t) - gram(s)) ** 2).sum() / b**2
    return total


def test_sp_equals_the_reference_definition_and_sums_over_pairs():
    fs = [_randn(5, 4, 3, 3, seed=1), _randn(5, 8, 2, 2, seed=2)]
    ft = [_randn(5, 16, 6, 6, seed=3), _randn(5, 2, 1, 1, seed=4)]
    assert sp_loss(fs, ft).item() == pytest.approx(_sp_reference(fs, ft), rel=1e-6)
    one = sp_loss(fs[0], ft[0])  # a single tensor is one pair
    assert one.item() == pytest.approx(_sp_reference(fs[:1], ft[:1]), rel=1e-6)


def test_sp_properties():
    f = _randn(6, 4, 3, 3, seed=8)
    assert sp_loss([f], [2.5 * f]).item() == pytest.approx(0.0, abs=1e-12)
    # Each row of G is normalised, so the loss is at most 4 (rows of unit norm).
    assert sp_loss([f], [-f.abs()]).item() <= 4.0


def test_sp_errors_name_the_shapes():
    with pytest.raises(ValueError, match="2 student features vs 1"):
        sp_loss([_randn(4, 3), _randn(4, 3)], [_randn(4, 3)])
    with pytest.raises(ValueError, match=r"pair 0.*\(4, 3, 2, 2\).*\(3, 3, 2, 2\)"):
        sp_loss([_randn(4, 3, 2, 2)], [_randn(3, 3, 2, 2)])


# PKT


def test_pkt_equals_the_reference_definition():
    s, t = _randn(6, 5, seed=1), _randn(6, 7, seed=2)
    eps = 1e-7

    def affinity(e):
        e = _np(e)
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        b = len(e)
        k = np.array([[(e[i] @ e[j] + 1) / 2 for j in range(b)] for i in range(b)])
        return k / k.sum(1, keepdims=True)

    p_s, p_t = affinity(s), affinity(t)
    ref = np.mean(p_t * np.log((p_t + eps) / (p_s + eps)))
    assert pkt_loss(s, t).item() == pytest.approx(ref, rel=1e-6)


def test_pkt_is_zero_for_the_same_directions_and_survives_a_zero_row():
    s = _randn(5, 4, seed=3)
    assert pkt_loss(s, 3 * s).item() == pytest.approx(0.0, abs=1e-6)
    z = s.clone()
    z[0] = 0.0
    assert torch.isfinite(pkt_loss(z, s))


# CC


def test_cc_benchmark_form_equals_its_definition():
    s, t = _randn(6, 4, seed=1), _randn(6, 4, seed=2)
    d = np.abs(_np(s) - _np(t))
    ref = np.mean([d[i] @ d[i + 1] for i in range(len(d) - 1)])
    assert cc_loss(s, t).item() == pytest.approx(ref, rel=1e-9)
    assert cc_loss(s, s).item() == 0.0


def test_cc_rbf_form_equals_the_taylor_kernel_and_approaches_the_gaussian():
    s, t = _randn(5, 4, seed=3), _randn(5, 6, seed=4)
    gamma = 0.4

    def kernel(e, order):
        e = _np(e)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        b = len(e)
        out = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                x = e[i] @ e[j]
                out[i, j] = sum(
                    math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * x**p
                    for p in range(order + 1)
                )
        return out

    ref = np.mean((kernel(s, 2) - kernel(t, 2)) ** 2)
    assert cc_loss(s, t, form="rbf").item() == pytest.approx(ref, rel=1e-9)
    # With many terms the series is the Gaussian kernel exp(-gamma |x - y|^2).

    def gaussian(e):
        e = _np(e)
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        return np.exp(-gamma * ((e[:, None] - e[None]) ** 2).sum(-1))

    exact = np.mean((gaussian(s) - gaussian(t)) ** 2)
    assert cc_loss(s, t, form="rbf", order=20).item() == pytest.approx(exact, rel=1e-9)


def test_cc_errors():
    with pytest.raises(ValueError, match=r"element-wise.*\(4, 3\).*\(4, 5\)"):
        cc_loss(_randn(4, 3), _randn(4, 5))
    with pytest.raises(ValueError, match="form"):
        cc_loss(_randn(4, 3), _randn(4, 3), form="gaussian")


# IRG (the authors' Caffe layers: squared distances over the max, EuclideanLoss
# = sum of squares / (2 * num), num = B for (B, B) graphs and 1 for vectors)


def test_irg_edge_equals_the_caffe_definition():
    s, t = _randn(6, 5, seed=1), _randn(6, 9, seed=2)

    def graph(e):
        e = _np(e)
        b = len(e)
        a = np.array([[((e[i] - e[j]) ** 2).sum() for j in range(b)] for i in range(b)])
        return a / a.max()

    ref = ((graph(s) - graph(t)) ** 2).sum() / (2 * len(s))
    assert irg_edge_loss(s, t).item() == pytest.approx(ref, rel=1e-6)
    assert irg_edge_loss(s, 4 * s).item() == pytest.approx(0.0, abs=1e-12)


def test_irg_transform_equals_its_definition():
    fs = [_randn(4, 8, 6, 6, seed=1), _randn(4, 8, 6, 6, seed=2), _randn(4, 16, 3, 3)]
    ft = [_randn(4, 4, 5, 5, seed=4), _randn(4, 4, 5, 5, seed=5), _randn(4, 8, 2, 2)]

    def vectors(maps):
        pooled = [_np(m).mean((2, 3)) for m in maps]
        out = []
        for a, b in zip(pooled, pooled[1:], strict=False):
            while b.shape[1] > a.shape[1]:
                b = np.stack(
                    [
                        (b[:, 2 * c] + b[:, 2 * c + 1]) / 2
                        for c in range(b.shape[1] // 2)
                    ],
                    axis=1,
                )
            v = np.array([((a[i] - b[i]) ** 2).sum() for i in range(len(a))])
            out.append(v / v.max())
        return out

    ref = sum(
        ((u - v) ** 2).sum() / 2 for u, v in zip(vectors(fs), vectors(ft), strict=True)
    )
    assert irg_transform_loss(fs, ft).item() == pytest.approx(ref, rel=1e-6)


def test_irg_vertex_and_errors():
    s, t = _randn(5, 10, seed=1), _randn(5, 10, seed=2)
    ref = ((_np(s) - _np(t)) ** 2).sum() / (2 * 5)
    assert irg_vertex_loss(s, t).item() == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError, match="logits"):
        irg_vertex_loss(s, _randn(5, 9))
    with pytest.raises(ValueError, match="same number"):
        irg_transform_loss([_randn(4, 2, 2, 2)] * 3, [_randn(4, 2, 2, 2)] * 2)
    with pytest.raises(ValueError, match="widths"):
        irg_transform_loss([_randn(4, 3, 2, 2), _randn(4, 5, 2, 2)], [_randn(4, 3)] * 2)


# Category structure


def test_category_structure_equals_its_definition():
    s, t = _randn(9, 4, seed=1), _randn(9, 6, seed=2)
    y = torch.tensor([0, 2, 2, 5, 0, 5, 2, 7, 0])  # class 7 has one sample

    def structure(e):
        e = _np(e)
        classes = sorted(set(y.tolist()))
        centres = {c: e[(y == c).numpy()].mean(0) for c in classes}
        intra = np.array([np.linalg.norm(e[i] - centres[int(y[i])]) for i in range(9)])
        intra = intra / intra[intra > 0].mean()
        inter = np.array(
            [
                [np.linalg.norm(centres[a] - centres[b]) for b in classes]
                for a in classes
            ]
        )
        return intra, inter / inter[inter > 0].mean()

    (ia_s, ie_s), (ia_t, ie_t) = structure(s), structure(t)
    intra, inter = category_structure_losses(s, t, y)
    assert intra.item() == pytest.approx(_smooth_l1(ia_s, ia_t), rel=1e-6)
    assert inter.item() == pytest.approx(_smooth_l1(ie_s, ie_t), rel=1e-6)
    intra, inter = category_structure_losses(s, 3 * s + 1, y)  # scale, shift
    assert intra.item() == pytest.approx(0, abs=1e-12)
    assert inter.item() == pytest.approx(0, abs=1e-12)


def test_category_structure_with_one_class_or_singletons_is_finite():
    s, t = _randn(4, 3, seed=1), _randn(4, 3, seed=2)
    for y in (torch.zeros(4, dtype=torch.long), torch.arange(4)):
        intra, inter = category_structure_losses(s, t, y)
        assert torch.isfinite(intra) and torch.isfinite(inter)
    with pytest.raises(ValueError, match="labels"):
        category_structure_losses(s, t, torch.zeros(3, dtype=torch.long))


# CRD: the NCE loss and the memory


def test_crd_nce_loss_equals_the_authors_definition():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 6, generator=g, dtype=torch.float64) * 1e-3
    n, eps = 100, 1e-7
    p = _np(probs)
    k, pn = p.shape[1] - 1, 1 / n
    total = 0.0
    for b in range(len(p)):
        total += math.log(p[b, 0] / (p[b, 0] + k * pn + eps))
        for j in range(1, k + 1):
            total += math.log(k * pn / (p[b, j] + k * pn + eps))
    assert crd_nce_loss(probs, n).item() == pytest.approx(-total / len(p), rel=1e-9)
    with pytest.raises(ValueError, match="K\\+1"):
        crd_nce_loss(torch.rand(4), n)


def _labels(n=60, classes=3):
    return torch.arange(n) % classes


def test_negatives_are_of_other_classes_with_replacement_when_too_few():
    labels = _labels()  # 40 negatives per class
    idx = torch.tensor([0, 1, 2, 5, 7])
    for k, replaced in ((100, True), (30, False)):
        mem = ContrastMemory(8, labels, nce_k=k, seed=3)
        c = mem.sample(idx)
        assert c.shape == (5, k + 1)
        assert torch.equal(c[:, 0], idx)  # the positive: the sample itself
        assert (labels[c[:, 1:]] != labels[idx][:, None]).all()
        dupes = any(len(set(row.tolist())) < k for row in c[:, 1:])
        assert dupes == replaced
    # Over many draws every negative of the pool is used.
    mem = ContrastMemory(8, labels, nce_k=100, seed=3)
    seen = torch.cat([mem.sample(idx[:1])[:, 1:] for _ in range(20)]).unique()
    assert torch.equal(seen, (labels != labels[0]).nonzero().squeeze(1))


def test_the_sampler_depends_on_seed_and_step_only():
    labels = _labels()
    a, b = ContrastMemory(8, labels, 50, seed=1), ContrastMemory(8, labels, 50, seed=1)
    idx = torch.tensor([3, 4])
    first = a.sample(idx)
    assert not torch.equal(first, a.sample(idx))  # the step advances
    assert torch.equal(first, b.sample(idx))
    c = ContrastMemory(8, labels, 50, seed=2)
    assert not torch.equal(first, c.sample(idx))
    # The step is state: loading it rewinds the draws.
    c.load_state_dict(b.state_dict())
    assert torch.equal(c.sample(idx), b.sample(idx))


def test_memory_forward_normalises_scores_and_updates_with_momentum():
    labels = _labels()
    mem = ContrastMemory(8, labels, nce_k=10, nce_t=0.5, nce_m=0.25, seed=0)
    init = {k: v.clone() for k, v in mem.state_dict().items()}
    stdv = 1 / math.sqrt(8 / 3)
    assert init["memory_s"].abs().max() <= stdv and init["Z"].tolist() == [-1, -1]
    v_s = torch.nn.functional.normalize(_randn(4, 8, seed=1).float(), dim=1)
    v_t = torch.nn.functional.normalize(_randn(4, 8, seed=2).float(), dim=1)
    idx = torch.tensor([1, 4, 9, 30])
    contrast = ContrastMemory(8, labels, nce_k=10, seed=0).sample(idx)
    p_s, p_t = mem(v_s, v_t, idx)
    # The student anchor against the teacher's bank, and vice versa.
    raw_s = torch.exp((init["memory_t"][contrast] @ v_s[:, :, None]).squeeze(2) / 0.5)
    raw_t = torch.exp((init["memory_s"][contrast] @ v_t[:, :, None]).squeeze(2) / 0.5)
    z = torch.stack([raw_s.mean(), raw_t.mean()]) * len(labels)
    torch.testing.assert_close(mem.Z, z)
    torch.testing.assert_close(p_s, raw_s / z[0])
    torch.testing.assert_close(p_t, raw_t / z[1])
    for name, v in (("memory_s", v_s), ("memory_t", v_t)):
        m = 0.25 * init[name][idx] + 0.75 * v
        expected = init[name].clone()
        expected[idx] = m / m.norm(dim=1, keepdim=True)
        torch.testing.assert_close(getattr(mem, name), expected)
    # Z is set once; in eval mode the banks do not move.
    mem.eval()
    before = mem.memory_s.clone()
    mem(v_s, v_t, idx)
    torch.testing.assert_close(mem.Z, z)
    assert torch.equal(mem.memory_s, before)


def test_dense_and_gathered_scores_agree():
    labels = _labels(n=50)
    mem = ContrastMemory(8, labels, nce_k=5, seed=0)
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(3, 8, generator=g), dim=1)
    small = mem.sample(torch.tensor([0, 1, 2]))  # 18 draws < 50 rows: gathered
    big = small.repeat(1, 4)  # 72 draws > 50 rows: the whole bank is scored
    gathered = mem._scores(v, mem.memory_t, small)
    dense = mem._scores(v, mem.memory_t, big)[:, : small.shape[1]]
    # exp(v.m / 0.07) reaches ~1e6: the two float32 paths (a matrix product
    # over the bank vs a batched gather) round differently by a few ulps.
    torch.testing.assert_close(dense, gathered, rtol=1e-5, atol=0)


def test_memory_rejects_bad_settings():
    with pytest.raises(ValueError, match="nce_k"):
        ContrastMemory(8, _labels(), nce_k=0)
    with pytest.raises(ValueError, match="embeddings"):
        ContrastMemory(8, _labels(), nce_k=4)(
            torch.randn(2, 8), torch.randn(3, 8), torch.arange(2)
        )


# The distillers


def _models():
    torch.manual_seed(0)
    return kd.create_model("resnet8", 10, 1), kd.create_model("resnet14", 10, 1)


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    return kdata.TensorData(images, torch.arange(n) % 10, "fashion-mnist")


RELATIONAL = {
    "rkd": {"rkd_dist", "rkd_angle"},
    "sp": {"sp"},
    "pkt": {"pkt"},
    "cc": {"cc"},
    "irg": {"irg_edge", "irg_transform"},
    "cskd": {"cs_intra", "cs_inter"},
    "crd": {"crd"},
}


@pytest.mark.parametrize("name", sorted(RELATIONAL))
def test_distiller_terms_defaults_and_kd_option(name):
    data = _data()
    s, t = _models()
    d = kd.build(name, s, t)
    d.setup(data)
    x = kdata.normalize(data.images[:8], data.info)
    y = data.labels[:8]
    _, terms = d(x, y, idx=torch.arange(8))
    assert set(terms) == {"ce", *RELATIONAL[name]}
    assert d.hparams()["ce_weight"] == 1.0 and d.hparams()["kd_weight"] == 0.0
    s, t = _models()
    d = kd.build(name, s, t, kd_weight=0.5, T=2.0)
    d.setup(data)
    _, with_kd = d(x, y, idx=torch.arange(8))
    assert set(with_kd) == {"ce", "kd", *RELATIONAL[name]}


def test_distiller_defaults_follow_the_benchmark():
    s, t = _models()
    assert kd.build("rkd", s, t).hparams()["rkd_weight"] == 1.0
    assert kd.build("sp", s, t).hparams()["sp_weight"] == 3000.0
    assert kd.build("pkt", s, t).hparams()["pkt_weight"] == 30000.0
    assert kd.build("cc", s, t).hparams()["cc_weight"] == 0.02
    crd = kd.build("crd", s, t).hparams()
    assert (crd["nce_k"], crd["nce_t"], crd["nce_m"], crd["feat_dim"]) == (
        16384,
        0.07,
        0.5,
        128,
    )
    assert (crd["crd_weight"], crd["ce_weight"], crd["kd_weight"]) == (0.8, 1.0, 0.0)
    irg = kd.build("irg", s, t).hparams()
    assert (irg["edge_weight"], irg["transform_weight"]) == (0.005, 0.005)


def test_rkd_distiller_terms_are_the_weighted_losses():
    data = _data()
    s, t = _models()
    d = kd.build("rkd", s, t, rkd_weight=2.0).train()
    x = kdata.normalize(data.images[:8], data.info)
    _, terms = d(x, data.labels[:8])
    # In training mode BN normalises with the batch's statistics, so a second
    # forward of the same batch gives the features the distiller saw.
    with kd.capture(s, ["pool"]) as fs:
        s(x)
    emb_t = d.teacher_outputs(x)["pool"]
    for key, fn, w in (
        ("rkd_dist", rkd_distance_loss, 25.0),
        ("rkd_angle", rkd_angle_loss, 50.0),
    ):
        expected = 2.0 * w * fn(fs["pool"], emb_t)
        torch.testing.assert_close(terms[key], expected, rtol=1e-5, atol=1e-7)


def test_crd_needs_setup_and_indices():
    s, t = _models()
    d = kd.build("crd", s, t)
    x = torch.randn(4, 1, 12, 12)
    with pytest.raises(RuntimeError, match="setup"):
        d(x, torch.arange(4))
    d.setup(_data())
    with pytest.raises(ValueError, match="idx"):
        d(x, torch.arange(4))
    # The bank has one row per training sample and lives in the state dict.
    assert d.memory.memory_s.shape == (40, 128)
    assert {"memory.memory_s", "memory.memory_t", "memory.Z"} <= set(d.state_dict())


@pytest.mark.parametrize(
    "bad", [dict(nce_k=0), dict(nce_t=0.0), dict(nce_m=1.0), dict(crd_weight=-1.0)]
)
def test_crd_rejects_bad_hyperparameters(bad):
    s, t = _models()
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build("crd", s, t, **bad)


# CRD resumes exactly: weights, heads, memory banks, Z and the sampler


def _checkpoint_after(cfg, epoch, monkeypatch):
    """Run until the start of epoch index ``epoch``; return that checkpoint's state."""
    with monkeypatch.context() as m:
        _interrupt(m, epoch=epoch, after=0)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    state = kloop.load_checkpoint(
        kruns.run_dir(cfg) / "checkpoint.pt", kruns.run_key(cfg)
    )
    assert state["epoch"] == epoch
    return state["distiller"]


@pytest.mark.parametrize("augment", [False, True])
def test_crd_killed_mid_epoch_resumes_to_the_same_weights_and_memory(
    digits_config, tmp_path, monkeypatch, capsys, augment
):
    cfg = digits_config(method="crd", epochs=3, augment=augment, nce_k=64)
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "uninterrupted"))
    ref_result = kd.run(cfg, progress=False)
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "stopped-at-epoch-2"))
    kd.run(teacher_config(cfg), progress=False)
    reference = _checkpoint_after(cfg, 2, monkeypatch)

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "interrupted"))
    kd.run(teacher_config(cfg), progress=False)
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=2)  # killed in the middle of epoch 2
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    capsys.readouterr()
    resumed = _checkpoint_after(cfg, 2, monkeypatch)
    assert "[resume]" in capsys.readouterr().out

    assert reference.keys() == resumed.keys()
    assert {"memory.memory_s", "memory.memory_t", "memory.Z", "memory.sampler"} <= set(
        reference
    )
    for k in reference:
        assert torch.equal(reference[k], resumed[k]), k
    assert reference["memory.Z"].gt(0).all()
    result = kd.run(cfg, progress=False)
    for k, v in torch.load(f"{ref_result.path}/model.pt", weights_only=True).items():
        assert torch.equal(
            v, torch.load(f"{result.path}/model.pt", weights_only=True)[k]
        ), k
    assert [h["train_crd"] for h in result.history] == [
        h["train_crd"] for h in ref_result.history
    ]


# Figures


def test_relation_figures():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    labels = np.repeat(np.arange(3), 4)
    mats = {
        "teacher": {"a": np.random.rand(12, 12), "b": np.random.rand(12, 12)},
        "student": {"a": np.random.rand(12, 12), "b": np.random.rand(12, 12)},
    }
    fig = kd.plots.relation_matrices(mats, labels, ["x", "y", "z"], title="t")
    assert isinstance(fig, Figure)
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 4
    # class names at the block centres, one per class
    assert [t.get_text() for t in images[-1].get_xticklabels()] == ["x", "y", "z"]
    banks = {"teacher bank": {"start": np.eye(3), "end": np.eye(3)}}
    fig = kd.plots.class_matrices(banks, ["x", "y", "z"])
    assert len([ax for ax in fig.axes if ax.images]) == 2


def test_nce_curves_draw_one_line_per_run_and_the_chance_level(digits_config):
    runs = [
        kd.run(digits_config(method="crd", seed=s, nce_k=32), progress=False)
        for s in (0, 1)
    ]
    fig = kd.plots.nce_curves(runs, chance=10.0)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3
    w = runs[0].config["method_args"]["crd_weight"]
    assert list(lines[0].get_ydata()) == [h["train_crd"] / w for h in runs[0].history]
