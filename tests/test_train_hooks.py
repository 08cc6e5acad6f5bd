"""Trainer hooks: lr_factor, step/epoch metrics, distiller.pt + load_distiller,
save_epochs (``load_run("id@eN")``) and methods that need no teacher."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_pre_hook
from training_stops import interrupt as _interrupt

import kdutils as kd
from kdutils import data as kdata
from kdutils import loop as kloop
from kdutils import models as kmodels
from kdutils import runs as kruns
from kdutils import train as ktrain
from kdutils.config import Config, teacher_config
from kdutils.distillers import METHODS, Distiller, register
from kdutils.results import Result


def _load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _weights(res: Result) -> dict[str, torch.Tensor]:
    return _load(Path(res.path) / "model.pt")


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _use_cache(monkeypatch, path: Path) -> None:
    monkeypatch.setenv("KD_CACHE_DIR", str(path))


def _no_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


# Test-only methods: the student trained on the labels (as ``ce``), plus a hook.


class _Plain(Distiller):
    needs_teacher = False

    def __init__(self, student, teacher=None):
        super().__init__(student, None)

    def forward(self, x, y, teacher_out=None, idx=None):
        logits = self.student(x)
        return logits, {"ce": F.cross_entropy(logits, y)}


_FACTORS = (1.0, 0.5, 2.0)


class _Scaled(_Plain):
    def lr_factor(self, epoch, epochs):
        return _FACTORS[epoch]


class _Unit(_Plain):
    def lr_factor(self, epoch, epochs):
        return 1.0


class _Metered(_Plain):
    def forward(self, x, y, teacher_out=None, idx=None):
        logits, terms = super().forward(x, y, teacher_out, idx)
        self.step_metrics["zeros"] = (y == 0).double().mean()
        self.step_metrics["batch"] = torch.tensor(float(len(y)))
        return logits, terms

    def epoch_metrics(self, test):
        x = kdata.normalize(test.images, test.info)
        acc = (self.student(x).argmax(1) == test.labels).double().mean()
        return {
            "n_test": len(test),
            "acc": acc,
            "training": float(self.training),
            "grad": float(torch.is_grad_enabled()),
        }


_TEST_METHODS = {
    "hook-scaled": _Scaled,
    "hook-unit": _Unit,
    "hook-metered": _Metered,
}


@pytest.fixture
def hook_methods():
    """Register the test-only methods; unregister them afterwards."""
    for name, cls in _TEST_METHODS.items():
        register(name, section="test")(cls)
    try:
        yield
    finally:
        for name in _TEST_METHODS:
            METHODS.pop(name, None)


# lr_factor


class _LRSpy:
    """Every param group's learning rate at every optimizer step."""

    def __init__(self):
        self.lrs: list[list[float]] = []

    def __enter__(self):
        self.handle = register_optimizer_step_pre_hook(
            lambda opt, args, kwargs: self.lrs.append(
                [g["lr"] for g in opt.param_groups]
            )
        )
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _scheduled(cfg: Config, epoch: int) -> float:
    """The run's own learning rate in epoch ``epoch`` (0-based), closed form."""
    if cfg.schedule == "cosine":
        return cfg.lr * (1 + math.cos(math.pi * epoch / cfg.epochs)) / 2
    return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)


@pytest.mark.parametrize(
    "schedule", [dict(schedule="cosine"), dict(schedule="step", milestones=(1, 2))]
)
def test_lr_factor_scales_the_schedule_without_compounding(
    digits_config, hook_methods, schedule
):
    cfg = digits_config(method="hook-scaled", epochs=3, gamma=0.1, **schedule)
    steps = math.ceil(cfg.train_subset / cfg.batch_size)
    with _LRSpy() as spy:
        res = kd.run(cfg, progress=False)
    expected = [_scheduled(cfg, e) * _FACTORS[e] for e in range(3)]
    assert [h["lr"] for h in res.history] == pytest.approx(expected, rel=1e-12)
    # The scaled rate is the one every step of that epoch used.
    assert len(spy.lrs) == 3 * steps
    for e in range(3):
        for lrs in spy.lrs[e * steps : (e + 1) * steps]:
            assert lrs == pytest.approx([expected[e]], rel=1e-12)


def test_a_factor_of_one_trains_exactly_as_without_the_hook(
    digits_config, hook_methods
):
    unit = kd.run(digits_config(method="hook-unit"), progress=False)
    plain = kd.run(digits_config(method="ce"), progress=False)
    assert _same_state(_weights(unit), _weights(plain))
    assert _no_seconds(unit.history) == _no_seconds(plain.history)
    # ... while the scaled rates train another student (so the check can fail).
    scaled = kd.run(digits_config(method="hook-scaled"), progress=False)
    assert not _same_state(_weights(scaled), _weights(plain))


@pytest.mark.parametrize("killed_in", [1, 2])
def test_a_resumed_run_gets_the_same_scaled_rates_and_weights(
    digits_config, hook_methods, tmp_path, monkeypatch, capsys, killed_in
):
    cfg = digits_config(method="hook-scaled", epochs=3)
    _use_cache(monkeypatch, tmp_path / "uninterrupted")
    reference = kd.run(cfg, progress=False)

    _use_cache(monkeypatch, tmp_path / "interrupted")
    with monkeypatch.context() as m:
        _interrupt(m, epoch=killed_in, after=2)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    state = kloop.load_checkpoint(
        kruns.run_dir(cfg) / "checkpoint.pt", kruns.run_key(cfg)
    )
    assert state["epoch"] == killed_in
    # The checkpoint keeps the scheduler's own rate, never the scaled one.
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(
        _scheduled(cfg, killed_in), rel=1e-12
    )
    capsys.readouterr()
    resumed = kd.run(cfg, progress=False)
    assert "[resume]" in capsys.readouterr().out
    assert _same_state(_weights(resumed), _weights(reference))
    assert _no_seconds(resumed.history) == _no_seconds(reference.history)


# step_metrics and epoch_metrics


def test_metrics_are_recorded_and_never_trained_on(digits_config, hook_methods):
    cfg = digits_config(method="hook-metered", epochs=2)
    res = kd.run(cfg, progress=False)
    plain = kd.run(digits_config(method="ce", epochs=2), progress=False)
    train = kloop.load_split(cfg, train=True)
    n, bs = len(train), cfg.batch_size
    sizes = [bs] * (n // bs) + ([n % bs] if n % bs else [])
    for h in res.history:
        # Step metrics: batch means weighted by batch size, over the epoch.
        assert h["metric_zeros"] == pytest.approx(
            (train.labels == 0).double().mean().item(), rel=1e-12
        )
        assert h["metric_batch"] == pytest.approx(
            sum(s * s for s in sizes) / n, rel=1e-12
        )
        # Epoch metrics: after the epoch's training, in eval mode, no gradients.
        assert h["metric_n_test"] == cfg.test_subset
        assert h["metric_acc"] == pytest.approx(h["test_acc"], abs=1e-12)
        assert h["metric_training"] == 0.0 and h["metric_grad"] == 0.0
    # Metrics are not loss terms: the same student, terms and accuracies as ce.
    assert _same_state(_weights(res), _weights(plain))
    assert [
        {k: v for k, v in h.items() if not k.startswith("metric_")}
        for h in _no_seconds(res.history)
    ] == _no_seconds(plain.history)
    # The history survives the result file.
    assert Result.load(Path(res.path) / "result.json").history == res.history


# distiller.pt and load_distiller


def test_load_distiller_rebuilds_the_trained_peers(digits_config, monkeypatch):
    cfg = digits_config(method="dml", teacher=None)
    ended: dict[str, torch.Tensor] = {}
    original_fit = kloop.fit

    def spy_fit(distiller, *args, **kwargs):
        history = original_fit(distiller, *args, **kwargs)
        ended.update({k: v.clone() for k, v in distiller.state_dict().items()})
        return history

    monkeypatch.setattr(ktrain, "fit", spy_fit)
    res = kd.run(cfg, progress=False)
    own = _load(Path(res.path) / "distiller.pt")
    assert own and all(k.startswith("peers.") for k in own)
    assert set(own) == {k for k in ended if not k.startswith("student.")}

    for source in (res, kruns.run_id(res)):
        d = ktrain.load_distiller(source)
        assert type(d) is METHODS["dml"] and d.teacher is None
        assert not any(m.training for m in d.modules())
        assert _same_state(d.state_dict(), ended)
        assert _same_state(d.student.state_dict(), _weights(res))
    # The peers were trained (not their fresh initialisation).
    torch.manual_seed(0)
    fresh = kd.build("dml", kmodels.build_model("resnet8", "digits"), None)
    assert not torch.equal(fresh.peers[0].fc.weight, d.peers[0].fc.weight)

    # A distiller.pt that does not match the method's modules is refused.
    dropped = next(iter(own))
    torch.save(
        {k: v for k, v in own.items() if k != dropped},
        Path(res.path) / "distiller.pt",
    )
    res.files.pop("distiller.pt")  # not a corrupt file: a well-formed wrong one
    with pytest.raises(kloop.CheckpointError, match=dropped.replace(".", r"\.")):
        ktrain.load_distiller(res)


def test_a_method_without_modules_of_its_own_writes_no_distiller_pt(
    digits_config, capsys
):
    ce = kd.run(digits_config(method="ce"), progress=False)
    assert not (Path(ce.path) / "distiller.pt").exists()
    res = kd.run(digits_config(method="kd"), progress=False)
    assert not (Path(res.path) / "distiller.pt").exists()
    capsys.readouterr()
    d = ktrain.load_distiller(res)
    out = capsys.readouterr().out
    assert "[train]" not in out  # the teacher comes from its run, not retrained
    teacher = kruns.load_run(Path(kruns.run_dir(teacher_config(res.cfg))).name)
    assert _same_state(d.teacher.state_dict(), _weights(teacher))
    assert _same_state(d.student.state_dict(), _weights(res))


def test_load_distiller_reuses_the_teacher_of_a_channels_first_run(
    digits_config, capsys
):
    res = kd.run(digits_config(method="kd"), progress=False, channels_last=False)
    capsys.readouterr()
    ktrain.load_distiller(res)
    assert "[train]" not in capsys.readouterr().out


# save_epochs and load_run("id@eN")


def test_save_epochs_keeps_the_students_of_those_epochs(
    digits_config, monkeypatch, tmp_path
):
    cfg = digits_config(method="ce", epochs=3, save_epochs=(1, 2))
    res = kd.run(cfg, progress=False)
    folder = Path(res.path)
    assert sorted(p.name for p in folder.glob("model*.pt")) == [
        "model-e1.pt",
        "model-e2.pt",
        "model.pt",
    ]
    test = kloop.load_split(cfg, train=False)
    final = _weights(res)
    kept = {}
    for e in (1, 2):
        rid = kruns.run_id(res, epoch=e)
        assert rid == f"{folder.name}@e{e}"
        r = kruns.load_run(rid)
        assert r.epoch == e and r.name == res.name and f"after epoch {e}" in repr(r)
        model = r.load_model()
        kept[e] = model.state_dict()
        assert not _same_state(kept[e], final)
        assert r.test_acc == res.history[e - 1]["test_acc"]
        ev = kd.evaluate(model, test)
        assert ev["acc"] == pytest.approx(r.test_acc, abs=1e-12)
        assert ev["loss"] == pytest.approx(res.history[e - 1]["test_loss"], rel=1e-5)
    assert not _same_state(kept[1], kept[2])
    assert kruns.load_run(folder.name).epoch is None

    # model-e1.pt is the student after epoch 1: the one a run killed at the
    # start of epoch 2 checkpointed; resuming it writes the same later files.
    _use_cache(monkeypatch, tmp_path / "killed")
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=0)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    ckpt = kruns.run_dir(cfg) / "checkpoint.pt"
    state = kloop.load_checkpoint(ckpt, kruns.run_key(cfg))["distiller"]
    student = {k.removeprefix("student."): v for k, v in state.items()}
    assert _same_state(student, kept[1])
    assert not (kruns.run_dir(cfg) / "model-e2.pt").exists()
    resumed = kd.run(cfg, progress=False)
    assert _same_state(_weights(resumed), final)
    for e in (1, 2):
        assert _same_state(_load(Path(resumed.path) / f"model-e{e}.pt"), kept[e])


def test_a_missing_epoch_is_a_clear_error(digits_config):
    res = kd.run(
        digits_config(method="ce", epochs=3, save_epochs=(1, 2)), progress=False
    )
    folder = Path(res.path).name
    with pytest.raises(ValueError, match=r"only after epochs \[1, 2\]"):
        kruns.load_run(f"{folder}@e7")
    with pytest.raises(ValueError, match=r"only after epochs \[1, 2\]"):
        kruns.load_run(f"{folder}@e3")  # the final weights are the plain id
    with pytest.raises(ValueError, match="kept no weights after epoch 3"):
        kruns.run_id(res, epoch=3)
    plain = kd.run(digits_config(method="ce", epochs=3, seed=1), progress=False)
    with pytest.raises(ValueError, match=r"\(none\)"):
        kruns.load_run(f"{Path(plain.path).name}@e1")
    with pytest.raises(ValueError, match="not finished in the cache"):
        kruns.load_run("ce-nothing-s0-000000000000@e1")


@pytest.mark.parametrize("bad", [(0,), (4,), (2, 1), (1, 1), (True,), (1.0,)])
def test_invalid_save_epochs_are_refused(digits_config, bad):
    with pytest.raises(ValueError, match=r"save_epochs must be increasing .* 1\.\.3"):
        digits_config(method="ce", epochs=3, save_epochs=bad)


def test_empty_save_epochs_leave_configs_unchanged_and_no_key_moves(digits_config):
    cfg = digits_config(method="kd", epochs=3)
    d = cfg.to_dict()
    assert "save_epochs" not in d
    # The key JSON of a config from before the field existed: every other field.
    old = {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in vars(cfg).items()
        if k != "save_epochs"
    }
    assert cfg.key_json() == json.dumps(old, sort_keys=True, default=str)
    assert Config.from_dict(d) == cfg
    saving = cfg.replace(save_epochs=[1, 2])  # a list is normalised to a tuple
    assert saving.save_epochs == (1, 2)
    assert saving.to_dict()["save_epochs"] == [1, 2]
    assert Config.from_dict(saving.to_dict()) == saving
    # Kept epochs decide what is saved, not what is computed: one key.
    assert kruns.run_key(saving) == kruns.run_key(cfg)


def test_an_earlier_epoch_of_a_run_can_teach(digits_config, capsys):
    t_cfg = digits_config(method="ce", epochs=3, save_epochs=(1,))
    teacher = kd.run(t_cfg, progress=False)
    cfg = digits_config(method="kd", teacher_runs=(kruns.run_id(teacher, 1),))
    capsys.readouterr()
    res = kd.run(cfg, progress=False)
    assert "[train] ce-" not in capsys.readouterr().out
    assert res.teacher["key"] == teacher.key
    assert res.teacher["test_acc"] == teacher.history[0]["test_acc"]
    # The distillation targets are the epoch-1 teacher's logits, cached apart.
    folder = Path(teacher.path)
    assert not (folder / "train_logits.pt").exists()
    cached = _load(folder / "train_logits-e1.pt")
    train = kloop.load_split(cfg, train=True)
    early = kruns.load_run(kruns.run_id(teacher, 1)).load_model()
    torch.testing.assert_close(cached, kd.predict_logits(early, train))
    assert not torch.allclose(
        cached, kd.predict_logits(teacher.load_model(), train), atol=1e-3
    )
    # ... and they are what the student was trained with.
    final_t = digits_config(method="kd", teacher_runs=(kruns.run_id(teacher),))
    other = kd.run(final_t, progress=False)
    assert not _same_state(_weights(other), _weights(res))
    assert (folder / "train_logits.pt").exists()


def test_a_students_save_epochs_do_not_change_its_teacher(digits_config):
    cfg = digits_config(method="kd", epochs=3)
    assert teacher_config(cfg.replace(save_epochs=(1,))) == teacher_config(cfg)
    short = cfg.replace(teacher_epochs=2, save_epochs=(3,))
    assert teacher_config(short).save_epochs == ()


def test_a_kept_epoch_is_evaluated_whatever_eval_every(digits_config):
    res = kd.run(
        digits_config(method="ce", epochs=3, save_epochs=(1,), eval_every=3),
        progress=False,
    )
    assert [h["test_acc"] is None for h in res.history] == [False, True, False]
    kept = kruns.load_run(kruns.run_id(res, 1))
    assert kept.test_acc == res.history[0]["test_acc"]
    assert "after epoch 1: test acc" in repr(kept)
    kept.history[0]["test_acc"] = None  # a run from before kept epochs were evaluated
    assert "after epoch 1: test acc not evaluated" in repr(kept)


# Methods that need no teacher


def test_a_method_without_teacher_never_trains_one(digits_config, capsys, tmp_path):
    cfg = digits_config(method="dml", teacher="resnet14", num_peers=2)
    assert cfg.teacher == "resnet14"
    assert cfg.name == "dml-resnet8-digits-num_peers2-s0"
    res = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert out.count("[train]") == 1 and "[train] dml-" in out
    runs = tmp_path / "kd-cache" / "runs"
    assert [p.name for p in runs.iterdir()] == [Path(res.path).name]
    assert res.teacher is None and res.name == cfg.name
    d = ktrain.load_distiller(res)
    assert d.teacher is None and "[train]" not in capsys.readouterr().out
    assert list(runs.iterdir()) == [Path(res.path)]


def test_names_leave_out_the_teacher_of_methods_that_need_none(digits_config):
    no_teacher = [m for m, c in METHODS.items() if not c.needs_teacher]
    assert {"ce", "dml", "one", "byot", "snapshot"} <= set(no_teacher)
    for method in no_teacher:
        cfg = digits_config(method=method, teacher="resnet14")
        assert "resnet14" not in cfg.name, method
        assert cfg.name.startswith(f"{method}-resnet8-digits"), method
    assert digits_config(method="kd", teacher="resnet14").name.startswith(
        "kd-resnet14-resnet8-digits"
    )
    # Without an explicit teacher, make_config gives them none at all.
    assert kd.make_config("smoke", method="dml").teacher is None
    assert kd.make_config("smoke", method="kd").teacher == "resnet14"
