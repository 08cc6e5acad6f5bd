"""Progressive distillation (2.3.4): snapshot distillation, RCO and route_kd.

Snapshot's cyclic learning rate (``lr_factor``) against the cosine of each
cycle written out, and a run's recorded rates; route_kd's one teacher run
with its kept epochs as the anchors, down to the anchors' logits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_stops import interrupt as _interrupt

import kdutils as kd
import kdutils.data as kdata
import kdutils.train as ktrain
from kdutils import loop as kloop
from kdutils import models as kmodels
from kdutils import runs as kruns
from kdutils.distillers.progressive import cycle_starts
from kdutils.losses import kd_loss, snapshot_kd_loss
from kdutils.pipelines import anchor_epochs, route_kd

B, K = 6, 5


def _logits(seed: int = 0, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(B, K, generator=g) * scale,
        torch.randn(B, K, generator=g) * scale,
        torch.randint(0, K, (B,), generator=g),
    )


def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


# snapshot_kd_loss


@pytest.mark.parametrize("T", [1.0, 3.0, 0.5])
def test_snapshot_kd_loss_against_loops(T):
    s, t, _ = _logits()
    ref = 0.0
    for b in range(B):
        log_q = _log_softmax(t[b].double().numpy() / T)
        log_p = _log_softmax(s[b].double().numpy())
        ref += sum(np.exp(log_q[k]) * (log_q[k] - log_p[k]) for k in range(K))
    assert snapshot_kd_loss(s, t, T).item() == pytest.approx(ref / B, rel=1e-5)


def test_snapshot_kd_loss_properties():
    s, t, _ = _logits()
    assert snapshot_kd_loss(s, s, 1.0).abs().item() < 1e-6
    assert snapshot_kd_loss(s, s, 3.0).item() > 0  # only the teacher is softened
    # Same gradient as the cross-entropy with the softened teacher.
    s1 = s.clone().requires_grad_(True)
    snapshot_kd_loss(s1, t, 3.0).backward()
    s2 = s.clone().requires_grad_(True)
    (-(F.softmax(t / 3.0, 1) * F.log_softmax(s2, 1)).sum(1).mean()).backward()
    torch.testing.assert_close(s1.grad, s2.grad)
    # It is not Hinton's loss (which softens both and multiplies by T^2).
    assert not torch.isclose(snapshot_kd_loss(s, t, 3.0), kd_loss(s, t, 3.0))


def test_snapshot_kd_loss_errors():
    s, t, _ = _logits()
    with pytest.raises(ValueError, match="T must be > 0"):
        snapshot_kd_loss(s, t, 0.0)
    with pytest.raises(ValueError, match=r"\(6, 5\).*\(6, 4\)"):
        snapshot_kd_loss(s, t[:, :4])
    with pytest.raises(ValueError, match="logit"):
        snapshot_kd_loss(s[0], t[0])


def test_cycle_starts():
    assert cycle_starts(8, 4) == [0, 2, 4, 6]
    assert cycle_starts(240, 4) == [0, 60, 120, 180]
    assert cycle_starts(3, 3) == [0, 1, 2]
    assert cycle_starts(7, 2) == [0, 4]  # round half to even: 3.5 -> 4
    with pytest.raises(ValueError, match="4 cycles do not fit in 3 epochs"):
        cycle_starts(3, 4)
    with pytest.raises(ValueError, match="cycles"):
        cycle_starts(3, 0)


# The snapshot Distiller


def _student(seed: int = 0):
    torch.manual_seed(seed)
    return kd.create_model("resnet8", num_classes=10, in_channels=3)


def _batch(seed: int = 0, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(
        0, 10, (n,), generator=g
    )


def test_snapshot_defaults_and_structure():
    d = kd.build("snapshot", _student())
    assert d.hparams() == dict(
        cycles=4, T=3.0, ce_weight=None, kd_weight=1.0, cyclic_lr=True
    )
    assert d.label_weight == pytest.approx(1 + 1 / 3)
    assert d.teacher is None and not d.needs_teacher and not d.cache_teacher
    assert not any(p.requires_grad for p in d.snapshot.parameters())
    trainable = {id(p) for p in d.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in d.student.parameters()}
    d.train()
    assert not any(m.training for m in d.snapshot.modules())
    assert int(d.snapshot_epoch) == -1


@pytest.mark.parametrize(
    "bad", [dict(cycles=1), dict(cycles=2.0), dict(T=0.0), dict(kd_weight=-1.0)]
)
def test_snapshot_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad)).split("_")[0]):
        kd.build("snapshot", _student(), **bad)


def test_snapshot_first_cycle_is_plain_cross_entropy():
    d = kd.build("snapshot", _student()).train()
    d.on_epoch(1, 8)  # cycle starts 0, 2, 4, 6: still the first cycle
    assert int(d.snapshot_epoch) == -1
    x, y = _batch()
    logits, terms = d(x, y)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, y))
    assert terms["kd"].item() == 0.0 and not terms["kd"].requires_grad


def test_snapshot_is_taken_at_each_cycle_start_and_teaches_that_cycle():
    d = kd.build("snapshot", _student(), cycles=2, T=2.0, kd_weight=0.5).train()
    x, y = _batch()
    d.on_epoch(0, 4)
    opt = torch.optim.SGD(d.student.parameters(), lr=0.1)
    sum(d(x, y)[1].values()).backward()
    opt.step()
    d.on_epoch(2, 4)  # second cycle: the student as it is now is the teacher
    assert int(d.snapshot_epoch) == 2
    frozen = {k: v.clone() for k, v in d.student.state_dict().items()}
    for k, v in d.snapshot.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    opt.zero_grad()
    logits, terms = d(x, y)
    sum(terms.values()).backward()
    opt.step()
    d.on_epoch(3, 4)  # same cycle: the snapshot is kept
    for k, v in d.snapshot.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    # Terms against an independent computation with a copy of the snapshot.
    teacher = kd.create_model("resnet8", num_classes=10, in_channels=3)
    teacher.load_state_dict(frozen)
    teacher.eval()
    logits, terms = d(x, y)
    with torch.no_grad():
        t = teacher(x).double()
    s = logits.detach().double()
    q = F.softmax(t / 2.0, 1)
    kl = (q * (q.log() - F.log_softmax(s, 1))).sum(1).mean()
    assert terms["ce"].item() == pytest.approx(
        1.5 * F.cross_entropy(s, y).item(), rel=1e-6
    )
    assert terms["kd"].item() == pytest.approx(0.5 * kl.item(), rel=1e-5)


def test_snapshot_kd_term_trains_only_the_student():
    d = kd.build("snapshot", _student(), cycles=2).train()
    d.on_epoch(1, 2)
    x, y = _batch()
    _, terms = d(x, y)
    terms["kd"].backward()
    assert all(p.grad is None for p in d.snapshot.parameters())
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters()
    )


def test_snapshot_needs_at_least_one_epoch_per_cycle():
    d = kd.build("snapshot", _student(), cycles=4)
    with pytest.raises(ValueError, match="4 cycles do not fit in 3 epochs"):
        d.on_epoch(0, 3)


# Snapshot's cyclic learning rate


def _cycle_cosines(epochs: int, cycles: int) -> list[float]:
    """Per epoch, (1 + cos(pi t / n)) / 2 for epoch t of its cycle of n epochs."""
    bounds = [*cycle_starts(epochs, cycles), epochs]
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        out += [(1 + math.cos(math.pi * t / (b - a))) / 2 for t in range(b - a)]
    assert len(out) == epochs
    return out


@pytest.mark.parametrize(
    "epochs,cycles,expected",
    [
        (8, 4, [1, 0.5] * 4),
        (6, 2, [1, 0.75, 0.25] * 2),
        # starts 0 and 4: a cycle of 4 epochs, then one of 3
        (
            7,
            2,
            [1, (2 + math.sqrt(2)) / 4, 0.5, (2 - math.sqrt(2)) / 4, 1, 0.75, 0.25],
        ),
        (5, 5, [1] * 5),  # one epoch per cycle: never lowered
        (10, 3, None),
        (240, 4, None),
    ],
)
def test_snapshot_lr_factor_is_each_cycles_cosine(epochs, cycles, expected):
    d = kd.build("snapshot", _student(), cycles=cycles)
    got = [d.lr_factor(e, epochs) for e in range(epochs)]
    ref = _cycle_cosines(epochs, cycles)
    if expected is not None:
        assert ref == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(ref, abs=1e-12)
    # Restarted at 1 at every snapshot, never 0 inside a cycle.
    for start in cycle_starts(epochs, cycles):
        assert got[start] == 1.0
    assert min(got) > 0
    flat = kd.build("snapshot", _student(), cycles=cycles, cyclic_lr=False)
    assert [flat.lr_factor(e, epochs) for e in range(epochs)] == [1.0] * epochs


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_snapshot_rejects_a_cyclic_lr_that_is_not_a_bool(bad):
    with pytest.raises(ValueError, match="cyclic_lr"):
        kd.build("snapshot", _student(), cyclic_lr=bad)
    with pytest.raises(ValueError, match="cyclic_lr"):
        kd.make_config("smoke", method="snapshot", cyclic_lr=bad)


def test_snapshot_runs_at_the_schedule_times_the_cycles_cosine(digits_config):
    epochs, lr = 4, 0.05
    cosine = [(1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    cyc = _cycle_cosines(epochs, 2)
    assert cyc == pytest.approx([1, 0.5, 1, 0.5])
    cases = {
        ("cosine", True): [lr * c * f for c, f in zip(cosine, cyc, strict=True)],
        ("cosine", False): [lr * c for c in cosine],
        # A constant schedule: the paper's cyclic cosine alone.
        ("step", True): [lr * f for f in cyc],
    }
    weights = {}
    for (schedule, cyclic), expected in cases.items():
        cfg = digits_config(
            method="snapshot",
            teacher=None,
            epochs=epochs,
            cycles=2,
            schedule=schedule,
            milestones=(),
            lr=lr,
            cyclic_lr=cyclic,
        )
        assert cfg.method_args["cyclic_lr"] is cyclic
        res = kd.run(cfg, progress=False)
        got = [h["lr"] for h in res.history]
        assert got == pytest.approx(expected, rel=1e-9), (schedule, cyclic)
        weights[schedule, cyclic] = torch.load(
            Path(res.path) / "model.pt", weights_only=True
        )
    # The rate is the one used: the cyclic run trains to other weights.
    a, b = weights["cosine", True], weights["cosine", False]
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


# End to end: kd.run, resume across and inside a cycle


def _same_models(a: Path, b: Path) -> None:
    sa = torch.load(a / "model.pt", weights_only=True)
    sb = torch.load(b / "model.pt", weights_only=True)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _same_history(h1, h2) -> None:
    for a, b in zip(h1, h2, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }


@pytest.mark.parametrize("stop_epoch", [2, 3])  # at a cycle start; inside a cycle
def test_snapshot_run_resumes_exactly(
    digits_config, tmp_path, monkeypatch, capsys, stop_epoch
):
    cfg = digits_config(method="snapshot", teacher=None, epochs=4, cycles=2)
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "uninterrupted"))
    reference = kd.run(cfg, progress=False)
    h = reference.history
    assert [r["train_kd"] == 0 for r in h] == [True, True, False, False]
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "interrupted"))
    with monkeypatch.context() as m:
        _interrupt(m, epoch=stop_epoch, after=2)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    state = kloop.load_checkpoint(
        kruns.run_dir(cfg) / "checkpoint.pt", kruns.run_key(cfg)
    )["distiller"]
    assert "snapshot.fc.weight" in state
    assert int(state["snapshot_epoch"]) == (2 if stop_epoch == 3 else -1)
    capsys.readouterr()
    resumed = kd.run(cfg, progress=False)
    assert "[resume]" in capsys.readouterr().out
    _same_models(Path(reference.path), Path(resumed.path))
    _same_history(resumed.history, reference.history)


# RCO


def _teachers(n: int = 3):
    out = []
    for i in range(n):
        torch.manual_seed(10 + i)
        out.append(kd.create_model("resnet14", num_classes=10, in_channels=3).eval())
    return torch.nn.ModuleList(out)


def test_rco_follows_the_route_of_anchors():
    teachers = _teachers(3)
    d = kd.build("rco", _student(), teachers, T=2.0, ce_weight=0.3, kd_weight=0.7)
    assert d.hparams() == dict(T=2.0, ce_weight=0.3, kd_weight=0.7)
    assert not d.cache_teacher
    # 7 epochs in 3 stages: starts 0, 2, 5.
    assert [(d.on_epoch(e, 7), d.anchor)[1] for e in range(7)] == [0, 0, 1, 1, 1, 2, 2]
    d.train()
    x, y = _batch()
    for e, k in [(0, 0), (3, 1), (6, 2)]:
        d.on_epoch(e, 7)
        logits, terms = d(x, y)
        with torch.no_grad():
            t = teachers[k](x).double()
        s = logits.detach().double()
        ls, lt = F.log_softmax(s / 2.0, 1), F.log_softmax(t / 2.0, 1)
        kl = (lt.exp() * (lt - ls)).sum(1).mean() * 4.0
        assert terms["kd"].item() == pytest.approx(0.7 * kl.item(), rel=1e-5)
        assert terms["ce"].item() == pytest.approx(
            0.3 * F.cross_entropy(s, y).item(), rel=1e-6
        )
        torch.testing.assert_close(d.teacher_outputs(x)["logits"], t.float())


def test_rco_with_one_teacher_is_kd_and_rejects_bad_input():
    student, (teacher,) = _student(), _teachers(1)
    d = kd.build("rco", student, teacher)
    assert isinstance(d.teacher, torch.nn.ModuleList) and len(d.teacher) == 1
    ref = kd.build("kd", student, teacher)
    x, y = _batch()
    d.eval(), ref.eval()
    t1, t2 = d(x, y)[1], ref(x, y)[1]
    for k in ("ce", "kd"):
        torch.testing.assert_close(t1[k], t2[k])
    with pytest.raises(ValueError, match="at least one anchor"):
        kd.build("rco", _student(), torch.nn.ModuleList())
    with pytest.raises(ValueError, match="T"):
        kd.build("rco", _student(), teacher, T=0.0)
    with pytest.raises(ValueError, match="kd_weight"):
        kd.build("rco", _student(), teacher, kd_weight=-1.0)
    d.teacher = _teachers(3)
    with pytest.raises(ValueError, match="3 cycles do not fit in 2 epochs"):
        d.on_epoch(0, 2)


def test_anchor_epochs():
    assert anchor_epochs(8) == (2, 4, 6, 8)
    assert anchor_epochs(240, 3) == (80, 160, 240)
    with pytest.raises(ValueError, match="anchors"):
        anchor_epochs(3, 4)


def _fake_run(calls: list):
    """A stand-in for ``kd.run`` that trains nothing: it records the config and
    writes a finished run to the cache (test_acc = epoch / 100 after every
    epoch), so that ``load_run("<id>@e<N>")`` finds it."""

    def fake_run(cfg, **kw):
        calls.append(cfg)
        folder = kruns.cache_dir() / "runs" / f"{cfg.name}-fake{len(calls)}"
        folder.mkdir(parents=True)
        r = kd.results.Result(
            name=cfg.name,
            key=f"k{len(calls)}",
            config=cfg.to_dict(),
            history=[
                {"epoch": e, "test_acc": e / 100} for e in range(1, cfg.epochs + 1)
            ],
            final={"test_acc": cfg.epochs / 100},
            provenance={},
        )
        r.save(folder / "result.json")
        r.path = str(folder)
        return r

    return fake_run


def test_route_kd_trains_one_teacher_and_names_its_epochs(digits_config):
    calls = []
    fake_run = _fake_run(calls)
    cfg = digits_config(method="rco", teacher="resnet14", epochs=4)
    out = route_kd(cfg, checkpoints=(1, 3, 4), run=fake_run)
    assert len(calls) == 2 and len(out) == 4
    t_cfg, s_cfg = calls
    # One teacher run: the ordinary teacher's config, keeping epochs 1 and 3
    # (the trainer evaluates every kept epoch by itself).
    assert t_cfg == kd.config.teacher_config(cfg).replace(save_epochs=(1, 3))
    *anchors, student = out
    folder = Path(anchors[-1].path)
    assert [a.epoch for a in anchors] == [1, 3, None]
    assert all(Path(a.path) == folder for a in anchors)
    assert [a.test_acc for a in anchors] == [0.01, 0.03, 0.04]
    tid = folder.name
    assert s_cfg.teacher_runs == (f"{tid}@e1", f"{tid}@e3", tid)
    assert s_cfg.replace(teacher_runs=()) == cfg
    assert Path(student.path).name.startswith(cfg.name)


@pytest.mark.parametrize(
    "epochs,teacher_epochs,checkpoints,save,every",
    [
        # eval_every stays teacher_config's (the last epoch): the trainer
        # evaluates every kept epoch by itself
        (8, None, None, (2, 4, 6), 8),  # the default: 4 evenly spaced anchors
        (4, 6, (2, 4, 6), (2, 4), 6),
        (4, 6, (2, 3, 6), (2, 3), 6),
        (2, None, (2,), (), 2),  # one anchor: the teacher alone
    ],
)
def test_route_kd_anchor_epochs_and_evaluation(
    digits_config, epochs, teacher_epochs, checkpoints, save, every
):
    calls = []
    cfg = digits_config(
        method="rco", teacher="resnet14", epochs=epochs, teacher_epochs=teacher_epochs
    )
    out = route_kd(cfg, checkpoints=checkpoints, run=_fake_run(calls))
    t_cfg, s_cfg = calls
    assert t_cfg.save_epochs == save and t_cfg.eval_every == every
    assert t_cfg.epochs == (teacher_epochs or epochs)
    tid = Path(out[0].path).name
    assert s_cfg.teacher_runs == (*(f"{tid}@e{e}" for e in save), tid)
    assert [a.epoch for a in out[:-1]] == [*save, None]
    assert s_cfg.epochs == epochs


def test_route_kd_errors(digits_config):
    calls = []
    fake_run = _fake_run(calls)
    cfg = digits_config(method="rco", teacher="resnet14", epochs=4)
    with pytest.raises(ValueError, match="method='rco'"):
        route_kd(cfg.replace(method="kd"), run=fake_run)
    for bad, msg in [
        ((1, 1, 4), "increase"),
        ((1, 3), "last checkpoint"),
        ((0, 4), "positive"),
        ((1.0, 4), "positive"),
        ((1, 2, 3, 4, 4), "increase"),
    ]:
        with pytest.raises(ValueError, match=msg):
            route_kd(cfg, checkpoints=bad, run=fake_run)
    with pytest.raises(ValueError, match="do not fit"):
        route_kd(
            cfg.replace(epochs=2, teacher_epochs=4),
            checkpoints=(1, 2, 3, 4),
            run=fake_run,
        )
    with pytest.raises(ValueError, match="teacher_runs"):
        route_kd(cfg.replace(teacher_runs=("x",)), run=fake_run)
    with pytest.raises(ValueError, match="needs a teacher"):
        route_kd(cfg.replace(teacher=None), run=fake_run)
    assert calls == []  # nothing is trained before the checks


def _eval_logits(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_route_kd_end_to_end_and_the_student_resumes_exactly(
    digits_config, monkeypatch, capsys
):
    cfg = digits_config(method="rco", teacher="resnet8", epochs=2)
    anchor1, anchor2, student = route_kd(cfg, checkpoints=(1, 2), progress=False)
    out = capsys.readouterr().out
    # One teacher run, kept (and so evaluated) after epoch 1.
    folder = Path(anchor2.path)
    assert Path(anchor1.path) == folder and anchor1.epoch == 1 and anchor2.epoch is None
    assert anchor2.cfg == kd.config.teacher_config(cfg).replace(save_epochs=(1,))
    assert [h["test_acc"] is not None for h in anchor2.history] == [True, True]
    assert out.count("[train] ce-resnet8-digits") == 1
    assert (folder / "model-e1.pt").exists() and not (folder / "model-e2.pt").exists()
    h = anchor2.history
    assert anchor1.test_acc == h[0]["test_acc"] is not None
    assert anchor2.test_acc == h[1]["test_acc"] == anchor2.final["test_acc"]
    assert f"anchor after 1/2 epochs: test acc {100 * h[0]['test_acc']:.2f}%" in out
    # The kept weights are the teacher after epoch 1: their accuracy is the
    # one the run measured then; they differ from the final weights.
    test = kloop.load_split(cfg, train=False)
    e1 = kmodels.build_model("resnet8", "digits")
    e1.load_state_dict(torch.load(folder / "model-e1.pt", weights_only=True))
    final = kmodels.build_model("resnet8", "digits")
    final.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    assert kd.evaluate(e1, test)["acc"] == pytest.approx(anchor1.test_acc)
    assert not torch.equal(e1.fc.weight, final.fc.weight)
    # The student learnt from "<teacher>@e1", then the teacher.
    scfg = kd.Config.from_dict(student.config)
    tid = folder.name
    assert scfg.teacher_runs == (f"{tid}@e1", tid)
    assert scfg.replace(teacher_runs=()) == cfg
    assert [t["test_acc"] for t in student.teacher] == [
        anchor1.test_acc,
        anchor2.test_acc,
    ]
    # RCO's anchors are exactly the kept weights: same logits.
    d = ktrain.load_distiller(student)
    assert isinstance(d.teacher, torch.nn.ModuleList) and len(d.teacher) == 2
    x = kdata.normalize(test.images[:64], test.info)
    torch.testing.assert_close(_eval_logits(d.teacher[0], x), _eval_logits(e1, x))
    torch.testing.assert_close(_eval_logits(d.teacher[1], x), _eval_logits(final, x))
    torch.testing.assert_close(
        _eval_logits(anchor1.load_model(), x), _eval_logits(e1, x)
    )
    assert not torch.allclose(
        _eval_logits(d.teacher[0], x), _eval_logits(d.teacher[1], x)
    )
    reference = torch.load(Path(student.path) / "model.pt", weights_only=True)
    history = student.history
    # Interrupt a fresh training of the same student in its second stage.
    Path(student.path, "result.json").unlink()
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=2)
        with pytest.raises(KeyboardInterrupt):
            kd.run(scfg, progress=False)
    capsys.readouterr()
    resumed = kd.run(scfg, progress=False)
    assert "[resume]" in capsys.readouterr().out
    b = torch.load(Path(resumed.path) / "model.pt", weights_only=True)
    for k in reference:
        assert torch.equal(reference[k], b[k]), k
    _same_history(resumed.history, history)
