"""Multi-teacher distillation (survey 2.3.3): averaged soft targets (avgkd) and
AMTML-KD (amtmlkd).

The losses against float64 references written with explicit loops, their
properties and errors; the distillers with one teacher and with a list of
teachers, live or precomputed; what each term trains in each phase; AMTML-KD's
teacher-weight metrics against the weights' formula in float64; training
through ``kd.run`` with two finished teacher runs (the trainer's precomputed
outputs of several teachers train exactly as the live teachers), and an
exact resume."""

from __future__ import annotations

import shutil
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
from kdutils.losses import (
    hint_loss,
    kl_to_targets,
    rkd_angle_loss,
    rkd_distance_loss,
    teacher_attention_weights,
    teacher_ensemble_targets,
)

B, K, C, S, M = 8, 10, 3, 16, 3


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, S, S, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    return x, y


def _models(m: int = M, seed: int = 0):
    torch.manual_seed(seed)
    student = kd.create_model("resnet8", num_classes=K, in_channels=C)
    teachers = nn.ModuleList(
        kd.create_model("resnet14", num_classes=K, in_channels=C) for _ in range(m)
    )
    return student, teachers


def _softmax_row(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


# teacher_ensemble_targets and teacher_attention_weights


@pytest.mark.parametrize("T", [1.0, 5.0])
def test_teacher_ensemble_targets_by_loops(T):
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(B, M, K, generator=g)
    w = torch.softmax(torch.randn(B, M, generator=g), 1)
    zn, wn = z.double().numpy(), w.double().numpy()
    mean = np.zeros((B, K))
    weighted = np.zeros((B, K))
    for b in range(B):
        for m in range(M):
            p = _softmax_row(zn[b, m] / T)
            mean[b] += p / M
            weighted[b] += wn[b, m] * p
    np.testing.assert_allclose(teacher_ensemble_targets(z, None, T), mean, atol=1e-6)
    np.testing.assert_allclose(teacher_ensemble_targets(z, w, T), weighted, atol=1e-6)


def test_teacher_ensemble_targets_properties():
    g = torch.Generator().manual_seed(1)
    one = torch.randn(B, 1, K, generator=g)
    same = one.expand(B, M, K)
    p = F.softmax(one[:, 0] / 4.0, 1)
    torch.testing.assert_close(teacher_ensemble_targets(same), p)
    w = torch.softmax(torch.randn(B, M, generator=g), 1)
    torch.testing.assert_close(teacher_ensemble_targets(same, w), p)
    uniform = torch.full((B, M), 1 / M)
    z = torch.randn(B, M, K, generator=g)
    torch.testing.assert_close(
        teacher_ensemble_targets(z, uniform), teacher_ensemble_targets(z)
    )
    with pytest.raises(ValueError, match=r"\(8, 2\).*\(8, 3\)"):
        teacher_ensemble_targets(z, uniform[:, :2])
    with pytest.raises(ValueError, match=r"\(B, M, K\)"):
        teacher_ensemble_targets(z[:, 0])
    with pytest.raises(ValueError, match="temperature"):
        teacher_ensemble_targets(z, T=0.0)


def test_teacher_attention_weights_by_loops():
    g = torch.Generator().manual_seed(2)
    emb, theta, w = (
        torch.randn(B, 6, generator=g),
        torch.randn(M, 6, generator=g),
        torch.randn(6, generator=g),
    )
    e, t, v = emb.double().numpy(), theta.double().numpy(), w.double().numpy()
    ref = np.stack(
        [
            _softmax_row(
                np.array(
                    [sum(v[d] * t[m, d] * e[b, d] for d in range(6)) for m in range(M)]
                )
            )
            for b in range(B)
        ]
    )
    ours = teacher_attention_weights(emb, theta, w)
    np.testing.assert_allclose(ours.double().numpy(), ref, atol=1e-6)
    torch.testing.assert_close(ours.sum(1), torch.ones(B))
    # Equal latent representations: equal weights.
    flat = teacher_attention_weights(emb, theta[:1].expand(M, 6), w)
    torch.testing.assert_close(flat, torch.full((B, M), 1 / M))
    with pytest.raises(ValueError, match=r"\(8, 6\).*\(3, 5\)"):
        teacher_attention_weights(emb, theta[:, :5], w)


# avgkd


def test_avgkd_with_one_teacher_or_identical_teachers_is_kd():
    student, teachers = _models(1)
    x, y = _batch()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    _, ref = kd.build("kd", student, teachers[0]).train()(x, y)
    for teacher in (teachers[0], nn.ModuleList([teachers[0]] * 3)):
        student.load_state_dict(state)
        d = kd.build("avgkd", student, teacher).train()
        assert d.hparams() == {"T": 4.0, "ce_weight": 0.1, "kd_weight": 0.9}
        _, terms = d(x, y)
        for k in ("ce", "kd"):
            torch.testing.assert_close(terms[k], ref[k])


def test_avgkd_terms_against_the_mean_of_the_teachers():
    student, teachers = _models()
    d = kd.build("avgkd", student, teachers, T=2.0, ce_weight=0.3, kd_weight=0.7)
    d.train()
    x, y = _batch()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    logits, terms = d(x, y)
    student.load_state_dict(state)
    with torch.no_grad():
        probs = [F.softmax(t(x) / 2.0, 1) for t in teachers]
    q = sum(probs) / M
    torch.testing.assert_close(logits, student(x))
    torch.testing.assert_close(terms["kd"], 0.7 * kl_to_targets(logits, q, 2.0))
    torch.testing.assert_close(terms["ce"], 0.3 * F.cross_entropy(logits, y))


def test_precomputed_outputs_of_several_teachers_and_of_one():
    student, teachers = _models()
    x, y = _batch()
    d = kd.build("avgkd", student, teachers).train()
    t_out = d.teacher_outputs(x)
    assert t_out["logits"].shape == (B, M, K)
    state = {k: v.clone() for k, v in student.state_dict().items()}
    _, live = d(x, y)
    student.load_state_dict(state)
    _, cached = d(x, y, teacher_out=t_out)
    torch.testing.assert_close(live["kd"], cached["kd"])
    with pytest.raises(ValueError, match="M = 3"):
        d(x, y, teacher_out={"logits": t_out["logits"][:, :2]})
    # One teacher: the trainer's precomputed (B, K) logits are accepted.
    one = kd.build("avgkd", student, teachers[0]).train()
    student.load_state_dict(state)
    _, live = one(x, y)
    student.load_state_dict(state)
    with torch.no_grad():
        _, cached = one(x, y, teacher_out={"logits": teachers[0](x)})
    torch.testing.assert_close(live["kd"], cached["kd"])


@pytest.mark.parametrize("name", ["avgkd", "amtmlkd"])
@pytest.mark.parametrize("bad", [dict(T=0.0), dict(kd_weight=-1.0)])
def test_multi_teacher_methods_reject_bad_hyperparameters(name, bad):
    student, teachers = _models()
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build(name, student, teachers, **bad)


# amtmlkd


def test_amtmlkd_terms_against_an_independent_forward():
    student, teachers = _models()
    d = kd.build("amtmlkd", student, teachers).train()
    assert d.teacher_layers == ("0.layer2", "1.layer2", "2.layer2")
    assert d.theta.shape == (M, 64) and d.w.shape == (64,)
    x, y = _batch()
    state = {k: v.clone() for k, v in d.state_dict().items()}
    logits, terms = d(x, y)
    d.load_state_dict(state)
    with kd.capture(student, ["layer2", "pool"]) as f:
        z = student(x)
    t_logits, t_maps = [], []
    with torch.no_grad():
        for t in teachers:
            with kd.capture(t, ["layer2"]) as ft:
                t_logits.append(t(x))
            t_maps.append(ft["layer2"])
    mu = teacher_attention_weights(f["pool"], d.theta, d.w)
    q = sum(mu[:, m, None] * F.softmax(t_logits[m] / 5.0, 1) for m in range(M))
    log_p = F.log_softmax(z / 5.0, 1)
    fs = F.normalize(f["layer2"], dim=1)
    torch.testing.assert_close(logits, z)
    torch.testing.assert_close(terms["ce"], 0.3 * F.cross_entropy(z, y))
    torch.testing.assert_close(terms["kd"], 0.7 * kl_to_targets(z, q, 5.0))
    torch.testing.assert_close(
        terms["rkd"], rkd_distance_loss(log_p, q) + rkd_angle_loss(log_p, q)
    )
    torch.testing.assert_close(
        terms["hint"],
        sum(
            hint_loss(c(fs), F.normalize(tm, dim=1))
            for c, tm in zip(d.connectors, t_maps, strict=True)
        ),
    )
    torch.testing.assert_close(
        terms["reg"], 0.1 * (d.w.pow(2).sum() + d.theta.pow(2).sum())
    )
    weights = d.teacher_weights(x)
    assert weights.shape == (B, M)
    torch.testing.assert_close(weights.sum(1), torch.ones(B))


def test_amtmlkd_phases_decide_what_learns():
    student, teachers = _models()
    d = kd.build("amtmlkd", student, teachers, adapter_fraction=0.5).train()
    x, y = _batch()
    d.on_epoch(1, 4)  # the adapter phase: epochs 0 and 1
    assert d.adapter_phase
    _, terms = d(x, y)
    sum(terms.values()).backward()
    for p in (d.theta, d.w, *d.connectors.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in teachers.parameters())
    d.zero_grad(set_to_none=True)
    d.on_epoch(2, 4)  # afterwards: the adapter is frozen, no hints
    assert not d.adapter_phase
    _, terms = d(x, y)
    assert terms["hint"].item() == 0 and terms["reg"].item() == 0
    sum(terms.values()).backward()
    assert d.theta.grad is None and d.w.grad is None
    assert all(p.grad is None for p in d.connectors.parameters())
    # ... while the weights still depend on the student's features.
    assert student.layer1[0].conv1.weight.grad.abs().sum() > 0


def test_amtmlkd_with_one_teacher_and_its_precomputed_outputs():
    student, teachers = _models(1)
    d = kd.build("amtmlkd", student, teachers[0]).train()
    assert d.teacher_layers == ("layer2",) and d.theta.shape == (1, 64)
    x, y = _batch()
    t_out = d.teacher_outputs(x)
    trainer_like = {"logits": t_out["logits"][:, 0], "layer2": t_out["layer2"]}
    state = {k: v.clone() for k, v in d.state_dict().items()}
    _, live = d(x, y)
    d.load_state_dict(state)
    _, cached = d(x, y, teacher_out=trainer_like)
    for k in live:
        torch.testing.assert_close(live[k], cached[k])
    # One teacher: its weight is 1, the targets its soft targets.
    torch.testing.assert_close(d.teacher_weights(x), torch.ones(B, 1))


def test_amtmlkd_rejects_bad_fraction_and_models():
    student, teachers = _models()
    with pytest.raises(ValueError, match="adapter_fraction"):
        kd.build("amtmlkd", student, teachers, adapter_fraction=1.5)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3, 10))
    with pytest.raises(ValueError, match="teacher.*layer1"):
        kd.build("amtmlkd", student, nn.ModuleList([teachers[0], mlp]))


def _np_teacher_weights(d, data: kdata.TensorData) -> np.ndarray:
    """``mu (N, M)``: softmax over m of sum_d w_d theta_md e_d, in float64,
    with ``e`` the student's pooled embedding (eval mode)."""
    student = d.student.eval()
    with torch.no_grad(), kd.capture(student, ["pool"]) as f:
        student(kdata.normalize(data.images, data.info))
    e = f["pool"].double().numpy()
    theta, w = d.theta.detach().double().numpy(), d.w.detach().double().numpy()
    scores = np.einsum("d,md,nd->nm", w, theta, e)
    return np.stack([_softmax_row(row) for row in scores])


def test_amtmlkd_epoch_metrics_are_the_mean_weights_on_2000_test_images():
    student, teachers = _models()
    d = kd.build("amtmlkd", student, teachers)
    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 256, (2100, C, S, S), generator=g).to(torch.uint8)
    test = kdata.TensorData(
        images, torch.randint(0, K, (2100,), generator=g), "cifar10"
    )
    d.train()
    with torch.no_grad():
        got = d.epoch_metrics(test)
    assert d.student.training  # teacher_weights puts the student back
    assert list(got) == ["weight0", "weight1", "weight2", "weight_entropy"]
    mu = _np_teacher_weights(d, test.subset(2000))
    assert mu.shape == (2000, M)
    for m in range(M):
        assert got[f"weight{m}"] == pytest.approx(mu[:, m].mean(), rel=1e-5), m
    entropy = -sum(mu[:, m] * np.log(mu[:, m]) for m in range(M)).mean()
    assert got["weight_entropy"] == pytest.approx(entropy, rel=1e-5)
    assert sum(got[f"weight{m}"] for m in range(M)) == pytest.approx(1.0)
    # Neither uniform nor one-hot, and on the subset, not all 2100 images.
    assert 0.1 < got["weight_entropy"] < np.log(M) - 0.1
    whole = _np_teacher_weights(d, test)
    assert abs(whole[:, 0].mean() - got["weight0"]) > 1e-5


# Training through kd.run with finished teacher runs


def _teacher_runs(digits_config) -> tuple[str, str]:
    runs = [
        kd.run(digits_config(method="ce", seed=s, epochs=1), progress=False)
        for s in (0, 1)
    ]
    return tuple(kruns.run_id(r) for r in runs)


def test_amtmlkd_runs_with_two_teacher_runs_and_resumes_exactly(
    digits_config, tmp_path, monkeypatch, capsys
):
    def make():
        runs = _teacher_runs(digits_config)
        return digits_config(
            method="amtmlkd", teacher_runs=runs, epochs=2, adapter_fraction=0.5
        )

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "uninterrupted"))
    cfg = make()
    reference = kd.run(cfg, progress=False)
    assert [t["key"] for t in reference.teacher] == [
        kruns.load_run(r).key for r in cfg.teacher_runs
    ]
    assert type(reference.load_model()) is type(kd.create_model("resnet8"))
    assert reference.history[1]["train_hint"] == 0  # after the adapter phase
    assert reference.history[0]["train_hint"] > 0
    # The teachers' weights on the test set, after each epoch: those of the
    # saved adapter (theta, w) and student, recomputed independently.
    h = reference.history[-1]
    metrics = {k: v for k, v in h.items() if k.startswith("metric_")}
    assert set(metrics) == {"metric_weight0", "metric_weight1", "metric_weight_entropy"}
    d = ktrain.load_distiller(reference)
    mu = _np_teacher_weights(d, kloop.load_split(cfg, False))
    assert metrics["metric_weight0"] == pytest.approx(mu[:, 0].mean(), rel=1e-5)
    assert metrics["metric_weight1"] == pytest.approx(mu[:, 1].mean(), rel=1e-5)
    entropy = -(mu * np.log(mu)).sum(1).mean()
    assert metrics["metric_weight_entropy"] == pytest.approx(entropy, rel=1e-5)
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "interrupted"))
    cfg = make()
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=2)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    state = kloop.load_checkpoint(
        kruns.run_dir(cfg) / "checkpoint.pt", kruns.run_key(cfg)
    )["distiller"]
    assert {"theta", "w", "connectors.1.weight"} <= set(state)
    assert not any(k.startswith("teacher.") for k in state)
    capsys.readouterr()
    resumed = kd.run(cfg, progress=False)
    assert "[resume]" in capsys.readouterr().out
    a = torch.load(Path(reference.path) / "model.pt", weights_only=True)
    b = torch.load(Path(resumed.path) / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_avgkd_with_one_teacher_run_uses_the_precomputed_logits(digits_config):
    (first, _) = _teacher_runs(digits_config)
    cfg = digits_config(method="avgkd", teacher_runs=(first,), epochs=1)
    res = kd.run(cfg, progress=False)
    assert res.teacher["key"] == kruns.load_run(first).key
    assert np.isfinite(res.history[0]["train_kd"])


@pytest.mark.parametrize("name", ["avgkd", "amtmlkd"])
def test_precomputed_outputs_of_several_teacher_runs_train_as_the_live_teachers(
    digits_config, monkeypatch, name
):
    cls = type(kd.build(name, *_models(2)))
    assert cls.precompute_teachers
    runs = _teacher_runs(digits_config)
    cfg = digits_config(method=name, teacher_runs=runs, epochs=2)
    seen = []
    forward = cls.forward

    def spy(self, x, y, teacher_out=None, idx=None):
        seen.append(None if teacher_out is None else teacher_out["logits"].shape)
        return forward(self, x, y, teacher_out=teacher_out, idx=idx)

    monkeypatch.setattr(cls, "forward", spy)
    cached = kd.run(cfg, progress=False)
    steps = 2 * len(kdata.Loader(kloop.load_split(cfg, True), cfg.batch_size))
    assert len(seen) == steps
    # Each step got the two teachers' logits (B, 2, K), sliced from the
    # training set's precomputed outputs.
    assert all(s is not None and s[1:] == (2, 10) for s in seen)
    shutil.rmtree(cached.path)
    seen.clear()
    monkeypatch.setattr(cls, "precompute_teachers", False)
    live = kd.run(cfg, progress=False)
    assert not live.from_cache and len(seen) == steps
    assert all(s is None for s in seen)  # the teachers ran on every batch
    for a, b in zip(cached.history, live.history, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k != "seconds":
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), k
    sa = torch.load(Path(cached.path) / "model.pt", weights_only=True)
    sb = torch.load(Path(live.path) / "model.pt", weights_only=True)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-5, atol=1e-6, msg=k)
