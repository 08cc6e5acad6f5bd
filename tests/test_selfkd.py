"""Self-distillation (survey 2.3.2): BYOT, BAKE, born-again networks.

The losses against float64 references written with explicit loops, their
properties and errors; the distillers' terms against an independent forward;
what each term trains; BYOT's per-exit accuracies (``epoch_metrics``)
against each exit evaluated alone; training through ``kd.run`` with an exact
resume (the exits in the checkpoint); the born-again pipeline."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_stops import interrupt as _interrupt

import kdutils as kd
from kdutils import data as kdata
from kdutils import loop as kloop
from kdutils import runs as kruns
from kdutils import train as ktrain
from kdutils.losses import (
    bake_targets,
    byot_feature_loss,
    byot_kd_loss,
    kd_loss,
    kl_to_targets,
)
from kdutils.pipelines import born_again, generation_ensemble_accuracy

B, K, C, S = 8, 10, 3, 16


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, S, S, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    return x, y


def _student(seed: int = 0):
    torch.manual_seed(seed)
    return kd.create_model("resnet8", num_classes=K, in_channels=C)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _softmax_row(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


# byot_kd_loss and byot_feature_loss


@pytest.mark.parametrize("T", [1.0, 3.0, 5.5])
def test_byot_kd_loss_is_a_soft_cross_entropy_by_loops(T):
    g = torch.Generator().manual_seed(0)
    s, t = 3 * torch.randn(B, K, generator=g), 3 * torch.randn(B, K, generator=g)
    total = 0.0
    for b in range(B):
        q = _softmax_row(_np(t[b]) / T)
        log_p = np.log(_softmax_row(_np(s[b]) / T))
        total -= sum(q[k] * log_p[k] for k in range(K))
    assert byot_kd_loss(s, t, T).item() == pytest.approx(T**2 * total / B, rel=1e-5)


def test_byot_kd_loss_is_kl_plus_the_targets_entropy_with_the_kls_gradient():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(B, K, generator=g, requires_grad=True)
    t = torch.randn(B, K, generator=g)
    T = 3.0
    q = F.softmax(t / T, 1)
    entropy = -(q * q.log()).sum(1).mean() * T**2
    ours = byot_kd_loss(s, t, T)
    torch.testing.assert_close(ours, kd_loss(s, t, T) + entropy)
    (g1,) = torch.autograd.grad(ours, s)
    (g2,) = torch.autograd.grad(kd_loss(s, t, T), s)
    torch.testing.assert_close(g1, g2)


def test_byot_feature_loss_by_loops_with_its_mask():
    g = torch.Generator().manual_seed(2)
    fs, ft = torch.randn(B, 6, generator=g), torch.randn(B, 6, generator=g)
    ref = 0.0
    for b in range(B):
        for i in range(6):
            a, c = float(fs[b, i]), float(ft[b, i])
            if a > 0 or c > 0:
                ref += (a - c) ** 2
    assert byot_feature_loss(fs, ft).item() == pytest.approx(ref, rel=1e-5)
    # On non-negative features (what BYOT compares) it is the summed squared error.
    fs, ft = fs.relu(), ft.relu()
    torch.testing.assert_close(byot_feature_loss(fs, ft), ((fs - ft) ** 2).sum())


def test_byot_losses_reject_bad_input():
    z = torch.zeros(B, K)
    with pytest.raises(ValueError, match="temperature"):
        byot_kd_loss(z, z, T=0.0)
    with pytest.raises(ValueError, match=r"\(8, 10\).*\(8, 5\)"):
        byot_kd_loss(z, torch.zeros(B, 5))
    with pytest.raises(ValueError, match=r"\(8, 10\).*\(8, 1, 10\)"):
        byot_feature_loss(z, z[:, None])


# bake_targets and kl_to_targets


def _bake_reference(emb, logits, omega, T, terms=400):
    """(1 - omega) sum_t omega^t A^t P, with A and P built entry by entry."""
    e, z = _np(emb), _np(logits)
    n = e.shape[0]
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    a = np.zeros((n, n))
    for i in range(n):
        others = [j for j in range(n) if j != i]
        w = _softmax_row(np.array([e[i] @ e[j] for j in others]))
        for j, wj in zip(others, w, strict=True):
            a[i, j] = wj
    p = np.stack([_softmax_row(z[i] / T) for i in range(n)])
    out, term = np.zeros_like(p), p.copy()
    for _ in range(terms):
        out += term
        term = omega * a @ term
    return (1 - omega) * out


@pytest.mark.parametrize("omega,T", [(0.5, 4.0), (0.9, 1.0), (0.0, 2.0)])
def test_bake_targets_are_the_propagation_series(omega, T):
    g = torch.Generator().manual_seed(3)
    emb, logits = torch.randn(B, 12, generator=g), 3 * torch.randn(B, K, generator=g)
    ours = bake_targets(emb, logits, omega, T)
    np.testing.assert_allclose(
        ours.double().numpy(), _bake_reference(emb, logits, omega, T), atol=1e-5
    )
    torch.testing.assert_close(ours.sum(1), torch.ones(B))


def test_bake_targets_properties():
    g = torch.Generator().manual_seed(4)
    emb, logits = torch.randn(B, 12, generator=g), torch.randn(B, K, generator=g)
    p = F.softmax(logits / 4.0, 1)
    torch.testing.assert_close(bake_targets(emb, logits, omega=0.0), p)
    # A batch of one has no neighbours: its own prediction.
    torch.testing.assert_close(bake_targets(emb[:1], logits[:1]), p[:1])
    # Equal predictions stay equal, whatever the affinities.
    same = logits[:1].expand(B, K)
    torch.testing.assert_close(bake_targets(emb, same), F.softmax(same / 4.0, 1))
    # The affinities use directions only.
    torch.testing.assert_close(
        bake_targets(3.0 * emb, logits), bake_targets(emb, logits)
    )


def test_bake_targets_reject_bad_input():
    emb, z = torch.zeros(B, 4), torch.zeros(B, K)
    for bad in (dict(omega=1.0), dict(omega=-0.1)):
        with pytest.raises(ValueError, match="omega"):
            bake_targets(emb, z, **bad)
    with pytest.raises(ValueError, match="temperature"):
        bake_targets(emb, z, T=0.0)
    with pytest.raises(ValueError, match=r"\(8, 4\).*\(7, 10\)"):
        bake_targets(emb, z[:7])


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kl_to_targets_by_loops_and_equal_to_kd_loss(T):
    g = torch.Generator().manual_seed(5)
    s, t = 2 * torch.randn(B, K, generator=g), 2 * torch.randn(B, K, generator=g)
    q = F.softmax(t / T, 1)
    q[0] = 0.0  # a target with zeros: 0 log 0 = 0
    q[0, 3] = 1.0
    total = 0.0
    for b in range(B):
        log_p = np.log(_softmax_row(_np(s[b]) / T))
        qb = _np(q[b])
        total += sum(qb[k] * (math.log(qb[k]) - log_p[k]) for k in range(K) if qb[k])
    assert kl_to_targets(s, q, T).item() == pytest.approx(T**2 * total / B, rel=1e-5)
    torch.testing.assert_close(
        kl_to_targets(s, F.softmax(t / T, 1), T), kd_loss(s, t, T)
    )
    with pytest.raises(ValueError, match=r"\(8, 10\).*\(8, 9\)"):
        kl_to_targets(s, q[:, :9], T)


# The BYOT distiller


def test_byot_builds_an_exit_after_layer1_and_layer2():
    student = _student()
    d = kd.build("byot", student)
    assert d.hparams() == {
        "T": 3.0,
        "ce_weight": 0.9,
        "kd_weight": 0.1,
        "hint_weight": 1e-6,
    }
    assert len(d.exits) == 2 and d.teacher is None
    x, _ = _batch()
    logits = d.exit_logits(x)
    assert [z.shape for z in logits] == [(B, K)] * 3
    models = d.exit_models()
    assert models[-1] is student
    d.eval()
    for m, z in zip(models, d.exit_logits(x), strict=True):
        torch.testing.assert_close(m(x), z)
    # The exit after layer1 has reached layer3's spatial size before pooling.
    conv = d.exits[0].bottleneck[3]
    assert conv.kernel_size == (4, 4) and conv.stride == (4, 4)


def test_byot_terms_against_an_independent_forward():
    student = _student()
    d = kd.build("byot", student, T=2.0, ce_weight=0.7, kd_weight=0.3, hint_weight=0.5)
    d.train()
    x, y = _batch()
    state = {k: v.clone() for k, v in d.state_dict().items()}
    logits, terms = d(x, y)
    d.load_state_dict(state)
    s = student
    h1 = s.layer1(s.stem(x))
    h2 = s.layer2(h1)
    f3 = s.pool(s.layer3(h2))
    z3 = s.fc(f3)
    outs = [d.exits[0](h1), d.exits[1](h2)]
    torch.testing.assert_close(logits, z3)
    torch.testing.assert_close(terms["ce"], 0.7 * F.cross_entropy(z3, y))
    torch.testing.assert_close(
        terms["exits_ce"], 0.7 * sum(F.cross_entropy(z, y) for z, _ in outs)
    )
    torch.testing.assert_close(
        terms["kd"], 0.3 * sum(byot_kd_loss(z, z3, 2.0) for z, _ in outs)
    )
    torch.testing.assert_close(
        terms["hint"], 0.5 * sum(byot_feature_loss(f, f3) for _, f in outs)
    )


def test_byot_deepest_exit_learns_from_the_labels_only():
    student = _student()
    d = kd.build("byot", student, hint_weight=1.0).train()
    x, y = _batch()
    _, terms = d(x, y)
    (terms["kd"] + terms["hint"]).backward()
    # The targets (deepest logits and feature) are constants: layer3 and fc
    # get nothing; the earlier stages and the exits learn.
    for p in [*student.layer3.parameters(), *student.fc.parameters()]:
        assert p.grad is None
    assert all(p.grad is not None for p in d.exits.parameters())
    assert student.layer1[0].conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "bad", [dict(T=0.0), dict(kd_weight=-1.0), dict(hint_weight=-1e-6)]
)
def test_byot_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build("byot", _student(), **bad)


def test_byot_and_bake_name_what_a_model_lacks():
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 10))
    with pytest.raises(ValueError, match="layer1.*layer2.*layer3"):
        kd.build("byot", mlp)
    with pytest.raises(ValueError, match="pool"):
        kd.build("bake", mlp)


# The BAKE distiller


def test_bake_terms_and_constant_targets():
    student = _student()
    d = kd.build("bake", student, omega=0.6, T=3.0, ce_weight=0.5, kd_weight=2.0)
    assert d.hparams() == dict(omega=0.6, T=3.0, ce_weight=0.5, kd_weight=2.0)
    d.train()
    x, y = _batch()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    logits, terms = d(x, y)
    student.load_state_dict(state)
    with kd.capture(student, ["pool"]) as feats:
        z = student(x)
    q = bake_targets(feats["pool"].detach(), z.detach(), 0.6, 3.0)
    torch.testing.assert_close(terms["ce"], 0.5 * F.cross_entropy(z, y))
    torch.testing.assert_close(terms["kd"], 2.0 * kl_to_targets(z, q, 3.0))
    # The gradient is that of the KL to fixed targets, through the logits only.
    (g_ours,) = torch.autograd.grad(terms["kd"], logits)
    zz = logits.detach().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(2.0 * kl_to_targets(zz, q, 3.0), zz)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("bad", [dict(omega=1.0), dict(T=-1.0), dict(kd_weight=-1.0)])
def test_bake_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build("bake", _student(), **bad)


def _exit_labelled_data(d, n: int = 2100) -> kdata.TensorData:
    """Random images, more than the 2000 measured; the first 1050 labelled by
    exit 0's prediction, the next 550 by exit 1's, the rest at random, so the
    exits' accuracies differ (and differ on the 2000-image subset)."""
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, C, S, S), generator=g).to(torch.uint8)
    x = kdata.normalize(images, kdata.DATASETS["cifar10"])
    d.eval()
    z = d.exit_logits(x)
    y = torch.randint(0, K, (n,), generator=g)
    y[:1050], y[1050:1600] = z[0][:1050].argmax(1), z[1][1050:1600].argmax(1)
    return kdata.TensorData(images, y, "cifar10")


def test_byot_epoch_metrics_are_each_exits_accuracy_on_2000_test_images():
    d = kd.build("byot", _student())
    test = _exit_labelled_data(d)
    with torch.no_grad():
        got = d.epoch_metrics(test)
    assert list(got) == ["exit0_acc", "exit1_acc", "exit2_acc"]
    sub = test.subset(2000)
    assert len(sub) == 2000
    y = sub.labels.numpy()
    # All exits in one forward (all_exits), counted by a loop ...
    z = [_np(t) for t in d.exit_logits(kdata.normalize(sub.images, sub.info))]
    for i, zi in enumerate(z):
        ref = sum(int(np.argmax(zi[b]) == y[b]) for b in range(len(y))) / len(y)
        assert got[f"exit{i}_acc"] == pytest.approx(ref, abs=1e-12), i
    # ... and each exit evaluated alone as a plain classifier.
    for i, m in enumerate(d.exit_models()):
        assert got[f"exit{i}_acc"] == pytest.approx(kd.evaluate(m, sub)["acc"]), i
    assert got["exit0_acc"] > got["exit1_acc"] > got["exit2_acc"]
    # Not the whole test set.
    full = kd.evaluate(d.exit_models()[0], test)["acc"]
    assert full != pytest.approx(got["exit0_acc"], abs=1e-9)


# Training through kd.run


@pytest.mark.parametrize("name", ["byot", "bake"])
def test_run_saves_the_plain_student(digits_config, name):
    cfg = digits_config(method=name, teacher=None, epochs=1)
    res = kd.run(cfg, progress=False)
    model = res.load_model()
    assert type(model) is type(kd.create_model("resnet8"))
    test = kloop.load_split(cfg, train=False)
    ev = kd.evaluate(model, test)
    assert ev["acc"] == pytest.approx(res.test_acc)
    assert {"train_ce", "train_kd"} <= set(res.history[0])
    metrics = {k: v for k, v in res.history[0].items() if k.startswith("metric_")}
    if name == "bake":
        assert not metrics
        return
    # BYOT: every exit's accuracy on the (200-image) test set; the last exit
    # is the student (test_acc), the others the saved exits evaluated again.
    assert set(metrics) == {"metric_exit0_acc", "metric_exit1_acc", "metric_exit2_acc"}
    assert metrics["metric_exit2_acc"] == pytest.approx(res.test_acc, abs=1e-12)
    exits = ktrain.load_distiller(res).exit_models()
    for i, m in enumerate(exits):
        acc = kd.evaluate(m, test)["acc"]
        assert metrics[f"metric_exit{i}_acc"] == pytest.approx(acc, abs=1e-12), i


def test_a_killed_byot_run_resumes_exactly_with_its_exits(
    digits_config, tmp_path, monkeypatch, capsys
):
    cfg = digits_config(method="byot", teacher=None, epochs=2)
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
    assert "exits.0.fc.weight" in state
    capsys.readouterr()
    resumed = kd.run(cfg, progress=False)
    assert "[resume]" in capsys.readouterr().out
    a = torch.load(Path(reference.path) / "model.pt", weights_only=True)
    b = torch.load(Path(resumed.path) / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    for h, r in zip(resumed.history, reference.history, strict=True):
        h, r = dict(h), dict(r)
        h.pop("seconds"), r.pop("seconds")
        assert h == r


# Born-again networks


def test_born_again_chains_generations_through_teacher_runs(digits_config, capsys):
    cfg = digits_config(method="kd", epochs=1)
    results = born_again(cfg, generations=2, progress=False)
    assert len(results) == 3
    assert results[0].cfg.method == "ce"
    assert results[0].cfg == cfg.replace(method="ce")  # the ce baseline's run
    for prev, res in zip(results, results[1:], strict=False):
        c = res.cfg
        assert c.method == "kd" and c.student == c.teacher == cfg.student
        assert c.teacher_runs == (kruns.run_id(prev),)
        assert c.method_args == {"T": 1.0, "ce_weight": 0.0, "kd_weight": 1.0}
        assert res.teacher["key"] == prev.key
    out = capsys.readouterr().out
    assert "[born-again] generation 2" in out
    acc = generation_ensemble_accuracy(results)
    assert 0.0 <= acc <= 1.0
    one = generation_ensemble_accuracy(results, [1])
    assert one == pytest.approx(results[1].test_acc)
    with pytest.raises(ValueError, match="generations"):
        generation_ensemble_accuracy(results, [3])


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(generations=0), "generations"),
        (dict(generations=1.5), "generations"),
        (dict(T=0.0), "temperature"),
        (dict(ce_weight=-1.0), "ce_weight"),
    ],
)
def test_born_again_rejects_bad_arguments(digits_config, bad, match):
    with pytest.raises(ValueError, match=match):
        born_again(digits_config(method="kd"), **bad)


def test_born_again_refuses_given_teacher_runs(digits_config):
    with pytest.raises(ValueError, match="teacher_runs"):
        born_again(digits_config(method="kd", teacher_runs=("x",)))
