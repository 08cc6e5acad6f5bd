"""The language-model runs: configs, each method's terms, caching and resume
on a small fortune file the test writes itself."""

from __future__ import annotations

import dataclasses
import math
import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F

from kdutils import appruns, lm_train, text
from kdutils.lm import CharTransformer

SAYINGS = "\n%\n".join(
    f"Saying {i}: the {w} is mightier than the {v}.\n\t-- Author {i % 7}"
    for i, (w, v) in enumerate(
        [("pen", "sword"), ("cat", "dog"), ("tea", "coffee"), ("sun", "moon")] * 60
    )
)


@pytest.fixture(autouse=True)
def _fortunes(tmp_path, monkeypatch):
    """A small fortune folder as $KD_DATA_DIR/fortunes; the system folder hidden."""
    folder = tmp_path / "data" / "fortunes"
    folder.mkdir(parents=True)
    (folder / "sayings").write_text(SAYINGS + "\n")
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(text, "SYSTEM_DIR", tmp_path / "no-system-fortunes")
    lm_train._corpus.cache_clear()
    yield
    lm_train._corpus.cache_clear()


def tiny(method="none", seed=0, args=None, **kw):
    sizes = dict(
        n_layers=2,
        d_model=8,
        n_heads=2,
        context=8,
        batch_size=4,
        teacher_layers=4,
        teacher_d_model=12,
        teacher_epochs=1,
        epochs=2,
        steps_per_epoch=3,
        lr=3e-3,
        warmup=2,
        eval_chars=200,
    )
    return lm_train.lm_config("smoke", method, seed=seed, args=args, **{**sizes, **kw})


def test_trains_then_loads_from_cache(capsys):
    cfg = tiny("kd")
    first = lm_train.run_lm(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[done] lm-smoke-4x12-none-s0" in out  # the teacher, first
    assert "[done] lm-smoke-2x8-kd-s0" in out
    assert set(first.metrics) == {"val_bpc", "test_bpc"}
    assert all(0 < v < 10 for v in first.metrics.values())
    assert first.info["teacher"]["name"] == "lm-smoke-4x12-none-s0"
    assert first.info["params"] == sum(
        p.numel() for p in lm_train.build_model(cfg).parameters()
    )
    again = lm_train.run_lm(cfg, progress=False)
    assert again.from_cache and again.metrics == first.metrics
    assert "[cache] lm-smoke-2x8-kd-s0" in capsys.readouterr().out
    net = lm_train.load_model(again)
    assert isinstance(net, CharTransformer) and not net.training


def test_metrics_are_the_bits_per_character_of_the_held_out_streams():
    res = lm_train.run_lm(tiny(), progress=False)
    corpus = text.load_corpus()
    net = lm_train.load_model(res)
    with torch.no_grad():
        for split in ("val", "test"):
            ids = corpus.split(split)[:201]
            total = 0.0
            for s in range(0, 200, 8):
                w = ids[s : s + 9]
                total += F.cross_entropy(
                    net(w[None, :-1])[0], w[1:], reduction="sum"
                ).item()
            assert res.metrics[f"{split}_bpc"] == pytest.approx(
                total / 200 / math.log(2)
            )


@pytest.mark.parametrize("method", ["pkd", "lrc"])
def test_interrupted_run_resumes_to_the_same_weights(method, monkeypatch):
    cfg = tiny(method, epochs=3)
    whole = lm_train.run_lm(cfg, progress=False)
    expected = {n: whole.state_dict(n) for n in ("model.pt", "adapters.pt")}
    shutil.rmtree(whole.path)  # the teacher stays cached

    real, calls = lm_train.windows, []

    def stopping(*a, **kw):
        calls.append(1)
        if len(calls) == 3 + 2:  # 3 steps an epoch: stop inside epoch 2
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(lm_train, "windows", stopping)
    with pytest.raises(KeyboardInterrupt):
        lm_train.run_lm(cfg, progress=False)
    folder = appruns.app_dir(cfg, "lm", lm_train.LM_VERSION)
    assert (folder / "checkpoint.pt").exists() and not (folder / "result.json").exists()
    monkeypatch.setattr(lm_train, "windows", real)
    resumed = lm_train.run_lm(cfg, progress=False)
    assert not resumed.from_cache
    for name, state in expected.items():
        got = resumed.state_dict(name)
        assert got.keys() == state.keys()
        for k, v in state.items():
            assert torch.equal(got[k], v), (name, k)
    assert [h["train"] for h in resumed.history] == [h["train"] for h in whole.history]
    assert resumed.metrics == whole.metrics


def _outputs(method, **args):
    """A method's module and the outputs of a tiny student and teacher."""
    torch.manual_seed(0)
    s_net, t_net = CharTransformer(2, 8, 2, 8), CharTransformer(4, 12, 2, 8)
    t_net.requires_grad_(False).eval()
    spec = lm_train.LM_METHODS[method]
    module = spec.build(8, 12, 2, 4, **{**spec.defaults, **args})
    x = torch.randint(0, 96, (4, 8))
    y = torch.randint(0, 96, (4, 8))
    return module, s_net, s_net(x, return_all=True), t_net(x, return_all=True), y


@pytest.mark.parametrize(
    "method,progress,terms",
    [
        ("kd", 0.0, {"ce", "kd"}),
        ("pkd", 0.0, {"ce", "kd", "pt"}),
        ("tinybert", 0.2, {"att", "hidden"}),
        ("tinybert", 0.8, {"pred"}),
        ("lrc", 0.2, {"cos"}),
        ("lrc", 0.8, {"cos", "soft", "hard"}),
    ],
)
def test_each_method_gives_finite_named_terms_with_gradients_to_the_student(
    method, progress, terms
):
    module, s_net, out_s, out_t, y = _outputs(method)
    got = module(out_s, out_t, y, progress)
    assert set(got) == terms
    assert all(v.ndim == 0 and torch.isfinite(v) for v in got.values())
    sum(got.values()).backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in s_net.parameters()
    )
    assert not any(t.requires_grad for t in out_t.hidden)


def test_kd_terms_are_distilbert_weights_on_independent_losses():
    module, _, out_s, out_t, y = _outputs("kd")
    got = module(out_s, out_t, y, 0.0)
    T = 2.0
    p_t = F.softmax(out_t.logits / T, -1)
    kl = (p_t * (p_t.log() - F.log_softmax(out_s.logits / T, -1))).sum(-1).mean()
    torch.testing.assert_close(got["kd"], 5.0 * T**2 * kl)
    ce = F.cross_entropy(out_s.logits.reshape(-1, 96), y.reshape(-1))
    torch.testing.assert_close(got["ce"], 2.0 * ce)


def test_pkd_distillation_term_is_their_code_s_element_mean():
    module, _, out_s, out_t, y = _outputs("pkd")
    got = module(out_s, out_t, y, 0.0)
    T, alpha = 10.0, 0.5
    # PKD's src/KD_loss.py: nn.KLDivLoss(reduction="mean") over (positions, V) * T * T
    rows_s = F.log_softmax(out_s.logits.reshape(-1, 96) / T, -1)
    rows_t = F.softmax(out_t.logits.reshape(-1, 96) / T, -1)
    with warnings.catch_warnings():  # torch warns that "mean" is not "batchmean"
        warnings.simplefilter("ignore", UserWarning)
        their = torch.nn.KLDivLoss(reduction="mean")(rows_s, rows_t) * T * T
    torch.testing.assert_close(got["kd"], alpha * their)
    ce = F.cross_entropy(out_s.logits.reshape(-1, 96), y.reshape(-1))
    torch.testing.assert_close(got["ce"], (1 - alpha) * ce)
    # the patient term: student block 1 (projected) vs teacher block 2, unit vectors
    s = F.normalize(module.proj(out_s.hidden[1]), dim=-1)
    t = F.normalize(out_t.hidden[2], dim=-1)
    torch.testing.assert_close(got["pt"], 100.0 * ((s - t) ** 2).mean())


@pytest.mark.parametrize(
    "changes,match",
    [
        (dict(profile="huge"), "unknown profile"),
        (dict(method="fitnet"), "unknown method"),
        (dict(args={"gamma": 1.0}), "takes no argument"),
        (dict(colour="red"), "unknown LMConfig field"),
        (dict(teacher_layers=3), "must be a multiple of the student's"),
        (dict(d_model=9), "not a multiple of n_heads"),
        (dict(teacher_d_model=13), "multiple of the 2 heads"),
        (dict(epochs=0), "must be >= 1"),
    ],
)
def test_bad_config_is_one_clear_error(changes, match):
    kw = dict(profile="smoke", method="kd", seed=0, n_heads=2)
    kw.update(changes)
    with pytest.raises(ValueError, match=match):
        lm_train.lm_config(**kw)


def test_profiles_make_valid_configs_and_a_teacher():
    for profile in lm_train.LM_PROFILES:
        for method in lm_train.LM_METHODS:
            cfg = lm_train.lm_config(profile, method, seed=1)
            assert cfg.name == f"lm-{profile}-{cfg.n_layers}x{cfg.d_model}-{method}-s1"
            if method == "none":
                assert cfg.teacher_layers == 0
                with pytest.raises(ValueError, match="has no teacher"):
                    lm_train.lm_teacher_config(cfg)
                continue
            t = lm_train.lm_teacher_config(cfg)
            assert (t.method, t.seed, t.n_layers) == ("none", 0, cfg.teacher_layers)
            assert t.n_heads == cfg.n_heads and t.context == cfg.context
            assert t.n_layers > cfg.n_layers and t.d_model > cfg.d_model
    quick = lm_train.lm_config("quick", "kd")
    assert lm_train.lm_teacher_config(quick) == lm_train.lm_teacher_config(
        lm_train.lm_config("quick", "lrc", seed=3)
    )  # one teacher for every method and seed


def test_key_follows_what_is_computed():
    def key(c):
        return appruns.app_key(c, "lm", lm_train.LM_VERSION)

    base = tiny("kd")
    assert key(base) == key(dataclasses.replace(base, eval_every=1))
    assert key(base) != key(tiny("kd", args={"T": 4.0}))
    assert key(base) != key(tiny("kd", seed=1))
    assert tiny("kd", args={"T": 4.0}).method_args["T"] == 4.0
    assert tiny("kd", args={"T": 4.0}).name == "lm-smoke-2x8-kd-T4.0-s0"
    assert tiny("kd").to_dict()["args"] == {}


def test_missing_fortunes_stop_the_run_with_the_package_name(monkeypatch, tmp_path):
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "empty"))
    lm_train._corpus.cache_clear()
    with pytest.raises(text.TextUnavailable, match="apt install fortunes"):
        lm_train.run_lm(tiny(), progress=False)
