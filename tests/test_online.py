"""Online distillation (survey 2.3.1): DML, ONE, OKDDip, FFL.

The losses against float64 references written with explicit loops, their
properties and errors; the distillers' terms against an independent forward;
which parameters each term trains; the deployed student; the members' metrics
(accuracies, ensemble, agreement, pairwise KL) against float64 loops;
training, the saved model and an exact resume with the peers in the
checkpoint."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from training_stops import interrupt as _interrupt

import kdutils as kd
from kdutils import data as kdata
from kdutils import loop as kloop
from kdutils import runs as kruns
from kdutils import train as ktrain
from kdutils.distillers.online import fresh_copy, member_metrics
from kdutils.losses import (
    dml_kl_losses,
    gated_ensemble,
    online_kl_loss,
    peer_attention_targets,
    sigmoid_rampup,
)

B, K, C, S = 8, 10, 3, 16


def _logits(n: int, seed: int = 0, scale: float = 3.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(B, K, generator=g) for _ in range(n)]


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, S, S, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    return x, y


def _student(seed: int = 0):
    torch.manual_seed(seed)
    return kd.create_model("resnet8", num_classes=K, in_channels=C)


def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_kl(t: np.ndarray, s: np.ndarray, T: float, eps: float = 0.0) -> float:
    """T^2 mean_b sum_k q (log q - log p_s), q = softmax(t/T) + eps, by loops."""
    total = 0.0
    for b in range(t.shape[0]):
        q = np.exp(_np_log_softmax(t[b] / T)) + eps
        log_p = _np_log_softmax(s[b] / T)
        total += sum(q[k] * (math.log(q[k]) - log_p[k]) for k in range(t.shape[1]))
    return T**2 * total / t.shape[0]


def _np_ce(z: np.ndarray, y: np.ndarray) -> float:
    return float(-np.mean([_np_log_softmax(z[b])[y[b]] for b in range(len(y))]))


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


# dml_kl_losses


@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("n", [2, 3, 4])
def test_dml_kl_losses_against_loops(n, T):
    logits = _logits(n)
    got = dml_kl_losses(logits, T)
    z = [_np(t) for t in logits]
    for k in range(n):
        ref = sum(_np_kl(z[j], z[k], T) for j in range(n) if j != k) / (n - 1)
        assert got[k].item() == pytest.approx(ref, rel=1e-5)


def test_dml_identical_peers_have_zero_kl():
    z = _logits(1)[0]
    for v in dml_kl_losses([z, z.clone(), z.clone()]):
        assert v.item() == pytest.approx(0.0, abs=1e-6)


def test_dml_each_peers_term_trains_only_that_peer():
    logits = [t.requires_grad_() for t in _logits(3)]
    for k, term in enumerate(dml_kl_losses(logits)):
        grads = torch.autograd.grad(term, logits, allow_unused=True)
        for j, g in enumerate(grads):
            if j == k:
                assert g is not None and g.abs().sum() > 0
            else:
                assert g is None or not g.any()


def test_dml_kl_losses_errors():
    with pytest.raises(ValueError, match="at least 2"):
        dml_kl_losses(_logits(1))
    a, b = _logits(2)
    with pytest.raises(ValueError, match=r"\(8, 10\).*\(8, 9\)"):
        dml_kl_losses([a, b[:, :9]])


# online_kl_loss


@pytest.mark.parametrize("T,eps", [(3.0, 1e-7), (1.0, 1e-7), (4.0, 0.0)])
def test_online_kl_loss_against_loops(T, eps):
    s, t = _logits(2, seed=1)
    got = online_kl_loss(s, t, T, eps)
    assert got.item() == pytest.approx(_np_kl(_np(t), _np(s), T, eps), rel=1e-5)


def test_online_kl_loss_is_the_kd_loss_without_eps_and_near_zero_for_equal_logits():
    s, t = _logits(2, seed=2)
    torch.testing.assert_close(
        online_kl_loss(s, t, 3.0, eps=0.0), kd.losses.kd_loss(s, t, 3.0)
    )
    assert online_kl_loss(s, s, 3.0, eps=0.0).item() == pytest.approx(0.0, abs=1e-6)
    # The reference's 1e-7 shift leaves a positive residue of order K * eps.
    assert 0 <= online_kl_loss(s, s, 3.0).item() < 1e-4


def test_online_kl_loss_lets_the_caller_choose_what_is_detached():
    s, t = (z.requires_grad_() for z in _logits(2, seed=3))
    gs, gt = torch.autograd.grad(online_kl_loss(s, t), [s, t])
    assert gs.abs().sum() > 0 and gt.abs().sum() > 0
    (gt2,) = torch.autograd.grad(online_kl_loss(s, t.detach()), [s])
    torch.testing.assert_close(gt2, gs)


def test_online_kl_loss_errors():
    s, t = _logits(2)
    with pytest.raises(ValueError, match="T"):
        online_kl_loss(s, t, T=0)
    with pytest.raises(ValueError, match="eps"):
        online_kl_loss(s, t, eps=-1e-7)
    with pytest.raises(ValueError, match=r"\(8, 10\).*\(4, 10\)"):
        online_kl_loss(s, t[:4])


# gated_ensemble and peer_attention_targets


def test_gated_ensemble_against_loops():
    logits = torch.stack(_logits(3, seed=4), 1)  # (B, 3, K)
    gate = torch.softmax(
        torch.randn(B, 3, generator=torch.Generator().manual_seed(5)), 1
    )
    got = _np(gated_ensemble(logits, gate))
    z, g = _np(logits), _np(gate)
    for b in range(B):
        for k in range(K):
            ref = sum(g[b, i] * z[b, i, k] for i in range(3))
            assert got[b, k] == pytest.approx(ref, rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(8, 3, 10\).*\(8, 2\)"):
        gated_ensemble(logits, gate[:, :2])


def test_peer_attention_targets_against_loops():
    g = torch.Generator().manual_seed(6)
    m, d = 3, 5
    logits = torch.randn(B, m, K, generator=g)
    q, k = torch.randn(B, m, d, generator=g), torch.randn(B, m, d, generator=g)
    targets, att = peer_attention_targets(logits, q, k)
    z, qn, kn = _np(logits), _np(q), _np(k)
    for b in range(B):
        for i in range(m):
            energy = [
                sum(qn[b, i, e] * kn[b, j, e] for e in range(d)) for j in range(m)
            ]
            w = np.exp(np.array(energy) - max(energy))
            w /= w.sum()
            np.testing.assert_allclose(_np(att)[b, i], w, rtol=1e-5, atol=1e-7)
            ref = sum(w[j] * z[b, j] for j in range(m))
            np.testing.assert_allclose(_np(targets)[b, i], ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(att.sum(-1), torch.ones(B, m))


def test_equal_keys_give_uniform_attention_and_the_mean_as_every_target():
    logits = torch.stack(_logits(3, seed=7), 1)
    q = torch.randn(B, 3, 4)
    k = torch.ones(B, 3, 4)
    targets, att = peer_attention_targets(logits, q, k)
    torch.testing.assert_close(att, torch.full((B, 3, 3), 1 / 3))
    for i in range(3):
        torch.testing.assert_close(targets[:, i], logits.mean(1))


def test_peer_attention_targets_errors():
    logits = torch.zeros(B, 3, K)
    with pytest.raises(ValueError, match=r"\(8, 3, 10\).*\(8, 2, 4\)"):
        peer_attention_targets(logits, torch.zeros(B, 2, 4), torch.zeros(B, 2, 4))
    with pytest.raises(ValueError, match="queries, keys"):
        peer_attention_targets(logits, torch.zeros(B, 3, 4), torch.zeros(B, 3, 5))


def test_sigmoid_rampup():
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-5 * 0.25))
    assert sigmoid_rampup(80, 80) == 1.0 and sigmoid_rampup(200, 80) == 1.0
    assert sigmoid_rampup(3, 0) == 1.0
    with pytest.raises(ValueError, match="ramp-up"):
        sigmoid_rampup(0, -1)


# fresh copies


def test_fresh_copy_draws_new_parameters_reproducibly():
    s = _student()
    torch.manual_seed(3)
    a = fresh_copy(s)
    after_a = torch.rand(())
    torch.manual_seed(3)
    b = fresh_copy(s)
    after_b = torch.rand(())
    torch.manual_seed(3)
    torch.randint(0, 2**62, ())  # one draw, and the global stream goes on
    assert torch.rand(()) == after_a == after_b
    for (name, p), q, r in zip(
        s.named_parameters(), a.parameters(), b.parameters(), strict=True
    ):
        assert p.shape == q.shape and torch.equal(q, r), name
    for (name, m), n in zip(s.named_modules(), a.modules(), strict=True):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert not torch.equal(m.weight, n.weight), name
        elif isinstance(m, nn.BatchNorm2d):  # 1 and 0, as the student started
            assert torch.equal(m.weight, n.weight) and torch.equal(m.bias, n.bias)
    assert a.fc.weight.data_ptr() != s.fc.weight.data_ptr()
    # The scale of the draws is the student's (Kaiming normal, fan-out).
    assert a.layer3[0].conv1.weight.std().item() == pytest.approx(
        s.layer3[0].conv1.weight.std().item(), rel=0.2
    )


def test_fresh_copy_resets_batch_norm_statistics_and_keeps_the_meta_device():
    s = _student()
    s.train()
    s(torch.randn(4, C, S, S))
    copy_ = fresh_copy(s)
    assert torch.equal(copy_.stem[1].running_mean, torch.zeros(16))
    with torch.device("meta"):
        m = kd.create_model("resnet8")
    assert fresh_copy(m).fc.weight.device.type == "meta"


# DML


def test_dml_defaults_and_peers():
    s = _student()
    d = kd.build("dml", s)
    assert d.hparams() == {"num_peers": 3, "T": 1.0, "ce_weight": 1.0, "kl_weight": 1.0}
    assert d.student is s and d.members()[0] is s and len(d.peers) == 2
    assert d.student_modules() is s
    ids = {id(p) for p in d.parameters()}
    for peer in d.peers:
        assert {id(p) for p in peer.parameters()} <= ids
        assert not torch.equal(peer.fc.weight, s.fc.weight)
    assert len(kd.build("dml", _student(), num_peers=5).peers) == 4


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_peers=1),
        dict(num_peers=2.5),
        dict(num_peers=True),
        dict(T=0.0),
        dict(ce_weight=-1.0),
        dict(kl_weight=-0.5),
    ],
)
def test_dml_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build("dml", _student(), **bad)


def test_dml_terms_against_an_independent_computation():
    d = kd.build("dml", _student(), num_peers=3, T=2.0, ce_weight=0.5, kl_weight=0.7)
    x, y = _batch()
    d.eval()  # no running-statistic updates: the members give the same logits again
    logits, terms = d(x, y)
    assert set(terms) == {"ce", "kl", "peers_ce", "peers_kl"}
    with torch.no_grad():
        z = [_np(m(x)) for m in d.members()]
    torch.testing.assert_close(logits, d.student(x))
    yn = y.numpy()
    kl = [
        sum(_np_kl(z[j], z[k], 2.0) for j in range(3) if j != k) / 2 for k in range(3)
    ]
    assert terms["ce"].item() == pytest.approx(0.5 * _np_ce(z[0], yn), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(0.7 * kl[0], rel=1e-4)
    assert terms["peers_ce"].item() == pytest.approx(
        0.5 * (_np_ce(z[1], yn) + _np_ce(z[2], yn)), rel=1e-5
    )
    assert terms["peers_kl"].item() == pytest.approx(0.7 * (kl[1] + kl[2]), rel=1e-4)


def _grads(module: nn.Module, loss: torch.Tensor) -> bool:
    """Which of ``module``'s parameters get a non-zero gradient from ``loss``."""
    params = list(module.parameters())
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return any(g is not None and g.abs().sum() > 0 for g in grads)


def test_dml_student_terms_train_only_the_student_and_peer_terms_only_the_peers():
    d = kd.build("dml", _student()).train()
    x, y = _batch()
    _, terms = d(x, y)
    for key in ("ce", "kl"):
        assert _grads(d.student, terms[key])
        assert not any(_grads(p, terms[key]) for p in d.peers)
    for key in ("peers_ce", "peers_kl"):
        assert not _grads(d.student, terms[key])
        assert all(_grads(p, terms[key]) for p in d.peers)


# ONE


def _trunk(s, x):
    return s.layer2(s.layer1(s.stem(x)))


def test_one_defaults_structure_and_members():
    s = _student()
    d = kd.build("one", s)
    assert d.hparams() == {
        "num_branches": 3,
        "T": 3.0,
        "ce_weight": 1.0,
        "ensemble_weight": 1.0,
        "kl_weight": 1.0,
        "rampup": pytest.approx(80 / 300),
    }
    assert d.student_modules() is s and len(d.layer3s) == len(d.fcs) == 2
    x, _ = _batch()
    d.eval()
    with torch.no_grad():
        logits, gate = d.branches(x)
        torch.testing.assert_close(logits[:, 0], s(x))
        for i, member in enumerate(d.members()):
            torch.testing.assert_close(member(x), logits[:, i])
    torch.testing.assert_close(gate.sum(1), torch.ones(B))
    # Branches are fresh: their predictions differ.
    assert not torch.allclose(logits[:, 0], logits[:, 1])


def test_one_terms_against_an_independent_computation():
    d = kd.build(
        "one", _student(), T=2.0, ce_weight=0.5, ensemble_weight=0.3, kl_weight=0.8
    )
    d.on_epoch(1, 10)  # ramp-up over 10 * 80/300 epochs
    w = math.exp(-5 * (1 - 1 / (10 * 80 / 300)) ** 2)
    x, y = _batch()
    d.eval()
    _, terms = d(x, y)
    s = d.student
    with torch.no_grad():
        h = _trunk(s, x)
        z = [s.fc(s.pool(s.layer3(h)))] + [
            fc(s.pool(l3(h))) for l3, fc in zip(d.layer3s, d.fcs, strict=True)
        ]
        gate = _np(torch.softmax(d.gate(h.mean((2, 3))), 1))
    z = [_np(t) for t in z]
    ens = sum(gate[:, i : i + 1] * z[i] for i in range(3))
    yn = y.numpy()
    kl = [_np_kl(ens, z[i], 2.0, 1e-7) for i in range(3)]
    assert terms["ce"].item() == pytest.approx(0.5 * _np_ce(z[0], yn), rel=1e-5)
    assert terms["branches_ce"].item() == pytest.approx(
        0.5 * (_np_ce(z[1], yn) + _np_ce(z[2], yn)), rel=1e-5
    )
    assert terms["ensemble_ce"].item() == pytest.approx(0.3 * _np_ce(ens, yn), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(0.8 * w * kl[0], rel=1e-4)
    assert terms["branches_kl"].item() == pytest.approx(
        0.8 * w * (kl[1] + kl[2]), rel=1e-4
    )


def test_one_ramp_up_follows_the_epochs():
    d = kd.build("one", _student())
    d.on_epoch(0, 300)
    assert d.ramp == pytest.approx(math.exp(-5))
    d.on_epoch(80, 300)
    assert d.ramp == pytest.approx(1.0)
    d = kd.build("one", _student(), rampup=0.0)
    d.on_epoch(0, 8)
    assert d.ramp == 1.0


def test_one_gradients_reach_what_each_term_trains():
    d = kd.build("one", _student()).train()
    x, y = _batch()
    _, terms = d(x, y)
    s = d.student
    own = nn.ModuleList([s.layer3, s.fc])
    others = nn.ModuleList([*d.layer3s, *d.fcs])
    trunk = nn.ModuleList([s.stem, s.layer1, s.layer2])
    # The ensemble is detached in the KL terms: only its CE trains the gate.
    for key in ("ce", "kl", "branches_ce", "branches_kl"):
        assert not _grads(d.gate, terms[key]), key
    assert _grads(d.gate, terms["ensemble_ce"])
    for key in ("ce", "kl"):
        assert _grads(own, terms[key]) and _grads(trunk, terms[key])
        assert not _grads(others, terms[key])
    for key in ("branches_ce", "branches_kl"):
        assert not _grads(own, terms[key]) and _grads(others, terms[key])
    assert _grads(own, terms["ensemble_ce"]) and _grads(others, terms["ensemble_ce"])


@pytest.mark.parametrize("name", ["one", "okddip", "ffl"])
def test_branch_methods_need_a_cifar_resnet(name):
    net = nn.Sequential(nn.Conv2d(C, 8, 3), nn.Flatten(), nn.LazyLinear(K))
    with pytest.raises(ValueError, match="stem, layer1, layer2, layer3, pool"):
        kd.build(name, net)


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_branches=1),
        dict(T=-1.0),
        dict(rampup=1.5),
        dict(ensemble_weight=-1.0),
    ],
)
def test_one_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build("one", _student(), **bad)


def test_one_refuses_a_training_batch_of_one():
    d = kd.build("one", _student()).train()
    with pytest.raises(ValueError, match="at least 2 samples"):
        d(torch.randn(1, C, S, S), torch.tensor([0]))


# OKDDip


def test_okddip_defaults_structure_and_members():
    s = _student()
    d = kd.build("okddip", s)
    assert d.hparams() == {
        "num_peers": 3,
        "T": 3.0,
        "ce_weight": 1.0,
        "kl_weight": 1.0,
        "rampup": pytest.approx(80 / 300),
        "proj_factor": 8,
    }
    assert d.student_modules() is s and len(d.layer3s) == 3
    assert d.query.weight.shape == (8, 64) and d.query.bias is None
    x, _ = _batch()
    d.eval()
    with torch.no_grad():
        leader, peers, targets, att = d.group(x)
        torch.testing.assert_close(leader, s(x))
        members = d.members()
        torch.testing.assert_close(members[0](x), leader)
        for i in range(3):
            torch.testing.assert_close(members[i + 1](x), peers[:, i])
    assert att.shape == (B, 3, 3) and targets.shape == (B, 3, K)


def test_okddip_terms_against_an_independent_computation():
    d = kd.build("okddip", _student(), num_peers=2, T=2.0, ce_weight=0.5, kl_weight=0.8)
    d.on_epoch(0, 3)
    w = math.exp(-5)
    x, y = _batch()
    d.eval()
    logits, terms = d(x, y)
    s = d.student
    with torch.no_grad():
        h = _trunk(s, x)
        leader = _np(s.fc(s.pool(s.layer3(h))))
        embs = [s.pool(l3(h)) for l3 in d.layer3s]
        z = [_np(fc(e)) for fc, e in zip(d.fcs, embs, strict=True)]
        q = [_np(e @ d.query.weight.t()) for e in embs]
        k = [_np(e @ d.key.weight.t()) for e in embs]
    torch.testing.assert_close(logits, s(x))
    yn, m = y.numpy(), 2
    peers_kl = 0.0
    for i in range(m):
        energy = np.stack([(q[i] * k[j]).sum(1) for j in range(m)], 1)  # (B, m)
        a = np.exp(energy - energy.max(1, keepdims=True))
        a /= a.sum(1, keepdims=True)
        t_i = sum(a[:, j : j + 1] * z[j] for j in range(m))
        peers_kl += _np_kl(t_i, z[i], 2.0, 1e-7)
    mean = (z[0] + z[1]) / 2
    assert terms["ce"].item() == pytest.approx(0.5 * _np_ce(leader, yn), rel=1e-5)
    assert terms["peers_ce"].item() == pytest.approx(
        0.5 * (_np_ce(z[0], yn) + _np_ce(z[1], yn)), rel=1e-5
    )
    assert terms["kl"].item() == pytest.approx(
        0.8 * w * _np_kl(mean, leader, 2.0, 1e-7), rel=1e-4
    )
    assert terms["peers_kl"].item() == pytest.approx(0.8 * w * peers_kl, rel=1e-4)


def test_okddip_gradients_follow_the_authors_code():
    d = kd.build("okddip", _student()).train()
    x, y = _batch()
    _, terms = d(x, y)
    s = d.student
    leader = nn.ModuleList([s.layer3, s.fc])
    peers = nn.ModuleList([*d.layer3s, *d.fcs])
    attention = nn.ModuleList([d.query, d.key])
    # The attention projections learn only through the peers' targets.
    for key in ("ce", "kl", "peers_ce"):
        assert not _grads(attention, terms[key]), key
    assert _grads(attention, terms["peers_kl"])
    assert _grads(leader, terms["ce"]) and not _grads(peers, terms["ce"])
    assert not _grads(leader, terms["peers_ce"]) and _grads(peers, terms["peers_ce"])
    # Nothing is detached: the leader's KL also reaches the peers (its target).
    assert _grads(leader, terms["kl"]) and _grads(peers, terms["kl"])
    assert not _grads(leader, terms["peers_kl"])


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_peers=1),
        dict(proj_factor=0),
        dict(proj_factor=65),
        dict(T=0.0),
        dict(rampup=-0.1),
        dict(kl_weight=-1.0),
    ],
)
def test_okddip_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build("okddip", _student(), **bad)


# FFL


def test_ffl_defaults_structure_and_members():
    s = _student()
    d = kd.build("ffl", s)
    assert d.hparams() == {
        "num_branches": 2,
        "T": 3.0,
        "ce_weight": 1.0,
        "fusion_weight": 1.0,
        "kl_weight": 1.0,
        "rampup": pytest.approx(80 / 300),
    }
    assert d.student_modules() is s and len(d.layer3s) == 1
    assert d.fusion.conv1.groups == 128 and d.fusion.conv2.out_channels == 64
    x, _ = _batch()
    d.eval()
    with torch.no_grad():
        logits, fused = d.branches(x)
        for i, member in enumerate(d.members()):
            torch.testing.assert_close(member(x), logits[:, i])
    torch.testing.assert_close(logits[:, 0], s(x))
    assert fused.shape == (B, K)


def test_ffl_terms_against_an_independent_computation():
    d = kd.build("ffl", _student(), num_branches=3, T=2.0, ce_weight=0.5)
    d.fusion_weight, d.kl_weight = 0.3, 0.8
    x, y = _batch()
    d.eval()
    _, terms = d(x, y)  # no on_epoch: the ramp is 1
    s, f = d.student, d.fusion
    with torch.no_grad():
        h = _trunk(s, x)
        maps = [s.layer3(h)] + [l3(h) for l3 in d.layer3s]
        z = [_np(s.fc(s.pool(maps[0])))] + [
            _np(fc(s.pool(m))) for fc, m in zip(d.fcs, maps[1:], strict=True)
        ]
        # The fusion module, step by step: depthwise 3x3 (one filter per
        # channel), batch norm, ReLU, 1x1, batch norm, ReLU, mean, linear.
        cat = torch.cat(maps, 1)
        dw = torch.cat(
            [
                F.conv2d(cat[:, c : c + 1], f.conv1.weight[c : c + 1], padding=1)
                for c in range(cat.shape[1])
            ],
            1,
        )
        a = torch.relu(f.bn1(dw))
        b = torch.relu(
            f.bn2(torch.einsum("oc,bchw->bohw", f.conv2.weight[:, :, 0, 0], a))
        )
        fused = _np(f.fc(b.mean((2, 3))))
    yn = y.numpy()
    ens = sum(z) / 3
    kl = [_np_kl(fused, z[i], 2.0, 1e-7) for i in range(3)]
    assert terms["ce"].item() == pytest.approx(0.5 * _np_ce(z[0], yn), rel=1e-5)
    assert terms["branches_ce"].item() == pytest.approx(
        0.5 * (_np_ce(z[1], yn) + _np_ce(z[2], yn)), rel=1e-5
    )
    assert terms["fusion_ce"].item() == pytest.approx(0.3 * _np_ce(fused, yn), rel=1e-5)
    assert terms["kl"].item() == pytest.approx(0.8 * kl[0], rel=1e-4)
    assert terms["branches_kl"].item() == pytest.approx(0.8 * (kl[1] + kl[2]), rel=1e-4)
    assert terms["fusion_kl"].item() == pytest.approx(
        0.8 * _np_kl(ens, fused, 2.0, 1e-7), rel=1e-4
    )


def test_ffl_gradients_reach_what_each_term_trains():
    d = kd.build("ffl", _student()).train()
    x, y = _batch()
    _, terms = d(x, y)
    s = d.student
    own = nn.ModuleList([s.layer3, s.fc])
    others = nn.ModuleList([*d.layer3s, *d.fcs])
    # Both targets are detached: the fused classifier teaches the branches
    # without learning from that, and the branches' ensemble teaches it.
    for key in ("ce", "kl", "branches_ce", "branches_kl"):
        assert not _grads(d.fusion, terms[key]), key
    for key in ("fusion_ce", "fusion_kl"):
        assert _grads(d.fusion, terms[key]), key
        # ... and reach the branches' layer3 through the fused maps.
        assert _grads(nn.ModuleList([s.layer3, *d.layer3s]), terms[key]), key
        assert not _grads(nn.ModuleList([s.fc, *d.fcs]), terms[key]), key
    assert _grads(own, terms["kl"]) and not _grads(others, terms["kl"])
    assert _grads(others, terms["branches_kl"]) and not _grads(
        own, terms["branches_kl"]
    )


@pytest.mark.parametrize(
    "bad",
    [dict(num_branches=1), dict(T=0.0), dict(rampup=2.0), dict(fusion_weight=-1.0)],
)
def test_ffl_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build("ffl", _student(), **bad)


# member_metrics and the methods' epoch_metrics


def _np_member_metrics(logits: list[np.ndarray], y: np.ndarray) -> dict:
    """``member_metrics`` by float64 loops over samples and ordered pairs."""
    m, n = len(logits), len(y)
    probs = [
        np.exp(np.stack([_np_log_softmax(z[b]) for b in range(n)])) for z in logits
    ]
    out = {
        f"acc{i}": sum(int(np.argmax(z[b]) == y[b]) for b in range(n)) / n
        for i, z in enumerate(logits)
    }
    ens = sum(probs) / m
    out["ensemble_acc"] = sum(int(np.argmax(ens[b]) == y[b]) for b in range(n)) / n
    agree, kl, pairs = 0.0, 0.0, 0
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            pairs += 1
            agree += (
                sum(
                    int(np.argmax(logits[i][b]) == np.argmax(logits[j][b]))
                    for b in range(n)
                )
                / n
            )
            kl += (
                sum(
                    sum(
                        probs[i][b, k] * math.log(probs[i][b, k] / probs[j][b, k])
                        for k in range(logits[i].shape[1])
                    )
                    for b in range(n)
                )
                / n
            )
    out["agreement"] = agree / pairs
    out["pair_kl"] = kl / pairs
    return out


def _assert_metrics(got: dict, ref: dict) -> None:
    assert set(got) == set(ref)
    for k, v in ref.items():
        if k == "pair_kl":
            assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-9), k
        else:  # fractions of images: exact up to float rounding
            assert got[k] == pytest.approx(v, abs=1e-12), k


def _linear_members(m: int) -> list[nn.Module]:
    out = []
    for i in range(m):
        torch.manual_seed(100 + i)
        out.append(nn.Sequential(nn.Flatten(), nn.Linear(64, K)))
    return out


def _labelled_by(members, n: int = 50) -> kdata.TensorData:
    """8x8 grey images; the first 25 labelled by member 0's prediction, the
    next 12 by member 1's, the rest at random: the members' accuracies differ."""
    g = torch.Generator().manual_seed(11)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g).to(torch.uint8)
    x = kdata.normalize(images, kdata.DATASETS["digits"])
    with torch.no_grad():
        pred = [mem(x).argmax(1) for mem in members[:2]]
    y = torch.randint(0, K, (n,), generator=g)
    y[:25], y[25:37] = pred[0][:25], pred[1][25:37]
    return kdata.TensorData(images, y, "digits")


def _logits_of(members, data: kdata.TensorData) -> list[np.ndarray]:
    x = kdata.normalize(data.images, data.info)
    with torch.no_grad():
        return [_np(mem.eval()(x)) for mem in members]


@pytest.mark.parametrize("m", [2, 3])
@pytest.mark.parametrize("n", [40, 2000])  # a fixed subset; all 50 images
def test_member_metrics_against_loops(m, n):
    members = _linear_members(m)
    data = _labelled_by(members)
    got = member_metrics(members, data, n)
    sub = data.subset(n)
    assert len(sub) == min(n, 50)
    ref = _np_member_metrics(_logits_of(members, sub), sub.labels.numpy())
    _assert_metrics(got, ref)
    # The labels make the members' accuracies differ (a swapped index shows).
    assert got["acc0"] > got["acc1"] > 0.1
    assert 0 < got["agreement"] < 1 and got["pair_kl"] > 0


def test_member_metrics_of_identical_members():
    (a,) = _linear_members(1)
    data = _labelled_by([a, a])
    got = member_metrics([a, a, a], data)
    assert got["agreement"] == 1.0
    assert got["pair_kl"] == pytest.approx(0.0, abs=1e-12)
    assert got["acc0"] == got["acc1"] == got["acc2"] == got["ensemble_acc"]


def _digits_members(name: str, **hp):
    torch.manual_seed(0)
    s = kd.create_model("resnet8", num_classes=10, in_channels=1)
    return kd.build(name, s, **hp).eval()


@pytest.mark.parametrize(
    "name,hp,m", [("dml", {}, 3), ("dml", {"num_peers": 2}, 2), ("one", {}, 3)]
)
def test_epoch_metrics_of_the_members(name, hp, m):
    d = _digits_members(name, **hp)
    test = kdata.load("digits", train=False)  # 360 images: all are measured
    with torch.no_grad():
        got = d.epoch_metrics(test)
        x = kdata.normalize(test.images, test.info)
        if name == "one":  # the branches' own forward, not members()
            z = d.branches(x)[0]
            logits = [_np(z[:, i]) for i in range(z.shape[1])]
        else:
            logits = [_np(d.student(x))] + [_np(p(x)) for p in d.peers]
    assert set(got) == {f"acc{i}" for i in range(m)} | {
        "ensemble_acc",
        "agreement",
        "pair_kl",
    }
    _assert_metrics(got, _np_member_metrics(logits, test.labels.numpy()))


# Training through kd.run: the reported accuracy is the student's alone


NAMES = ["dml", "one", "okddip", "ffl"]


@pytest.mark.parametrize("name", NAMES)
def test_run_reports_and_saves_the_deployable_student(digits_config, name):
    cfg = digits_config(method=name, teacher=None, epochs=1)
    assert cfg.name.startswith(f"{name}-resnet8-digits")
    res = kd.run(cfg, progress=False)
    assert res.teacher is None
    model = res.load_model()  # a plain ResNet8 loads the saved weights
    assert type(model) is type(kd.create_model("resnet8"))
    ev = kd.evaluate(model, kloop.load_split(cfg, train=False))
    assert ev["acc"] == pytest.approx(res.test_acc)
    assert res.final["params"] == kd.num_params(model)
    h = res.history[0]
    assert {"train_ce", "train_kl"} <= set(h)
    # The members' metrics: member 0 is the student, measured on the whole
    # (200-image) test set as test_acc is; the values are those of the saved
    # distiller's members (peers, branches) measured again.
    members = ktrain.load_distiller(res).members()
    m = {"dml": 3, "one": 3, "okddip": 4, "ffl": 2}[name]
    assert len(members) == m
    metrics = {k[len("metric_") :]: v for k, v in h.items() if k.startswith("metric_")}
    assert set(metrics) == {f"acc{i}" for i in range(m)} | {
        "ensemble_acc",
        "agreement",
        "pair_kl",
    }
    assert metrics["acc0"] == pytest.approx(h["test_acc"], abs=1e-12)
    # (The run's layout is channels-last: the float32 logits differ in the
    # last bits, so pair_kl to a relative 1e-5.)
    _assert_metrics(metrics, member_metrics(members, kloop.load_split(cfg, False)))


@pytest.mark.parametrize("name", NAMES)
def test_a_killed_run_resumes_exactly_with_its_peers(
    digits_config, tmp_path, monkeypatch, capsys, name
):
    cfg = digits_config(method=name, teacher=None, epochs=2)
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "uninterrupted"))
    reference = kd.run(cfg, progress=False)

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "interrupted"))
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=2)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    state = kloop.load_checkpoint(
        kruns.run_dir(cfg) / "checkpoint.pt", kruns.run_key(cfg)
    )["distiller"]
    extra = {
        "dml": "peers.0.fc.weight",
        "one": "gate.0.weight",
        "okddip": "query.weight",
        "ffl": "fusion.conv1.weight",
    }
    assert extra[name] in state
    capsys.readouterr()
    resumed = kd.run(cfg, progress=False)
    assert "[resume]" in capsys.readouterr().out
    a = torch.load(Path(reference.path) / "model.pt", weights_only=True)
    b = torch.load(Path(resumed.path) / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for h, r in zip(resumed.history, reference.history, strict=True):
        assert {k: v for k, v in h.items() if k != "seconds"} == {
            k: v for k, v in r.items() if k != "seconds"
        }
