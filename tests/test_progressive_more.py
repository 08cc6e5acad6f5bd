"""ProKT (2.3.4): the teacher's loss, the Distiller's terms and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdutils as kd
from kdutils.losses import prokt_teacher_loss

B, K = 6, 5


def _logits(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = 2 * torch.randn(B, K, generator=g, dtype=torch.float64)
    t = 2 * torch.randn(B, K, generator=g, dtype=torch.float64)
    y = torch.randint(0, K, (B,), generator=g)
    return s, t, y


def _softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


@pytest.mark.parametrize("lam", [0.0, 0.4, 1.0])
def test_prokt_teacher_loss_against_loops(lam):
    s, t, y = _logits()
    total = 0.0
    for zs, zt, c in zip(s.numpy(), t.numpy(), y.numpy(), strict=True):
        ps, pt = _softmax(zs), _softmax(zt)
        kl = sum(ps[k] * (np.log(ps[k]) - np.log(pt[k])) for k in range(K))
        total += (1 - lam) * -np.log(pt[c]) + lam * kl
    got = prokt_teacher_loss(s, t, y, lam)
    assert got.item() == pytest.approx(total / B, rel=1e-10)


def test_prokt_teacher_loss_properties():
    s, t, y = _logits(1)
    # lambda = 0: the teacher learns from the labels alone.
    torch.testing.assert_close(prokt_teacher_loss(s, t, y, 0.0), F.cross_entropy(t, y))
    # A teacher that predicts what the student predicts pays no KL.
    zero = prokt_teacher_loss(t, t, y, 1.0)
    torch.testing.assert_close(zero, torch.zeros((), dtype=torch.float64))
    # The KL points from the student to the teacher: it is not symmetric.
    assert prokt_teacher_loss(s, t, y, 1.0) != pytest.approx(
        prokt_teacher_loss(t, s, y, 1.0).item()
    )
    # The KL term pulls the teacher towards the student: a step on it
    # moves the teacher's prediction closer.
    t_var = t.clone().requires_grad_(True)
    prokt_teacher_loss(s, t_var, y, 1.0).backward()
    moved = (t - 0.5 * t_var.grad).detach()
    assert prokt_teacher_loss(s, moved, y, 1.0) < prokt_teacher_loss(s, t, y, 1.0)


def test_prokt_teacher_loss_errors():
    s, t, y = _logits()
    with pytest.raises(ValueError, match="move_back_weight"):
        prokt_teacher_loss(s, t, y, 1.5)
    with pytest.raises(ValueError, match="one shape"):
        prokt_teacher_loss(s, t[:, :3], y)
    with pytest.raises(ValueError, match="labels"):
        prokt_teacher_loss(s, t, y[:3])


def _prokt(**kw):
    torch.manual_seed(0)
    student = kd.create_model("resnet8", num_classes=10, in_channels=1)
    teacher = kd.create_model("resnet14", num_classes=10, in_channels=1)
    return kd.build("prokt", student, teacher, **kw), student, teacher


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(8, 1, 12, 12, generator=g), torch.randint(
        0, 10, (8,), generator=g
    )


def test_prokt_defaults_and_a_fresh_trainable_teacher():
    d, student, teacher = _prokt()
    assert d.hparams() == dict(
        move_back_weight=0.4, T=1.0, ce_weight=0.0, kd_weight=1.0
    )
    assert d.teacher is None  # the given teacher's weights are not used
    assert type(d.mentor) is type(teacher)
    assert all(p.requires_grad for p in d.mentor.parameters())
    given, fresh = next(teacher.parameters()), next(d.mentor.parameters())
    assert given.shape == fresh.shape and not torch.equal(given, fresh)


def test_prokt_terms_against_an_independent_computation():
    d, student, _ = _prokt(ce_weight=0.3, kd_weight=0.7, T=2.0)
    d.eval()  # batch norms use running statistics: the same outputs twice
    x, y = _batch()
    logits_s, terms = d(x, y)
    with torch.no_grad():
        zs, zt = student(x).double(), d.mentor(x).double()
    ps2, pt2 = F.softmax(zs / 2, 1), F.softmax(zt / 2, 1)
    kd_ref = 4 * (pt2 * (pt2.log() - ps2.log())).sum(1).mean()
    ps, pt = F.softmax(zs, 1), F.softmax(zt, 1)
    kl_ref = (ps * (ps.log() - pt.log())).sum(1).mean()
    ref = {
        "ce": 0.3 * F.cross_entropy(zs, y),
        "kd": 0.7 * kd_ref,
        "teacher_ce": 0.6 * F.cross_entropy(zt, y),
        "teacher_kl": 0.4 * kl_ref,
    }
    assert set(terms) == set(ref)
    for k, v in ref.items():
        assert terms[k].item() == pytest.approx(v.item(), rel=1e-4, abs=1e-6), k


def test_prokt_gradients_reach_each_network_only_through_its_own_terms():
    d, student, _ = _prokt(ce_weight=1.0)
    d.train()
    x, y = _batch()
    _, terms = d(x, y)
    for name, own, other in (
        ("kd", student, d.mentor),
        ("ce", student, d.mentor),
        ("teacher_kl", d.mentor, student),
        ("teacher_ce", d.mentor, student),
    ):
        d.zero_grad(set_to_none=True)
        terms[name].backward(retain_graph=True)
        assert any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in own.parameters()
        )
        assert all(p.grad is None for p in other.parameters()), name


@pytest.mark.parametrize(
    "bad",
    [
        dict(move_back_weight=-0.1),
        dict(move_back_weight=1.1),
        dict(T=0.0),
        dict(kd_weight=-1.0),
    ],
)
def test_prokt_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        _prokt(**bad)


def test_prokt_needs_a_teacher_for_its_architecture():
    with pytest.raises(ValueError, match="needs a teacher"):
        kd.build("prokt", kd.create_model("resnet8", 10, 1), None)


def _collab(**kw):
    torch.manual_seed(0)
    student = kd.create_model("resnet8", num_classes=10, in_channels=1)
    teacher = kd.create_model("resnet14", num_classes=10, in_channels=1)
    d = kd.build("collab", student, teacher, **kw)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 1, 12, 12), generator=g).to(torch.uint8)
    d.setup(kd.data.TensorData(images, torch.arange(8) % 10, "fashion-mnist"))
    return d, student, teacher


def _attention_loss_loops(fs, ft):
    # Zagoruyko & Komodakis: per sample, mean over channels of f^2, flattened
    # and L2-normalised; mean squared difference over batch and positions.
    total = 0.0
    for a, b in zip(fs, ft, strict=True):
        a, b = a.double().numpy(), b.double().numpy()
        diffs = []
        for i in range(a.shape[0]):
            qa = (a[i] ** 2).mean(0).ravel()
            qb = (b[i] ** 2).mean(0).ravel()
            qa, qb = qa / np.linalg.norm(qa), qb / np.linalg.norm(qb)
            diffs.extend((qa - qb) ** 2)
        total += float(np.mean(diffs))
    return total


def test_collab_is_registered_as_a_stand_in_with_its_note():
    cls = kd.METHODS["collab"]
    assert cls.status == "stand-in" and "Zhao et al. 2019" in cls.status_note


def test_collab_terms_against_an_independent_computation():
    d, student, teacher = _collab()
    d.eval()
    x, y = _batch()
    _, terms = d(x, y)
    layers = student.stage_layers()
    with torch.no_grad():
        with kd.capture(student, layers) as fs:
            zs = student(x).double()
        with kd.capture(teacher, layers) as ft:
            teacher(x)
        zc = d.scratch(x).double()
    q, log_p = F.softmax(zc / 4, 1), F.log_softmax(zs / 4, 1)
    want = {
        "ce": 0.1 * F.cross_entropy(zs, y).item(),
        "kd": 0.9 * 16 * (q * (q.log() - log_p)).sum(1).mean().item(),
        "at": 1000
        * _attention_loss_loops([fs[k] for k in layers], [ft[k] for k in layers]),
        "teacher_ce": F.cross_entropy(zc, y).item(),
    }
    assert set(terms) == set(want)
    for k, v in want.items():
        assert terms[k].item() == pytest.approx(v, rel=1e-4, abs=1e-6), k


def test_collab_scratch_teacher_trains_on_labels_and_teaches_only_outputs():
    d, student, teacher = _collab()
    d.train()
    x, y = _batch()
    _, terms = d(x, y)
    assert all(p.requires_grad for p in d.scratch.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())  # the expert
    d.zero_grad(set_to_none=True)
    terms["kd"].backward(retain_graph=True)
    assert all(p.grad is None for p in d.scratch.parameters())
    d.zero_grad(set_to_none=True)
    terms["teacher_ce"].backward()
    assert all(p.grad is None for p in student.parameters())


@pytest.mark.parametrize("bad", [dict(T=0.0), dict(p=0.0), dict(at_weight=-1.0)])
def test_collab_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        _collab(**bad)
