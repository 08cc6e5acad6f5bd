"""The GAN trainer: configs and their errors, one tiny run per method on the
run engine (cache hit, bit-exact resume), what each method trains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import kdutils as kd
from kdutils import gan_train as gt


class _FakeClassifierRun:
    """A tiny, untrained classifier in place of the profile's teacher run
    (training the real one takes half a minute): the trainer only needs its
    name, key, accuracy and model."""

    name, key, test_acc = "tiny-classifier", "0" * 12, 0.1

    def load_model(self):
        torch.manual_seed(0)
        return kd.build_model("resnet8_w4-4-8-8", "fashion-mnist").eval()


@pytest.fixture(autouse=True)
def _tiny_classifier(monkeypatch):
    monkeypatch.setattr(gt, "classifier_run", lambda profile: _FakeClassifierRun())
    monkeypatch.setattr(gt, "_CLASSIFIERS", {})
    monkeypatch.setattr(gt, "_REAL_FEATS", {})


def tiny(method: str = "none", **kw) -> gt.GanConfig:
    args = dict(
        width=0.0625,
        d_width=0.0625,
        method=method,
        teacher_width=None if method == "none" else 0.125,
        epochs=2,
        batch_size=16,
        train_subset=48,
        n_eval=24,
        classifier="smoke",
    )
    args.update(kw)
    return gt.GanConfig(**args)


def _weights(res, name="generator.pt") -> dict:
    return torch.load(Path(res.path) / name, map_location="cpu", weights_only=True)


def test_trains_then_loads_from_cache(capsys):
    cfg = tiny(eval_every=1)
    res = gt.run_gan(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[done] gan-none-g0.0625-s0" in out and "[cache]" not in out
    assert len(res.history) == 2 and all(h["test"] for h in res.history)
    assert set(res.history[0]["train"]) == {"d", "adv", "g"}
    assert res.metrics["fd"] > 0 and set(res.files) == {
        "generator.pt",
        "discriminator.pt",
    }
    assert res.info["generator_params"] == kd.num_params(kd.gan.Generator(0.0625))
    assert res.info["generator_macs"] > 0
    assert res.info["classifier"]["name"] == "tiny-classifier"
    rec = json.loads((Path(res.path) / "result.json").read_text())
    assert rec["config"] == cfg.to_dict() and rec["kind"] == "gan"
    again = gt.run_gan(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[cache] gan-none-g0.0625-s0" in out and "[done]" not in out
    assert again.from_cache and again.metrics == res.metrics
    g = gt.load_generator(again)
    assert not g.training
    for k, v in g.state_dict().items():
        assert torch.equal(v, _weights(res)[k])


class _Stop(RuntimeError):
    pass


@pytest.mark.parametrize("method", ["none", "chen"])
def test_interrupted_run_resumes_to_the_same_weights(method, monkeypatch):
    cfg = tiny(method, epochs=3)
    whole = gt.run_gan(cfg, progress=False)
    expected = {n: _weights(whole, n) for n in whole.files}
    shutil.rmtree(whole.path)  # a distilled run's teacher stays cached

    real, calls = gt._Session._step, []

    def stopping(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3 + 2:  # 3 steps an epoch: stop inside epoch 2
            raise _Stop("killed")
        return real(self, *a, **kw)

    monkeypatch.setattr(gt._Session, "_step", stopping)
    with pytest.raises(_Stop):
        gt.run_gan(cfg, progress=False)
    folder = kd.appruns.app_dir(cfg, "gan", gt.GAN_VERSION)
    assert (folder / "checkpoint.pt").exists() and not (folder / "result.json").exists()
    monkeypatch.setattr(gt._Session, "_step", real)
    resumed = gt.run_gan(cfg, progress=False)
    assert not resumed.from_cache
    for name, state in expected.items():
        got = _weights(resumed, name)
        for k, v in state.items():
            assert torch.equal(got[k], v), (name, k)
    assert [h["train"] for h in resumed.history] == [h["train"] for h in whole.history]
    assert resumed.metrics == whole.metrics


def _params(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("method", ["pixel", "chen"])
def test_a_distilled_step_trains_the_student_never_the_teacher(method):
    cfg = tiny(method)
    sess = gt._Session(cfg, torch.device("cpu"))
    assert not sess.g_t.training and not sess.d_t.training
    assert not any(p.requires_grad for p in sess.g_t.parameters())
    t_before, s_before = _params(sess.g_t), _params(sess.g)
    parts = sess.train_epoch(0, torch.Generator().manual_seed(0), lambda: None)
    for k, v in _params(sess.g_t).items():
        assert torch.equal(v, t_before[k])
    assert any(not torch.equal(v, s_before[k]) for k, v in _params(sess.g).items())
    if method == "pixel":
        assert set(parts) == {"pixel", "g"} and sess.d is None
        assert "discriminator" not in sess.state
    else:
        assert set(parts) == {"d", "triplet", "adv", "pixel", "perceptual", "g"}
    assert "l1_to_teacher" in sess.evaluate()


def test_chen_generator_loss_is_its_weighted_terms(monkeypatch):
    cfg = tiny("chen", args={"pixel_weight": 2.0, "perceptual_weight": 3.0})
    sess = gt._Session(cfg, torch.device("cpu"))
    z = torch.randn(16, cfg.z_dim, generator=torch.Generator().manual_seed(1))
    parts = sess._step(sess.x[:16], z)
    expected = parts["adv"] + 2.0 * parts["pixel"] + 3.0 * parts["perceptual"]
    assert parts["g"] == pytest.approx(expected, rel=1e-5)


def test_chen_discriminator_takes_the_teachers_images_as_real(monkeypatch):
    cfg = tiny("chen", args={"triplet_weight": 0.0})
    sess = gt._Session(cfg, torch.device("cpu"))
    seen = []
    real_loss = gt.gan_d_loss

    def spy(logits_real, logits_fake):
        seen.append(logits_real.detach().clone())
        return real_loss(logits_real, logits_fake)

    monkeypatch.setattr(gt, "gan_d_loss", spy)
    z = torch.randn(16, cfg.z_dim, generator=torch.Generator().manual_seed(2))
    d_before = {k: v.clone() for k, v in sess.d.state_dict().items()}
    parts = sess._step(sess.x[:16], z)
    assert "triplet" not in parts
    with torch.no_grad():
        d = kd.gan.Discriminator(cfg.d_width)
        d.load_state_dict(d_before)
        d.train()
        expected = d(sess.g_t(z))
    torch.testing.assert_close(seen[0], expected)


def test_key_and_name_follow_the_config():
    a = tiny("chen")
    assert a.name == "gan-chen-g0.0625-t0.125-s0"
    assert (
        tiny("chen", args={"margin": 0.5}).name
        == "gan-chen-g0.0625-t0.125-margin0.5-s0"
    )
    key = kd.appruns.app_key
    assert key(a, "gan", 1) == key(tiny("chen", args={"margin": 1}), "gan", 1)
    assert key(a, "gan", 1) != key(tiny("chen", seed=1), "gan", 1)
    assert key(a, "gan", 1) == key(tiny("chen", eval_every=1), "gan", 1)
    t = gt.gan_teacher_config(tiny("pixel", teacher_epochs=5))
    assert (t.method, t.width, t.epochs, t.teacher_width) == ("none", 0.125, 5, None)
    with pytest.raises(ValueError, match="no teacher"):
        gt.gan_teacher_config(tiny())


@pytest.mark.parametrize("profile", list(gt.GAN_PROFILES))
@pytest.mark.parametrize("method", list(gt.GAN_METHODS))
def test_profiles_make_valid_configs(profile, method):
    cfg = gt.gan_config(profile, method, seed=1)
    assert cfg.method == method and cfg.seed == 1 and cfg.classifier == profile
    if method != "none":
        assert cfg.teacher_width > cfg.width
        assert gt.gan_teacher_config(cfg).width == cfg.teacher_width


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(method="gan"), "method must be one of"),
        (dict(width=0), "width"),
        (dict(width=1e-4), "at least"),
        (dict(lr=-1.0), "lr"),
        (dict(beta1=1.0), "beta1"),
        (dict(epochs=0), "epochs"),
        (dict(batch_size=1.5), "batch_size"),
        (dict(train_subset=8), "at least one batch"),
        (dict(classifier="cifar"), "classifier"),
        (dict(method="none", teacher_width=0.5), "teacher_width"),
        (dict(method="pixel", teacher_width=None), "teacher_width is required"),
        (dict(method="chen", args={"lambda": 1.0}), "no argument"),
        (dict(method="chen", args={"margin": -1.0}), ">= 0"),
        (dict(method="pixel", args={"pixel_weight": 1.0}), "takes no args"),
        (dict(teacher_epochs=3), "teacher_epochs"),
    ],
)
def test_bad_config_is_one_clear_error(changes, match):
    base = dict(method="none")
    base.update(changes)
    method = base.pop("method")
    kw = {}
    if "teacher_width" in base or method == "none":
        kw["teacher_width"] = base.pop("teacher_width", None)
    with pytest.raises(ValueError, match=match):
        tiny(method, **kw, **base)


def test_bad_profile_method_and_config_type():
    with pytest.raises(ValueError, match="profile must be one of"):
        gt.gan_config("fast")
    with pytest.raises(ValueError, match="method must be one of"):
        gt.gan_config("smoke", "kd")
    with pytest.raises(ValueError, match="GanConfig"):
        gt.run_gan(kd.make_config("smoke"))
