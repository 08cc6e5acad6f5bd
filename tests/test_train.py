"""run(): training, the cache and its key, determinism, checkpoints and resuming."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from training_stops import interrupt as _interrupt

import kdutils as kd
from kdutils import data as kdata
from kdutils import loop as kloop
from kdutils import models as kmodels
from kdutils import provenance as kprovenance
from kdutils import runs as kruns
from kdutils import teachers as kteachers
from kdutils import train as ktrain
from kdutils.config import Config, teacher_config
from kdutils.distillers import Distiller
from kdutils.results import Result, atomic_write_bytes
from kdutils.runs import CORE_VERSION, MEASURED_ONLY


def _weights(res: Result) -> dict[str, torch.Tensor]:
    return torch.load(
        Path(res.path) / "model.pt", map_location="cpu", weights_only=True
    )


def _assert_same_weights(a: Result, b: Result) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _use_cache(monkeypatch, path: Path) -> None:
    monkeypatch.setenv("KD_CACHE_DIR", str(path))


def _steps(cfg: Config) -> int:
    return math.ceil(cfg.train_subset / cfg.batch_size)


# Training and the result record


def test_run_trains_and_writes_a_result_with_provenance(
    digits_config, capsys, tmp_path
):
    cfg = digits_config(method="ce")
    res = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[train]" in out and "[cache]" not in out
    assert not res.from_cache
    folder = Path(res.path)
    assert folder.parent == tmp_path / "kd-cache" / "runs"
    assert (folder / "result.json").exists() and (folder / "model.pt").exists()
    assert not (folder / "checkpoint.pt").exists()  # finished runs keep no checkpoint
    assert Result.load(folder / "result.json") == res
    assert res.cfg == cfg and res.key == kruns.run_key(cfg)
    assert [h["epoch"] for h in res.history] == [1, 2]
    assert all(0.0 <= h["test_acc"] <= 1.0 for h in res.history)
    assert res.test_acc == res.history[-1]["test_acc"]
    assert res.final["params"] == kd.num_params(
        kmodels.build_model("resnet8", "digits")
    )
    p = res.provenance
    assert "git_commit" in p
    assert p["torch"] == torch.__version__
    assert p["device"].startswith(kloop.default_device().type)
    # the machine names the CPU (its model, its vector instructions) and cores
    assert p["machine"] == f"{kprovenance.cpu_name()}, {os.cpu_count()} cores"
    assert p["code_hash"] == kprovenance.code_hash()
    assert datetime.fromisoformat(p["date"]).tzinfo is not None
    assert p["wall_seconds"] >= 0


def test_the_saved_model_is_the_one_that_was_evaluated(digits_config):
    cfg = digits_config(method="ce")
    res = kd.run(cfg, progress=False)
    model = res.load_model()
    assert not model.training
    test = kloop.load_split(cfg, train=False)
    assert len(test) == cfg.test_subset
    ev = kd.evaluate(model, test)
    assert ev["acc"] == pytest.approx(res.test_acc)
    assert ev["loss"] == pytest.approx(res.final["test_loss"], rel=1e-5)


def test_training_learns_something(digits_config):
    res = kd.run(digits_config(method="ce", epochs=3, train_subset=600), progress=False)
    assert res.test_acc > 0.3  # ten classes: chance is 0.1


def test_a_second_run_loads_from_the_cache(digits_config, capsys, monkeypatch):
    cfg = digits_config(method="ce")
    first = kd.run(cfg, progress=False)
    capsys.readouterr()

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run must not train")

    monkeypatch.setattr(ktrain, "fit", no_training)
    second = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[cache]" in out and "[train]" not in out
    assert second.from_cache and second == first


def test_kd_trains_its_teacher_once_and_shares_it(digits_config, capsys):
    cfg = digits_config(method="kd")
    res = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    t_cfg = teacher_config(cfg)
    assert out.count("[train]") == 2 and t_cfg.name in out
    assert res.teacher["key"] == kruns.run_key(t_cfg)
    assert res.teacher["name"] == t_cfg.name
    assert kruns.run_dir(t_cfg).joinpath("result.json").exists()
    kd.run(cfg.replace(seed=1, method_args={"T": 2.0}), progress=False)
    out = capsys.readouterr().out
    assert f"[cache] {t_cfg.name}" in out and out.count("[train]") == 1


# The cache key

# A different value for every Config field (changing the method changes its
# hyperparameters too).
_CHANGES = {
    "save_epochs": dict(save_epochs=(1,)),
    "val_fraction": dict(val_fraction=0.2),
    "method": dict(method="ce", method_args={}),
    "dataset": dict(dataset="fashion-mnist"),
    "student": dict(student="resnet14"),
    "teacher": dict(teacher="resnet14"),
    "method_args": dict(method_args={"T": 2.0}),
    "epochs": dict(epochs=3),
    "batch_size": dict(batch_size=32),
    "lr": dict(lr=0.1),
    "momentum": dict(momentum=0.8),
    "weight_decay": dict(weight_decay=1e-4),
    "schedule": dict(schedule="step"),
    "milestones": dict(milestones=(1,)),
    "gamma": dict(gamma=0.2),
    "augment": dict(augment=True),
    "train_subset": dict(train_subset=301),
    "test_subset": dict(test_subset=201),
    "seed": dict(seed=1),
    "teacher_seed": dict(teacher_seed=1),
    "teacher_epochs": dict(teacher_epochs=1),
    "teacher_runs": dict(teacher_runs=("kd-resnet8-resnet8-digits-s0-0123abcd",)),
    "eval_every": dict(eval_every=2),
    "profile": dict(profile="quick"),
}


def test_every_config_field_but_the_measured_ones_changes_the_key(digits_config):
    cfg = digits_config(method="kd")
    fields = {f.name for f in dataclasses.fields(Config)}
    assert set(_CHANGES) == fields, "give every Config field a value to test here"
    keys = {kruns.run_key(cfg)}
    for name, changes in _CHANGES.items():
        changed = cfg.replace(**changes)
        assert getattr(changed, name) != getattr(cfg, name), name
        if name in MEASURED_ONLY:
            assert kruns.run_key(changed) == kruns.run_key(cfg), name
        else:
            keys.add(kruns.run_key(changed))
    assert len(keys) == len(_CHANGES) - len(MEASURED_ONLY) + 1


def test_a_version_bump_changes_the_key_and_is_never_served_from_cache(
    digits_config, capsys, monkeypatch
):
    cfg = digits_config(method="ce")
    first = kd.run(cfg, progress=False)
    assert first.provenance["versions"] == {"core": CORE_VERSION, "ce": 1}
    for bump in (
        lambda m: m.setattr(kruns, "CORE_VERSION", CORE_VERSION + 1),
        lambda m: m.setattr(kd.METHODS["ce"], "version", 2),
    ):
        with monkeypatch.context() as m:
            bump(m)
            assert kruns.run_key(cfg) != first.key
            capsys.readouterr()
            second = kd.run(cfg, progress=False)
            out = capsys.readouterr().out
            assert "[train]" in out and "[cache]" not in out
            assert Path(second.path) != Path(first.path)
    assert kruns.run_key(cfg) == first.key


def test_editing_a_source_file_changes_no_key(digits_config, monkeypatch):
    """A refactor, a log line, a new method in a family's module: no key moves."""
    cfgs = [digits_config(method=m) for m in ("kd", "fitnet", "rkd", "dml", "ce")]
    before = [kruns.run_key(c) for c in cfgs]

    class Newcomer(kd.Distiller):
        """A method added to the logit family's module."""

        def forward(self, x, y, idx=None, teacher_out=None):
            raise NotImplementedError

    Newcomer.__module__ = kd.METHODS["kd"].__module__
    monkeypatch.setitem(kd.METHODS, "newcomer", Newcomer)
    monkeypatch.setattr(kprovenance, "code_hash", lambda method="ce": "0" * 16)
    assert [kruns.run_key(c) for c in cfgs] == before


def test_a_users_own_method_is_keyed_by_its_source(digits_config, monkeypatch):
    from kdutils.distillers.traditional import KD

    class Mine(KD):
        """A user's method, defined outside kdutils."""

    class MineEdited(KD):
        """The same user's method, after an edit."""

        scale = 2

    monkeypatch.setitem(kd.METHODS, "mine", Mine)
    key = kruns.run_key(digits_config(method="mine"))
    assert kruns.run_key(digits_config(method="mine")) == key
    monkeypatch.setitem(kd.METHODS, "mine", MineEdited)
    assert kruns.run_key(digits_config(method="mine")) != key


def test_code_hash_follows_the_training_sources(tmp_path, monkeypatch):
    pkg = tmp_path / "kdutils"
    shutil.copytree(kprovenance._PKG, pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(kprovenance, "_PKG", pkg)
    base = kprovenance.code_hash("kd")
    assert base == kprovenance.code_hash("kd")
    for rel in (
        "losses/traditional.py",
        "distillers/traditional.py",
        "distillers/base.py",
        "train.py",
        "data.py",
        "models.py",
    ):
        f = pkg / rel
        original = f.read_text()
        f.write_text(original + "\n# changed\n")
        assert kprovenance.code_hash("kd") != base, rel
        f.write_text(original)
    assert kprovenance.code_hash("kd") == base
    # Plotting, and other families' modules, do not change what a kd run computes.
    (pkg / "plots.py").write_text("# plotting does not change what a run computes\n")
    (pkg / "losses" / "relation.py").write_text("# another family's losses\n")
    assert kprovenance.code_hash("kd") == base


def test_method_sources_follow_the_distillers_imports():
    files = kprovenance.method_sources("kd")
    assert "distillers/traditional.py" in files
    assert "distillers/base.py" in files and "losses/traditional.py" in files
    assert "losses/relation.py" not in files


# Determinism and resuming


def test_two_fresh_runs_with_the_same_seed_are_identical(
    digits_config, tmp_path, monkeypatch
):
    cfg = digits_config(method="kd", augment=True)
    _use_cache(monkeypatch, tmp_path / "a")
    a = kd.run(cfg, progress=False)
    _use_cache(monkeypatch, tmp_path / "b")
    b = kd.run(cfg, progress=False)
    _assert_same_weights(a, b)
    assert [h["test_acc"] for h in a.history] == [h["test_acc"] for h in b.history]
    # ... while another seed gives other weights (so the check above can fail).
    c = kd.run(cfg.replace(seed=1), progress=False)
    assert not torch.equal(_weights(a)["fc.weight"], _weights(c)["fc.weight"])


@pytest.mark.parametrize("augment", [True, False])
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(
    digits_config, tmp_path, monkeypatch, capsys, augment
):
    cfg = digits_config(method="kd", epochs=3, augment=augment)
    _use_cache(monkeypatch, tmp_path / "uninterrupted")
    reference = kd.run(cfg, progress=False)

    _use_cache(monkeypatch, tmp_path / "interrupted")
    # The teacher finishes; its student is killed in its second epoch.
    kd.run(teacher_config(cfg), progress=False)
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=2)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    folder = kruns.run_dir(cfg)
    assert not (folder / "result.json").exists()
    state = kloop.load_checkpoint(folder / "checkpoint.pt", kruns.run_key(cfg))
    assert state["epoch"] == 1

    capsys.readouterr()
    resumed = kd.run(cfg, progress=False)
    assert "[resume]" in capsys.readouterr().out
    _assert_same_weights(resumed, reference)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for h, r in zip(resumed.history, reference.history, strict=True):
        assert {k: v for k, v in h.items() if k != "seconds"} == {
            k: v for k, v in r.items() if k != "seconds"
        }


def _partial_run(cfg: Config, monkeypatch) -> Path:
    """Leave ``cfg`` with a checkpoint after epoch 1 and no result."""
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=1)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    ckpt = kruns.run_dir(cfg) / "checkpoint.pt"
    assert ckpt.exists()
    return ckpt


def test_a_checkpoint_of_another_run_is_refused(digits_config, tmp_path):
    path = tmp_path / "ckpt.pt"
    kloop.save_checkpoint(path, {"key": "aaaaaaaaaaaa", "epoch": 1})
    assert kloop.load_checkpoint(path, "aaaaaaaaaaaa")["epoch"] == 1
    with pytest.raises(kloop.CheckpointError, match="does not belong"):
        kloop.load_checkpoint(path, "bbbbbbbbbbbb")


def test_partial_run_needs_resume_or_restart(
    digits_config, monkeypatch, capsys, tmp_path
):
    cfg = digits_config(method="ce", epochs=3)
    ckpt = _partial_run(cfg, monkeypatch)
    with pytest.raises(ktrain.PartialRunExists, match="resume"):
        kd.run(cfg, resume=False, progress=False)
    assert ckpt.exists()
    capsys.readouterr()
    restarted = kd.run(cfg, resume=False, restart=True, progress=False)
    out = capsys.readouterr().out
    assert "[resume]" not in out and "[train]" in out
    assert [h["epoch"] for h in restarted.history] == [1, 2, 3]
    assert not ckpt.exists()
    _use_cache(monkeypatch, tmp_path / "fresh")
    _assert_same_weights(restarted, kd.run(cfg, progress=False))


# Atomic writes and non-finite losses


def test_an_interrupted_atomic_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "state" / "checkpoint.pt"
    atomic_write_bytes(path, b"old contents")
    assert path.read_bytes() == b"old contents"

    def failing_replace(src, dst):
        raise OSError("disk full (test)")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", failing_replace)
        with pytest.raises(OSError, match="disk full"):
            atomic_write_bytes(path, b"new contents that never land")
    assert path.read_bytes() == b"old contents"
    assert os.listdir(path.parent) == ["checkpoint.pt"]  # no temporary left behind

    def interrupted_fsync(fd):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", interrupted_fsync)
        with pytest.raises(KeyboardInterrupt):
            atomic_write_bytes(path, b"half")
    assert path.read_bytes() == b"old contents"
    assert os.listdir(path.parent) == ["checkpoint.pt"]

    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new"


def test_a_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_checkpoint(
    digits_config, monkeypatch
):
    cfg = digits_config(method="ce", epochs=3)
    steps = _steps(cfg)
    ce_cls = kd.METHODS["ce"]
    original = ce_cls.forward
    calls = {"n": 0}

    def forward(self, x, y, teacher_out=None, idx=None):
        calls["n"] += 1
        logits, terms = original(self, x, y, teacher_out, idx)
        if calls["n"] == steps + 2:  # epoch 2, step 2
            terms = {"ce": terms["ce"] * float("nan")}
        return logits, terms

    with monkeypatch.context() as m:
        m.setattr(ce_cls, "forward", forward)
        with pytest.raises(kd.loop.NonFiniteLoss) as info:
            kd.run(cfg, progress=False)
    message = str(info.value)
    assert "epoch 2" in message and "step 2" in message and "nan" in message
    ckpt = kruns.run_dir(cfg) / "checkpoint.pt"
    state = kloop.load_checkpoint(ckpt, kruns.run_key(cfg))
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert not (kruns.run_dir(cfg) / "result.json").exists()
    # The kept checkpoint is good enough to finish the run from.
    res = kd.run(cfg, progress=False)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]


def test_a_huge_learning_rate_is_reported_not_trained_through(digits_config):
    cfg = digits_config(method="ce", epochs=2, lr=1e12, weight_decay=0.0)
    with pytest.raises(kd.loop.NonFiniteLoss, match=r"epoch \d+, step \d+"):
        kd.run(cfg, progress=False)


# evaluate and predict_logits


class _Fixed(nn.Module):
    """A 'model' that always gives logit 1 to class 3 and 0 to the others."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.classes = classes
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        logits = torch.zeros(len(x), self.classes)
        logits[:, 3] = 1.0
        return logits


def test_evaluate_against_a_hand_computation():
    test = kdata.load("digits", train=False)
    ev = kd.evaluate(_Fixed(), test, batch_size=37)
    assert ev["acc"] == pytest.approx((test.labels == 3).float().mean().item())
    # CE of logits (1 at class 3, else 0): log(e + 9) - [y == 3]
    expected = math.log(math.e + 9) - (test.labels == 3).float().mean().item()
    assert ev["loss"] == pytest.approx(expected, rel=1e-6)


def test_predict_logits_is_in_dataset_order():
    torch.manual_seed(0)
    model = kd.create_model("resnet8", in_channels=1).eval()
    data = kdata.load("digits", train=False).subset(50)
    got = kd.predict_logits(model, data, batch_size=16)
    with torch.no_grad():
        expected = model(kdata.normalize(data.images, data.info))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_eval_every_skips_epochs_but_always_evaluates_the_last(digits_config):
    res = kd.run(digits_config(method="ce", epochs=3, eval_every=2), progress=False)
    accs = [h["test_acc"] for h in res.history]
    assert accs[0] is None and accs[1] is not None and accs[2] is not None
    assert res.test_acc == accs[2]


def test_a_checkpoint_with_missing_student_weights_is_refused(
    digits_config, monkeypatch
):
    cfg = digits_config(method="ce", epochs=2)
    folder = kruns.run_dir(cfg)
    real_iter = kdata.Loader.__iter__

    def stop_in_epoch_two(self):
        for i, batch in enumerate(real_iter(self)):
            if self.epoch == 1 and i == 1:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(kdata.Loader, "__iter__", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        kd.run(cfg, progress=False)
    monkeypatch.setattr(kdata.Loader, "__iter__", real_iter)
    ckpt = folder / "checkpoint.pt"
    state = torch.load(ckpt, weights_only=False)
    state["distiller"].pop("student.fc.weight")
    kloop.save_checkpoint(ckpt, state)  # a valid file, with its checksum
    with pytest.raises(kloop.CheckpointError, match="student.fc.weight"):
        kd.run(cfg, progress=False)


# Teacher outputs computed once for the training set


class _Spy(Distiller):
    """A test-only method reading the teacher's ``layer2``; records what it gets."""

    seen: list = []

    def __init__(self, student, teacher, w: float = 1.0):
        super().__init__(student, teacher)
        self.teacher_layers = ("layer2",)

    def forward(self, x, y, teacher_out=None, idx=None):
        live = self.teacher_outputs(x)
        _Spy.seen.append((teacher_out, live, idx))
        return self.student(x), {"ce": F.cross_entropy(self.student(x), y)}


def test_teacher_features_are_computed_once_and_match_the_live_forward(
    digits_config, monkeypatch, capsys
):
    monkeypatch.setitem(kd.METHODS, "spy", _Spy)
    _Spy.seen = []
    cfg = digits_config(method="spy", epochs=1)
    kd.run(cfg, progress=False)
    assert "features of layer2 on the training set computed once" in (
        capsys.readouterr().out
    )
    assert _Spy.seen
    for cached, live, idx in _Spy.seen:
        assert set(cached) == {"logits", "layer2"} and len(idx) == len(cached["layer2"])
        torch.testing.assert_close(cached["layer2"], live["layer2"])
        torch.testing.assert_close(cached["logits"], live["logits"])


def test_teacher_features_over_the_memory_budget_are_computed_per_batch(
    digits_config, monkeypatch, capsys
):
    monkeypatch.setitem(kd.METHODS, "spy", _Spy)
    monkeypatch.setattr(kteachers, "FEATURE_CACHE_BYTES", 1000)
    _Spy.seen = []
    kd.run(digits_config(method="spy", epochs=1), progress=False)
    assert "computed on every batch" in capsys.readouterr().out
    assert all(cached is None for cached, _, _ in _Spy.seen)


# Teachers that are finished runs (assistants, several teachers, generations)


def test_a_distilled_run_can_teach_the_next_one(digits_config, capsys):
    assistant = kd.run(digits_config(method="kd"), progress=False)
    cfg = digits_config(method="kd", teacher_runs=(kruns.run_id(assistant),))
    capsys.readouterr()
    res = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[train] ce-" not in out  # no teacher trained alone for this run
    assert res.teacher["name"] == assistant.name
    assert res.teacher["key"] == assistant.key
    assert kruns.run_key(cfg) != kruns.run_key(digits_config(method="kd"))
    with pytest.raises(ValueError, match="finished runs"):
        kd.teacher_config(cfg)


def test_a_missing_teacher_run_is_a_clear_error(digits_config):
    cfg = digits_config(method="kd", teacher_runs=("kd-nothing-s0-000000000000",))
    with pytest.raises(ValueError, match="not finished in the cache"):
        kd.run(cfg, progress=False)


class _Many(Distiller):
    """A test-only method averaging several teachers' logits."""

    def __init__(self, student, teacher, w: float = 1.0):
        super().__init__(student, teacher)

    def teacher_outputs(self, x):
        with torch.no_grad():
            return {"logits": torch.stack([t(x) for t in self.teacher]).mean(0)}

    def forward(self, x, y, teacher_out=None, idx=None):
        assert teacher_out is None  # several teachers: computed on every batch
        logits_s = self.student(x)
        t = self.teacher_outputs(x)["logits"]
        return logits_s, {"kd": kd.losses.kd_loss(logits_s, t)}


def test_several_teacher_runs_arrive_as_a_module_list(digits_config, monkeypatch):
    monkeypatch.setitem(kd.METHODS, "many", _Many)
    teachers = [
        kd.run(digits_config(method="ce", seed=s), progress=False) for s in (0, 1)
    ]
    ids = tuple(kruns.run_id(t) for t in teachers)
    res = kd.run(digits_config(method="many", teacher_runs=ids), progress=False)
    assert [t["name"] for t in res.teacher] == [t.name for t in teachers]


# What is measured is not in the key


def test_a_run_serves_every_request_whose_measurements_it_holds(digits_config, capsys):
    sparse = digits_config(method="ce", epochs=4, eval_every=2)
    first = kd.run(sparse, progress=False)
    assert [h["test_acc"] is not None for h in first.history] == [False, True] * 2
    trained = _weights(first)  # read now: the same folder is written again below
    dense = sparse.replace(eval_every=1, save_epochs=(1,))
    assert kruns.run_dir(dense) == kruns.run_dir(sparse)
    capsys.readouterr()
    both = kd.run(dense, progress=False)
    out = capsys.readouterr().out
    assert "training it again to measure both" in out and "[done]" in out
    assert all(h["test_acc"] is not None for h in both.history)
    assert (Path(both.path) / "model-e1.pt").exists()
    # Evaluating more changes nothing that is trained.
    again = _weights(both)
    assert all(torch.equal(trained[k], again[k]) for k in trained)
    # Now every request of the two is served from the cache.
    for cfg in (sparse, dense, sparse.replace(eval_every=4)):
        assert kd.run(cfg, progress=False).from_cache
