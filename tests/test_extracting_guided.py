"""TOFD and MGD (survey 2.2.2): losses against independent computations, properties, errors.

Each loss is recomputed in float64 numpy with explicit loops from its
definition in the authors' code; then a property from each paper, the
Distillers' terms, and the clear errors for bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import kdutils as kd
from kdutils.distillers.extracting_guided import mgd_assignment
from kdutils.losses import (
    mgd_loss,
    mgd_reduce,
    orthogonal_loss,
    overhaul_margin,
    partial_l2_loss,
    tofd_feature_loss,
    tofd_kd_loss,
)


def _randn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64)


# TOFD


def test_tofd_kd_loss_is_the_soft_cross_entropy_without_t_squared():
    s, t, T = _randn(4, 5), _randn(4, 5, seed=1), 2.5
    ref = 0.0
    for b in range(4):
        ps = np.exp(s[b].numpy() / T) / np.exp(s[b].numpy() / T).sum()
        pt = np.exp(t[b].numpy() / T) / np.exp(t[b].numpy() / T).sum()
        ref -= sum(pt[k] * math.log(ps[k]) for k in range(5)) / 4
    assert tofd_kd_loss(s, t, T).item() == pytest.approx(ref, rel=1e-10)


def test_tofd_kd_loss_of_equal_logits_is_the_teachers_entropy():
    t = _randn(3, 6)
    p = torch.softmax(t / 2.0, 1)
    entropy = -(p * p.log()).sum(1).mean()
    torch.testing.assert_close(tofd_kd_loss(t, t, 2.0), entropy)


def test_tofd_feature_loss_is_the_unsquared_norm_summed_over_classifiers():
    es = [_randn(4, 3, seed=i) for i in range(3)]
    et = [_randn(4, 3, seed=10 + i) for i in range(3)]
    ref = sum(
        math.sqrt(
            sum(
                (a[b, d].item() - c[b, d].item()) ** 2
                for b in range(4)
                for d in range(3)
            )
        )
        for a, c in zip(es, et, strict=True)
    )
    assert tofd_feature_loss(es, et).item() == pytest.approx(ref, rel=1e-10)


def test_orthogonal_loss_by_loops_and_zero_for_an_orthogonal_matrix():
    w = _randn(3, 4)
    a = w.numpy()
    ref = 0.0
    for m, n in ((a @ a.T, 3), (a.T @ a, 4)):
        ref += math.sqrt(
            sum((m[i, j] - (i == j)) ** 2 for i in range(n) for j in range(n))
        )
    assert orthogonal_loss([w]).item() == pytest.approx(ref, rel=1e-10)
    q, _ = torch.linalg.qr(_randn(5, 5, seed=3))
    assert orthogonal_loss([q]).item() < 1e-12


def test_tofd_losses_reject_bad_inputs():
    with pytest.raises(ValueError, match="temperature"):
        tofd_kd_loss(_randn(2, 3), _randn(2, 3), 0.0)
    with pytest.raises(ValueError, match="one shape"):
        tofd_kd_loss(_randn(2, 3), _randn(2, 4), 1.0)
    with pytest.raises(ValueError, match="pair 0"):
        tofd_feature_loss([_randn(2, 3)], [_randn(2, 4)])
    with pytest.raises(ValueError, match="one pair per"):
        tofd_feature_loss([], [])
    with pytest.raises(ValueError, match="2-D"):
        orthogonal_loss([_randn(2, 3, 4)])


def _tofd(**kw):
    torch.manual_seed(0)
    student = kd.create_model("resnet8", num_classes=10, in_channels=3)
    teacher = kd.create_model("resnet14", num_classes=10, in_channels=3)
    d = kd.build("tofd", student, teacher, **kw)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    d.setup(kd.data.TensorData(images, torch.arange(16) % 10, "cifar10"))
    return d


def test_tofd_terms_and_what_trains_what():
    d = _tofd()
    d.train()
    x, y = _randn(8, 3, 16, 16).float(), torch.arange(8) % 10
    d.on_epoch(0, 4)
    assert d.T == pytest.approx(1 + 3.0 / 4)
    _, terms = d(x, y)
    assert set(terms) == {"ce", "kd", "tofd", "orth"}
    expected = 0.03 * orthogonal_loss([w.weight for w in d.links])
    torch.testing.assert_close(terms["orth"], expected)
    sum(terms.values()).backward()
    # The student's classifiers and the resizing layers train; the teacher's
    # classifiers (trained in prepare) never do.
    assert all(p.grad is not None for p in d.heads_s.parameters())
    assert all(p.grad is not None for p in d.links.parameters())
    assert all(not p.requires_grad for p in d.heads_t.parameters())
    d.train()
    assert not d.heads_t.training


def test_tofd_prepare_trains_the_teachers_classifiers_then_freezes_them(capsys):
    d = _tofd(init_epochs=1)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    loader = kd.data.Loader(
        kd.data.TensorData(images, torch.arange(16) % 10, "cifar10"), 8
    )
    before = [p.clone() for p in d.heads_t.parameters()]
    teacher = [p.clone() for p in d.teacher.parameters()]
    d.prepare(loader)
    assert "tofd stage 1" in capsys.readouterr().out
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before, d.heads_t.parameters(), strict=True)
    )
    assert all(
        torch.equal(a, b) for a, b in zip(teacher, d.teacher.parameters(), strict=True)
    )
    assert not any(p.requires_grad for p in d.heads_t.parameters())
    assert not d.heads_t.training


def test_tofd_refuses_bad_settings():
    with pytest.raises(ValueError, match="T_rise"):
        _tofd(T_rise=-1.0)
    with pytest.raises(ValueError, match="init_lr"):
        _tofd(init_lr=0.0)


# MGD


def test_overhaul_margin_is_the_mean_of_the_negative_part():
    w, b = torch.tensor([1.0, 0.5, 2.0, 0.1]), torch.tensor([0.0, 0.3, -1.0, 5.0])
    ref = []
    for s, m in zip(w.tolist(), b.tolist(), strict=True):
        s = abs(s)
        if norm.cdf(-m / s) > 0.001:
            ref.append(
                -s
                * math.exp(-((m / s) ** 2) / 2)
                / math.sqrt(2 * math.pi)
                / norm.cdf(-m / s)
                + m
            )
        else:
            ref.append(-3 * s)
    np.testing.assert_allclose(overhaul_margin(w, b).numpy(), ref, rtol=1e-6)
    # Monte Carlo: E[x | x < 0] for x ~ N(0.3, 0.5^2)
    x = 0.3 + 0.5 * _randn(400000, seed=4)
    assert overhaul_margin(w, b)[1].item() == pytest.approx(
        x[x < 0].mean().item(), abs=2e-3
    )


def test_partial_l2_by_loops():
    s, t = _randn(2, 3, 2, 2), _randn(2, 3, 2, 2, seed=1)
    m = torch.tensor([-0.5, -0.2, -1.0], dtype=torch.float64).view(1, 3, 1, 1)
    ref = 0.0
    for idx in np.ndindex(2, 3, 2, 2):
        tt = max(t[idx].item(), m[0, idx[1], 0, 0].item())
        if s[idx].item() > tt or tt > 0:
            ref += (s[idx].item() - tt) ** 2
    assert partial_l2_loss(s, t, m).item() == pytest.approx(ref, rel=1e-10)


def test_partial_l2_ignores_a_student_below_an_inactive_teacher():
    t = torch.full((1, 1, 2, 2), -3.0)
    m = torch.full((1, 1, 1, 1), -1.0)
    assert partial_l2_loss(torch.full((1, 1, 2, 2), -2.0), t, m).item() == 0.0
    assert partial_l2_loss(torch.full((1, 1, 2, 2), 0.0), t, m).item() == 4.0


def test_mgd_reduce_amp_keeps_the_largest_magnitude_of_each_group():
    ft, margin = _randn(2, 6, 3, 3), torch.linspace(-1, -0.5, 6, dtype=torch.float64)
    guided = torch.tensor([4, 0, 2, 5, 1, 3])  # groups (4, 0, 2) and (5, 1, 3)
    t, m = mgd_reduce(ft, margin, guided, 3, "amp")
    for b, c, h, w in np.ndindex(2, 3, 3, 3):
        vals = [ft[b, guided[g * 3 + c], h, w].item() for g in range(2)]
        assert t[b, c, h, w].item() == max(vals, key=abs)
    for c in range(3):
        expect = (margin[guided[c]] + margin[guided[3 + c]]).item() / 2
        assert m[0, c, 0, 0].item() == pytest.approx(expect)
    t_sp, _ = mgd_reduce(ft, margin, guided, 3, "sp")
    torch.testing.assert_close(t_sp, torch.maximum(ft[:, [4, 0, 2]], ft[:, [5, 1, 3]]))
    t_rd, _ = mgd_reduce(ft, margin, guided, 3, "rd")
    assert ((t_rd == ft[:, [4, 0, 2]]) | (t_rd == ft[:, [5, 1, 3]])).all()


def test_mgd_loss_weights_the_stages_and_divides_by_the_batch():
    fs = [_randn(2, 2, 4, 4, seed=i) for i in range(3)]
    ft = [_randn(2, 4, 4, 4, seed=10 + i) for i in range(3)]
    margins = [torch.full((4,), -0.3, dtype=torch.float64)] * 3
    guided = [torch.tensor([1, 3, 0, 2])] * 3
    ref = 0.0
    for i in range(3):
        t, m = mgd_reduce(ft[i], margins[i], guided[i], 2, "amp")
        ref += partial_l2_loss(fs[i], t, m).item() / [4, 2, 1][i]
    assert mgd_loss(fs, ft, margins, guided).item() == pytest.approx(ref / 2)


def test_mgd_assignment_is_the_cheapest_matching_by_brute_force():
    from itertools import permutations

    rng = np.random.default_rng(0)
    cost = rng.random((2, 4))
    guided = mgd_assignment(cost)
    assert sorted(guided) == [0, 1, 2, 3]  # every teacher channel used once
    stacked = np.tile(cost, (2, 1))
    best = min(sum(stacked[r, p[r]] for r in range(4)) for p in permutations(range(4)))
    assert sum(stacked[r, guided[r]] for r in range(4)) == pytest.approx(best)
    sparse = mgd_assignment(cost, sparse=True)
    best = min(cost[0, a] + cost[1, b] for a in range(4) for b in range(4) if a != b)
    assert cost[0, sparse[0]] + cost[1, sparse[1]] == pytest.approx(best)
    with pytest.raises(ValueError, match="at least as many teacher"):
        mgd_assignment(rng.random((4, 2)))


def test_mgd_recovers_a_permutation_of_the_teachers_channels():
    """The paper's premise: a student whose channels are a permutation of the
    teacher's is matched channel for channel (cost 0 on the diagonal)."""
    ft = _randn(5, 6, 4, 4).relu() + 0.1
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    s = torch.nn.functional.normalize(ft[:, perm].flatten(2), dim=2)
    t = torch.nn.functional.normalize(ft.flatten(2), dim=2)
    cost = (2 - 2 * s @ t.transpose(1, 2)).mean(0).numpy()
    np.testing.assert_array_equal(mgd_assignment(cost), perm.numpy())


def test_mgd_losses_reject_bad_inputs():
    ft, margin = _randn(2, 4, 3, 3), torch.zeros(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="reducer"):
        mgd_reduce(ft, margin, torch.arange(4), 2, "avg")
    with pytest.raises(ValueError, match="groups of 3"):
        mgd_reduce(ft, margin, torch.arange(4), 3)
    with pytest.raises(ValueError, match="one channel per student"):
        mgd_reduce(ft, margin, torch.arange(4), 2, "sm")
    with pytest.raises(ValueError, match="one spatial size"):
        mgd_loss([_randn(2, 2, 2, 2)], [ft], [margin], [torch.arange(4)])
    with pytest.raises(ValueError, match="differ"):
        partial_l2_loss(_randn(1, 2, 2, 2), _randn(1, 3, 2, 2), margin)
    with pytest.raises(ValueError, match=r"\(C,\)"):
        overhaul_margin(torch.ones(3), torch.ones(4))


def test_mgd_distiller_updates_its_matching_on_schedule():
    torch.manual_seed(0)
    student = kd.create_model("resnet8", num_classes=10, in_channels=3)
    teacher = kd.create_model("resnet14", num_classes=10, in_channels=3)
    d = kd.build("mgd", student, teacher, update_freq=2)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    d.setup(kd.data.TensorData(images, torch.arange(12) % 10, "cifar10"))
    assert [len(g) for g in d.guided()] == [16, 32, 64]
    calls = []
    d.update_matching = lambda: calls.append(1)
    for epoch in range(5):
        d.on_epoch(epoch, 5)
    assert len(calls) == 3  # before epochs 0, 2 and 4
    del d.update_matching
    d.update_matching()
    for g in d.guided():
        assert sorted(g.tolist()) == list(range(len(g)))  # a permutation
    d.train()
    x, y = _randn(4, 3, 16, 16).float(), torch.arange(4)
    _, terms = d(x, y)
    assert set(terms) == {"ce", "mgd"}
    with pytest.raises(ValueError, match="reducer"):
        kd.build("mgd", student, teacher, reducer="avg")
    with pytest.raises(ValueError, match="update_freq"):
        kd.build("mgd", student, teacher, update_freq=0)
