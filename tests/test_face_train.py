"""Chapter 17's trainer: configs, the cache, bit-exact resume, each method's terms."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from kdutils import face_train as ft
from kdutils import verification as vf
from kdutils.appruns import app_dir

STUDENT, TEACHER = "cnn_w4-4-8", "cnn_w4-8-8"


def tiny(method: str = "none", **kw) -> ft.FaceConfig:
    args = dict(
        model=STUDENT,
        method=method,
        teacher=TEACHER if method in ("embed", "ddl+embed", "inherit") else None,
        epochs=2,
        batch_pairs=8,
        emb_dim=8,
        train_images=96,
        heldout_images=400,
        n_pairs=200,
    )
    args.update(kw)
    return ft.FaceConfig(**args)


def _weights(res, name="model.pt"):
    return torch.load(Path(res.path) / name, map_location="cpu", weights_only=True)


def test_trains_then_loads_from_cache(capsys):
    cfg = tiny()
    first = ft.run_face(cfg, progress=False)
    assert not first.from_cache and "[done]" in capsys.readouterr().out
    again = ft.run_face(cfg, progress=False)
    assert again.from_cache and "[cache]" in capsys.readouterr().out
    assert again.metrics == first.metrics
    for tag in ("clean", "hard"):
        for k in ("acc", "tar@0.01"):
            assert 0 <= first.metrics[f"{tag}_{k}"] <= 1
    assert first.info["heldout_classes"] == list(vf.HELDOUT_CLASSES)
    assert first.info["train_images"] == 96 and first.info["pairs"] == 200
    # the other kind of hard copy is another run
    other = ft.FaceConfig(**{**first.config, "hard": "lowres", "hard_size": 7})
    assert app_dir(other, ft.KIND, ft.FACE_VERSION) != Path(first.path)
    net = ft.load_embedder(first)
    assert not net.training and net(torch.zeros(2, 1, 28, 28)).shape == (2, 8)


class _Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["ddl+embed"])
def test_interrupted_run_resumes_to_the_same_weights(method, monkeypatch):
    cfg = tiny(method, epochs=3)
    whole = ft.run_face(cfg, progress=False)
    expected = {n: _weights(whole, n) for n in ("model.pt", "head.pt")}
    shutil.rmtree(whole.path)  # the teacher's run stays cached

    real, calls = ft._FaceSession.step_terms, []

    def stopping(self, *a):
        calls.append(1)
        if len(calls) == 6 + 3:  # 6 steps an epoch: stop inside epoch 2
            raise _Stop("killed")
        return real(self, *a)

    monkeypatch.setattr(ft._FaceSession, "step_terms", stopping)
    with pytest.raises(_Stop):
        ft.run_face(cfg, progress=False)
    folder = app_dir(cfg, ft.KIND, ft.FACE_VERSION)
    assert (folder / "checkpoint.pt").exists() and not (folder / "result.json").exists()
    monkeypatch.setattr(ft._FaceSession, "step_terms", real)
    resumed = ft.run_face(cfg, progress=False)
    assert not resumed.from_cache
    for name, state in expected.items():
        got = _weights(resumed, name)
        for k, v in state.items():
            assert torch.equal(got[k], v), (name, k)
    assert [h["train"] for h in resumed.history] == [h["train"] for h in whole.history]
    assert resumed.metrics == whole.metrics
    assert resumed.info["teacher"]["name"] == ft.face_teacher_config(cfg).name


@pytest.mark.parametrize(
    "method,terms",
    [
        ("none", {"arcface"}),
        ("embed", {"arcface", "embed"}),
        ("ddl", {"arcface", "ddl_pos", "ddl_neg", "ddl_order"}),
        ("ddl+embed", {"arcface", "embed", "ddl_pos", "ddl_neg", "ddl_order"}),
        ("inherit", {"arcface"}),
    ],
)
def test_each_method_gives_its_terms_and_trains_only_the_student(method, terms):
    cfg = tiny(method, epochs=1)
    torch.manual_seed(0)
    sess = ft._FaceSession(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    easy = torch.cat([torch.arange(8), sess._partners(torch.arange(8), g)])
    hard = torch.cat([torch.arange(8, 16), sess._partners(torch.arange(8, 16), g)])
    out = sess.step_terms(easy, hard)
    assert set(out) == terms and all(
        math.isfinite(float(v.detach())) for v in out.values()
    )
    sum(out.values()).backward()
    assert all(p.grad is not None for p in sess.model.parameters())
    if method == "inherit":  # the teacher's centres, frozen
        t_head = sess.teacher_run.state_dict("head.pt")["weight"]
        assert torch.equal(sess.head.weight, t_head) and sess.head.weight.grad is None
        assert all(
            p is not sess.head.weight
            for g in sess.opt.param_groups
            for p in g["params"]
        )
    else:
        assert sess.head.weight.grad is not None
    if sess.teacher is not None:
        assert not sess.teacher.training
        assert all(
            p.grad is None and not p.requires_grad for p in sess.teacher.parameters()
        )
    # the partners are other images of the same class
    assert torch.equal(sess.labels[easy[:8]], sess.labels[easy[8:]])
    assert (easy[:8] != easy[8:]).all()


def test_ddl_term_equals_the_loss_on_the_branches():
    cfg = tiny("ddl", epochs=1)
    sess = ft._FaceSession(cfg, torch.device("cpu"))
    sess.model.eval()  # batch norm from running stats: one forward equals another
    idx = torch.arange(16)
    easy, hard = idx, idx + 16
    out = sess.step_terms(easy, hard)
    from kdutils import losses as L

    x_e = vf.to_input(sess.images[easy])
    x_h = vf.harden(vf.to_input(sess.images[hard]), cfg.hard, cfg.hard_size)
    e_e, e_h = sess.model(x_e), sess.model(x_h)
    want = L.ddl_loss(
        L.ddl_neg_similarities(e_h, sess.labels[hard]),
        L.ddl_pos_similarities(e_h[:8], e_h[8:]),
        L.ddl_neg_similarities(e_e, sess.labels[easy]),
        L.ddl_pos_similarities(e_e[:8], e_e[8:]),
    )
    for k, v in want.items():
        torch.testing.assert_close(out[k], v, rtol=1e-4, atol=1e-6)


def test_profiles_make_valid_configs_and_names():
    for profile in ft.FACE_PROFILES:
        for m in ["none", *ft.FACE_METHODS]:
            cfg = ft.face_config(profile, m, seed=1)
            assert cfg.method == m and cfg.seed == 1
            assert (cfg.teacher is not None) == ft.FACE_METHODS.get(
                m, ft.FACE_METHODS["ddl"]
            ).needs_teacher
    cfg = ft.face_config("quick", "embed")
    t = ft.face_teacher_config(cfg)
    assert (
        t.model == cfg.teacher and t.method == "none" and t.epochs == cfg.teacher_epochs
    )
    assert ft.face_config("quick", "ddl").name == "face-ddl-cnn_w8-16-32-s0"
    named = ft.face_config("quick", "ddl", args={"order_weight": 0})
    assert named.name.endswith("order_weight0-s0")
    assert dict(named.args)["pos_kl_weight"] == 0.1
    # eval_every measures only: not in the key
    from kdutils.appruns import app_key

    assert app_key(cfg, "face", 1) == app_key(cfg.replace(eval_every=1), "face", 1)
    assert app_key(cfg, "face", 1) != app_key(cfg.replace(margin=0.2), "face", 1)


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(method="kd"), "method must be 'none' or one of"),
        (dict(method="embed", teacher=None), "teacher is required"),
        (dict(method="ddl", teacher=TEACHER), "uses no teacher network"),
        (dict(method="ddl", args={"T": 4}), r"has no argument\(s\) \['T'\]"),
        (dict(method="ddl", args={"order_weight": -1}), "must be a finite number >= 0"),
        (dict(model="resnet8"), "unknown embedding network"),
        (dict(epochs=0), "epochs must be an integer >= 1"),
        (dict(n_pairs=201), "n_pairs must be even"),
        (dict(hard_size=0), "hard_size must be an integer"),
        (dict(hard="mask", hard_size=28), "hard_size must be an integer"),
        (dict(hard="blur"), "hard must be one of"),
        (dict(heldout_images=4), "heldout_images must be an integer"),
        (dict(margin=2.0), "margin must be a finite number"),
        (dict(lr=float("nan")), "lr must be a finite number"),
    ],
)
def test_bad_config_is_one_clear_error(changes, match):
    with pytest.raises(ValueError, match=match):
        tiny(**changes)


def test_bad_profile_and_bad_argument_are_clear_errors():
    with pytest.raises(ValueError, match="profile must be one of"):
        ft.face_config("fast")
    with pytest.raises(ValueError, match="run_face takes a FaceConfig"):
        ft.run_face({"model": STUDENT})
