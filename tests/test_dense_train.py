"""The dense trainer: caching, bit-exact resume, keys, configs, each method's loss."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from kdutils import dense_train as dt
from kdutils.scenes import make_scenes, to_input

# Narrow backbones keep each run to a few seconds.
STUDENT = "resnet8_w8-8-8-16"
TEACHER = "resnet8_w8-8-16-24"


def tiny(task: str, method: str = "none", **kw) -> dt.DenseConfig:
    args = dict(
        task=task,
        model=STUDENT,
        method=method,
        teacher=None if method == "none" else TEACHER,
        epochs=2,
        batch_size=16,
        train_scenes=48,
        test_scenes=16,
    )
    args.update(kw)
    return dt.DenseConfig(**args)


def same(a, b) -> bool:
    """Equal records, NaN equal to NaN (the IoU of a class no test scene has)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _weights(res: dt.DenseResult, name: str = "model.pt") -> dict:
    return torch.load(Path(res.path) / name, map_location="cpu", weights_only=True)


def test_trains_then_loads_from_cache(capsys):
    cfg = tiny("segmentation")
    res = dt.run_dense(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[done] seg-none-" in out and "[cache]" not in out
    assert not res.from_cache and len(res.history) == cfg.epochs
    assert res.history[0]["test"] is None and same(res.history[-1]["test"], res.metrics)
    assert set(res.history[0]["train"]) >= {"ce", "loss"}
    assert 0 <= res.metrics["miou"] <= 1 and res.params > 0 and res.flops > 0
    assert Path(res.path).name == f"{cfg.name}-{dt.dense_key(cfg)}"
    assert not (Path(res.path) / "checkpoint.pt").exists()
    again = dt.run_dense(cfg, progress=True)  # progress is not in the key
    out = capsys.readouterr().out
    assert "[cache] seg-none-" in out and "[done]" not in out
    assert again.from_cache and same(again.metrics, res.metrics)
    assert same(again.history, res.history) and again.key == res.key
    model = again.load_model()
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, _weights(res)[k])
    # a changed weight file is caught: the run is set aside and trained again
    with open(Path(res.path) / "model.pt", "ab") as f:
        f.write(b"x")
    third = dt.run_dense(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[corrupt]" in out and "[done]" in out and not third.from_cache
    assert same(third.metrics, res.metrics)  # the same run, trained again
    assert any((dt.cache_dir() / "set-aside").iterdir())


def test_record_is_json_with_what_the_run_measured():
    cfg = tiny("detection", eval_every=1)
    res = dt.run_dense(cfg, progress=False)
    rec = json.loads((Path(res.path) / "result.json").read_text())
    assert rec["config"] == cfg.to_dict() and rec["key"] == dt.dense_key(cfg)
    assert {"map", "map_50"} <= set(rec["metrics"])
    assert all(h["test"] is not None for h in rec["history"])  # eval_every=1
    assert rec["provenance"]["versions"] == {
        "core": dt.CORE_VERSION,
        "dense": dt.DENSE_VERSION,
    }
    assert rec["flops"] == res.flops > 0 and rec["params"] == res.params
    assert rec["seconds"] > 0 and set(rec["files"]) == {"model.pt"}
    assert res.load_adapters() is None


class _Stop(RuntimeError):
    pass


@pytest.mark.parametrize(
    "task,method,args",
    [("segmentation", "channel", {"maps": "feat"}), ("detection", "chen", {})],
)
def test_interrupted_run_resumes_to_the_same_weights(task, method, args, monkeypatch):
    cfg = tiny(task, method, args=args, epochs=3)
    whole = dt.run_dense(cfg, progress=False)
    expected = {n: _weights(whole, n) for n in ("model.pt", "adapters.pt")}
    shutil.rmtree(whole.path)  # the teacher's run stays cached

    real, calls = dt._step, []

    def stopping(*a, **kw):
        calls.append(1)
        if len(calls) == 3 + 2:  # 3 steps an epoch: stop inside epoch 2
            raise _Stop("killed")
        return real(*a, **kw)

    monkeypatch.setattr(dt, "_step", stopping)
    with pytest.raises(_Stop):
        dt.run_dense(cfg, progress=False)
    folder = dt.dense_dir(cfg)
    assert (folder / "checkpoint.pt").exists() and not (folder / "result.json").exists()
    monkeypatch.setattr(dt, "_step", real)
    resumed = dt.run_dense(cfg, progress=False)
    assert not resumed.from_cache
    for name, state in expected.items():
        got = _weights(resumed, name)
        assert got.keys() == state.keys()
        for k, v in state.items():
            assert torch.equal(got[k], v), (name, k)
    assert same(
        [h["train"] for h in resumed.history], [h["train"] for h in whole.history]
    )
    assert same(resumed.metrics, whole.metrics)
    adapters = resumed.load_adapters()
    assert not adapters.training
    for k, v in adapters.state_dict().items():
        assert torch.equal(v, expected["adapters.pt"][k])


def test_interrupted_first_epoch_leaves_no_folder(monkeypatch):
    cfg = tiny("segmentation")

    def boom(*a, **kw):
        raise _Stop("killed")

    monkeypatch.setattr(dt, "_step", boom)
    with pytest.raises(_Stop):
        dt.run_dense(cfg, progress=False)
    assert not dt.dense_dir(cfg).exists()


def test_key_follows_what_is_computed():
    cfg = tiny("segmentation", "pixel")
    key = dt.dense_key(cfg)
    assert dt.dense_key(cfg.replace(args={"weight": 5.0})) != key
    assert dt.dense_key(cfg.replace(seed=1)) != key
    assert dt.dense_key(cfg.replace(teacher_seed=1)) != key
    assert dt.dense_key(cfg.replace(scene_seed=1)) != key
    assert dt.dense_key(cfg.replace(teacher_epochs=5)) != key
    assert dt.dense_key(cfg.replace(eval_every=1)) == key  # measures only
    # defaults filled in, ints and floats alike: one experiment, one key
    assert dt.dense_key(cfg.replace(args={"weight": 10})) == key
    assert dt.dense_key(cfg.replace(args=(("their_batch", 8),))) == key
    assert cfg.name == f"seg-pixel-{STUDENT}-{TEACHER}-s0"
    assert (
        cfg.replace(args={"weight": 5.0}).name
        == f"seg-pixel-{STUDENT}-{TEACHER}-weight5-s0"
    )
    t = dt.dense_teacher_config(cfg.replace(teacher_epochs=5))
    assert (t.epochs, t.teacher_epochs) == (5, None)
    t = dt.dense_teacher_config(cfg)
    assert t.epochs == cfg.epochs
    assert (t.model, t.method, t.teacher, t.args, t.seed) == (
        TEACHER,
        "none",
        None,
        (),
        0,
    )


def test_profiles_make_valid_configs():
    for profile in dt.DENSE_PROFILES:
        for name, m in dt.DENSE_METHODS.items():
            cfg = dt.dense_config(profile, m.task, name, seed=1)
            assert cfg.method == name and cfg.teacher is not None and cfg.seed == 1
        alone = dt.dense_config(profile, "detection")
        assert alone.teacher is None and alone.name.startswith("det-none-")
    cfg = dt.dense_config("smoke", "segmentation", "pixel")
    assert cfg.name == "seg-pixel-resnet8-resnet14-s0"
    assert dt.dense_config("quick", "detection", epochs=1).epochs == 1
    with pytest.raises(ValueError, match="profile"):
        dt.dense_config("huge", "detection")


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(task="classification"), "task"),
        (dict(method="kd"), "method 'kd' is unknown"),
        (dict(method="chen"), "detection method"),
        (dict(teacher=None), "teacher is required"),
        (dict(method="none"), "teacher 'resnet14' is given"),
        (dict(model="vgg16"), "model"),
        (dict(teacher="resnet9"), "teacher"),
        (dict(args={"tau": 4.0}), "no argument"),
        (dict(args={"weight": "big"}), "weight"),
        (dict(args={"weight": math.inf}), "weight"),
        (dict(args=3), "args"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(train_scenes=-1), "train_scenes"),
        (dict(test_scenes=True), "test_scenes"),
        (dict(seed=-1), "seed"),
        (dict(size=30), "size"),
        (dict(size=66), "size"),
        (dict(lr=0), "lr"),
        (dict(momentum=1.0), "momentum"),
        (dict(weight_decay=-1e-4), "weight_decay"),
        (dict(eval_every=0), "eval_every"),
        (dict(teacher_epochs=0), "teacher_epochs"),
        (dict(method="none", teacher=None, teacher_epochs=3), "teacher_epochs"),
    ],
)
def test_bad_config_is_one_clear_error(changes, match):
    base = dict(task="segmentation", method="pixel", teacher="resnet14")
    with pytest.raises(ValueError, match=match):
        dt.DenseConfig(**{**base, **changes})


def test_run_dense_wants_a_dense_config():
    with pytest.raises(ValueError, match="DenseConfig"):
        dt.run_dense({"task": "segmentation"})


@pytest.fixture(scope="module")
def batch():
    scenes = make_scenes(6, True, 3)
    return scenes, to_input(scenes.images)


@pytest.mark.parametrize("method", sorted(dt.DENSE_METHODS))
def test_each_method_trains_student_and_adapters_not_teacher(method, batch):
    scenes, x = batch
    spec = dt.DENSE_METHODS[method]
    task = dt.TASKS[spec.task]
    cfg = tiny(spec.task, method)
    torch.manual_seed(0)
    student, teacher = task.build(STUDENT), task.build(TEACHER)
    distill = dt._build_method(
        cfg, dt._feat_channels(STUDENT, cfg), dt._feat_channels(TEACHER, cfg)
    )
    if method == "channel":  # the feature variant has an adapter to check too
        distill = dt._build_method(
            cfg.replace(args={"maps": "feat"}),
            dt._feat_channels(STUDENT, cfg),
            dt._feat_channels(TEACHER, cfg),
        )
    teacher.eval()  # frozen in the trainer; its weights still ask for gradients here
    tgt = task.targets(scenes, torch.arange(len(scenes)))

    # the method's terms alone: finite, reaching the student and every adapter
    terms = distill(student(x), _no_grad(teacher, x), tgt)
    assert terms and all(torch.isfinite(v) and v.dim() == 0 for v in terms.values())
    own = list(distill.parameters())
    grads = torch.autograd.grad(
        sum(terms.values()), list(student.parameters()) + own, allow_unused=True
    )
    g_student, g_own = grads[: len(grads) - len(own)], grads[len(grads) - len(own) :]
    assert any(g is not None and g.abs().sum() > 0 for g in g_student)
    assert all(g is not None for g in g_own)
    assert not own or any(g.abs().sum() > 0 for g in g_own)
    assert (len(own) > 0) == (method not in ("pixel", "pairwise"))

    # one trainer step: the teacher gets no gradient, the student moves
    params = list(student.parameters()) + own
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    before = [p.detach().clone() for p in params]
    t_before = [p.detach().clone() for p in teacher.parameters()]
    t_out = dt._teacher_outputs(teacher, scenes, torch.device("cpu"), batch_size=4)
    assert not any(v.requires_grad for v in t_out.values())
    assert "logits" not in t_out and len(t_out["feat"]) == len(scenes)
    parts = dt._step(student, distill, task.task_loss, x, tgt, t_out, opt)
    assert all(math.isfinite(v) for v in parts.values())
    assert {f"kd_{k}" for k in terms} <= set(parts)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(
        torch.equal(a, b) for a, b in zip(t_before, teacher.parameters(), strict=True)
    )
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before, student.parameters(), strict=False)
    )
    moved = [
        not torch.equal(a, b)
        for a, b in zip(before[len(before) - len(own) :], own, strict=True)
    ]
    assert not own or any(moved)


def _no_grad(model, x):
    with torch.no_grad():
        return model(x)


def test_non_finite_loss_stops_with_a_clear_error(batch):
    scenes, x = batch
    task = dt.TASKS["segmentation"]
    student = task.build(STUDENT)
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    tgt = task.targets(scenes, torch.arange(len(scenes)))
    with pytest.raises(dt.NonFiniteLoss, match="loss became nan"):
        dt._step(
            student,
            None,
            lambda o, t: (o["logits"].sum() * math.nan, {}),
            x,
            tgt,
            None,
            opt,
        )
