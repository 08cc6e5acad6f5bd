"""Chapter 12, distilling into small networks: ESKD, DGKD and the TAKD/DGKD pipelines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import kdutils as kd
from kdutils.distillers.small import ESKD
from kdutils.runs import run_id

CLASSES = 10


def _models(*names, seed=0):
    torch.manual_seed(seed)
    return [kd.create_model(n, num_classes=CLASSES, in_channels=3) for n in names]


def _batch(seed=0, b=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 16, 16, generator=g), torch.randint(
        0, CLASSES, (b,), generator=g
    )


def _log_softmax(z):
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def _ce_np(s, y):
    return -_log_softmax(s)[np.arange(len(y)), y].mean()


def _kl_np(s, t, T):
    """T^2 * mean over samples of sum over classes p_t (log p_t - log p_s), float64."""
    ls, lt = _log_softmax(s / T), _log_softmax(t / T)
    return T**2 * (np.exp(lt) * (lt - ls)).sum(1).mean()


def _np(t):
    return t.detach().double().numpy()


# ESKD


def test_eskd_switch_off_epoch():
    assert [ESKD.kd_epochs(s, 8) for s in (0, 0.25, 0.5, 0.75, 1)] == [0, 2, 4, 6, 8]
    # e < stop * E: 0.5 of 3 epochs is 1.5, so epochs 0 and 1 use KD
    assert ESKD.kd_epochs(0.5, 3) == 2
    # 0.3 * 10 is 3.0000000000000004 in floating point: still 3 epochs
    assert ESKD.kd_epochs(0.3, 10) == 3
    student, teacher = _models("resnet8", "resnet14")
    d = kd.build("eskd", student, teacher, stop=0.25)
    on = []
    for e in range(8):
        d.on_epoch(e, 8)
        on.append(d.kd_on)
    assert on == [True, True] + [False] * 6


def test_eskd_terms_before_and_after_the_stop():
    student, teacher = _models("resnet8", "resnet14")
    d = kd.build("eskd", student, teacher, T=3.0, ce_weight=0.2, kd_weight=0.7)
    d.train()
    x, y = _batch()
    d.on_epoch(0, 4)
    logits_s, terms = d(x, y)
    with torch.no_grad():
        logits_t = teacher(x)
    s, t = _np(logits_s), _np(logits_t)
    assert terms["ce"].item() == pytest.approx(0.2 * _ce_np(s, y.numpy()), rel=1e-5)
    assert terms["kd"].item() == pytest.approx(0.7 * _kl_np(s, t, 3.0), rel=1e-4)
    d.on_epoch(2, 4)  # stop=0.5 of 4 epochs: epochs 2 and 3 are labels only
    logits_s, terms = d(x, y)
    assert terms["kd"].item() == 0.0 and not terms["kd"].requires_grad
    # the full cross-entropy, not the 0.2-weighted one
    assert terms["ce"].item() == pytest.approx(
        _ce_np(_np(logits_s), y.numpy()), rel=1e-5
    )


def test_eskd_does_not_run_the_teacher_after_the_stop():
    student, teacher = _models("resnet8", "resnet14")
    d = kd.build("eskd", student, teacher, stop=0.5)
    calls = []
    teacher.register_forward_hook(lambda *a: calls.append(1))
    x, y = _batch()
    d.on_epoch(1, 2)
    d(x, y)
    assert calls == []


@pytest.mark.parametrize("stop", [-0.1, 1.5])
def test_eskd_rejects_a_stop_outside_0_1(stop):
    student, teacher = _models("resnet8", "resnet14")
    with pytest.raises(ValueError, match="stop"):
        kd.build("eskd", student, teacher, stop=stop)


def test_eskd_run_history_shows_the_switch_off(digits_config):
    res = kd.run(digits_config(method="eskd", stop=0.5, epochs=4), progress=False)
    kd_terms = [h["train_kd"] for h in res.history]
    assert all(v > 0 for v in kd_terms[:2]) and kd_terms[2:] == [0.0, 0.0]


def test_eskd_limits_are_ce_and_kd(digits_config):
    """stop=0 trains exactly like ``ce`` and stop=1 exactly like ``kd``."""
    ce = kd.run(digits_config(method="ce"), progress=False)
    kd_run = kd.run(digits_config(method="kd"), progress=False)
    e0 = kd.run(digits_config(method="eskd", stop=0.0), progress=False)
    e1 = kd.run(digits_config(method="eskd", stop=1.0), progress=False)
    assert e0.test_acc == ce.test_acc and e1.test_acc == kd_run.test_acc
    torch.testing.assert_close(
        e0.load_model().state_dict(), ce.load_model().state_dict(), rtol=0, atol=0
    )
    torch.testing.assert_close(
        e1.load_model().state_dict(), kd_run.load_model().state_dict(), rtol=0, atol=0
    )


# DGKD


def _dgkd(drop_num=1, n_guides=3, **kw):
    student, *guides = _models("resnet8", *["resnet14"] * n_guides)
    for i, g in enumerate(guides):  # different guides: perturb their classifiers
        with torch.no_grad():
            g.fc.bias.add_(float(i))
    return kd.build(
        "dgkd", student, nn.ModuleList(guides), drop_num=drop_num, **kw
    ), guides


@pytest.mark.parametrize("n_guides, drop_num", [(3, 1), (3, 2), (4, 1), (2, 1)])
def test_dgkd_drops_exactly_drop_num_guides(n_guides, drop_num):
    d, _ = _dgkd(drop_num, n_guides)
    torch.manual_seed(0)
    draws = [tuple(d.draw_kept()) for _ in range(3000)]
    assert all(len(k) == n_guides - drop_num for k in draws)
    assert all(list(k) == sorted(set(k)) for k in draws)
    # uniform: every guide is dropped with probability drop_num / n_guides
    dropped = np.array([[i not in k for i in range(n_guides)] for k in draws]).mean(0)
    np.testing.assert_allclose(dropped, drop_num / n_guides, atol=0.04)
    # every subset of the right size occurs
    from math import comb

    assert len(set(draws)) == comb(n_guides, drop_num)


def test_dgkd_draws_are_seeded_by_the_global_generator():
    d, _ = _dgkd(1, 3)
    torch.manual_seed(7)
    first = [d.draw_kept() for _ in range(20)]
    torch.manual_seed(7)
    assert [d.draw_kept() for _ in range(20)] == first
    # ... and they are the guides that torch.randperm leaves after drop_num
    torch.manual_seed(7)
    expected = [sorted(torch.randperm(3)[1:].tolist()) for _ in range(20)]
    assert first == expected


@pytest.mark.parametrize("drop_num", [3, 5])
def test_dgkd_always_keeps_at_least_one_guide(drop_num):
    d, _ = _dgkd(drop_num, 3)
    torch.manual_seed(0)
    assert all(len(d.draw_kept()) == 1 for _ in range(50))


def test_dgkd_with_one_guide_is_kd():
    student, teacher = _models("resnet8", "resnet14")
    d = kd.build("dgkd", student, teacher, drop_num=1)
    ref = kd.build("kd", student, teacher)
    x, y = _batch()
    state = {k: v.clone() for k, v in student.state_dict().items()}
    _, terms = d(x, y)
    student.load_state_dict(state)
    _, ref_terms = ref(x, y)
    assert d.last_kept == [0]
    for k in ("ce", "kd"):
        torch.testing.assert_close(terms[k], ref_terms[k], rtol=0, atol=0)


def test_dgkd_loss_is_the_sum_over_kept_guides():
    d, guides = _dgkd(1, 3, T=3.0, ce_weight=0.3, kd_weight=0.6)
    x, y = _batch(1)
    torch.manual_seed(3)
    logits_s, terms = d(x, y)
    kept = d.last_kept
    assert len(kept) == 2
    with torch.no_grad():
        t = [_np(g(x)) for g in guides]
    s = _np(logits_s)
    expected = 0.6 * sum(_kl_np(s, t[i], 3.0) for i in kept)
    assert terms["kd"].item() == pytest.approx(expected, rel=1e-4)
    assert terms["ce"].item() == pytest.approx(0.3 * _ce_np(s, y.numpy()), rel=1e-5)


def test_dgkd_runs_only_the_kept_guides_and_precomputed_logits_agree():
    d, guides = _dgkd(1, 3)
    calls = []
    for i, g in enumerate(guides):
        g.register_forward_hook(lambda *a, i=i: calls.append(i))
    x, y = _batch(2)
    state = {k: v.clone() for k, v in d.student.state_dict().items()}
    torch.manual_seed(5)
    _, live = d(x, y)
    assert sorted(calls) == d.last_kept
    t_out = d.teacher_outputs(x)
    assert t_out["logits"].shape == (3, 8, CLASSES)
    d.student.load_state_dict(state)
    torch.manual_seed(5)
    _, cached = d(x, y, teacher_out=t_out)
    for k in live:
        torch.testing.assert_close(live[k], cached[k], rtol=1e-6, atol=1e-7)


def test_dgkd_bad_input():
    d, _ = _dgkd(1, 3)
    x, y = _batch()
    with pytest.raises(ValueError, match="2 guides' logits"):
        d(x, y, teacher_out={"logits": torch.zeros(2, 8, CLASSES)})
    student, teacher = _models("resnet8", "resnet14")
    for bad in (-1, 1.5):
        with pytest.raises(ValueError, match="drop_num"):
            kd.build("dgkd", student, teacher, drop_num=bad)
    with pytest.raises(ValueError, match="T"):
        kd.build("dgkd", student, teacher, T=0)
    with pytest.raises(ValueError, match="kd_weight"):
        kd.build("dgkd", student, teacher, kd_weight=-1.0)


def test_dgkd_guides_stay_frozen_and_in_eval_mode():
    d, guides = _dgkd(1, 3)
    d.train()
    assert not any(m.training for g in guides for m in g.modules())
    x, y = _batch()
    _, terms = d(x, y)
    sum(terms.values()).backward()
    assert all(
        p.grad is None and not p.requires_grad for g in guides for p in g.parameters()
    )


# The pipelines


def test_takd_wiring_the_student_learns_from_the_distilled_assistant(
    digits_config, capsys
):
    cfg = digits_config(method="kd", teacher="resnet20", student="resnet8")
    teacher, assistant, student = kd.pipelines.takd(cfg, ["resnet14"], progress=False)
    assert teacher.config["method"] == "ce" and teacher.config["student"] == "resnet20"
    assert assistant.config["student"] == "resnet14"
    assert assistant.teacher["key"] == teacher.key
    assert assistant.config["seed"] == cfg.teacher_seed
    assert assistant.config["eval_every"] == cfg.epochs
    # the student's teacher is the distilled assistant, not a resnet14 trained alone
    assert student.teacher["key"] == assistant.key
    assert student.config["teacher_runs"] == [run_id(assistant)]
    assert student.config["student"] == "resnet8" and student.config["seed"] == cfg.seed
    out = capsys.readouterr().out
    assert "[takd] stage 3/3 student resnet8 from resnet14" in out
    assert "[takd] all stages:" in out
    # a second call comes from the cache, and the first assistant is a plain run
    # of that pair: the same run as cfg with the assistant as the student
    again = kd.pipelines.takd(cfg, ["resnet14"], progress=False)
    assert all(r.from_cache for r in again)
    plain = kd.run(
        cfg.replace(student="resnet14", eval_every=cfg.epochs), progress=False
    )
    assert plain.from_cache and plain.key == assistant.key


def test_takd_with_two_assistants_chains_them(digits_config):
    cfg = digits_config(method="kd", teacher="resnet32", student="resnet8", epochs=1)
    chain = kd.pipelines.takd(cfg, ["resnet20", "resnet14"], progress=False)
    assert [r.config["student"] for r in chain] == [
        "resnet32",
        "resnet20",
        "resnet14",
        "resnet8",
    ]
    for prev, nxt in zip(chain, chain[1:], strict=False):
        assert nxt.teacher["key"] == prev.key


def test_takd_without_assistants_is_plain_kd(digits_config):
    cfg = digits_config(method="kd")
    teacher, student = kd.pipelines.takd(cfg, [], progress=False)
    assert student.key == kd.run(cfg, progress=False).key


def test_dgkd_pipeline_wiring(digits_config):
    cfg = digits_config(method="dgkd", teacher="resnet32", student="resnet8", epochs=1)
    teacher, a1, a2, student = kd.pipelines.dgkd(
        cfg, ["resnet20", "resnet14"], progress=False
    )
    # one guide: the first assistant is a kd run, shared with takd's
    assert a1.config["method"] == "kd" and a1.teacher["key"] == teacher.key
    takd_chain = kd.pipelines.takd(
        cfg.replace(method="kd"), ["resnet20"], progress=False
    )
    assert takd_chain[1].key == a1.key and takd_chain[1].from_cache
    # later models learn from every larger one, largest first
    assert a2.config["method"] == "dgkd"
    assert [t["key"] for t in a2.teacher] == [teacher.key, a1.key]
    assert [t["key"] for t in student.teacher] == [teacher.key, a1.key, a2.key]
    assert student.config["teacher_runs"] == [run_id(r) for r in (teacher, a1, a2)]


def test_pipelines_reject_bad_chains(digits_config):
    cfg = digits_config(method="kd", teacher="resnet20", student="resnet8")
    with pytest.raises(ValueError, match=r"resnet32 \(.*\) follows resnet20"):
        kd.pipelines.takd(cfg, ["resnet32"])
    with pytest.raises(ValueError, match="resnet8 .* follows resnet8"):
        kd.pipelines.takd(cfg, ["resnet8"])
    with pytest.raises(ValueError, match="unknown model"):
        kd.pipelines.takd(cfg, ["resnet15"])
    with pytest.raises(ValueError, match="sequence of model names"):
        kd.pipelines.takd(cfg, "resnet14")
    with pytest.raises(ValueError, match="teacher_runs"):
        kd.pipelines.takd(cfg.replace(teacher_runs=("x",)), ["resnet14"])
    with pytest.raises(ValueError, match="no teacher"):
        kd.pipelines.takd(digits_config(method="ce"), ["resnet14"])
    with pytest.raises(ValueError, match="method='dgkd'"):
        kd.pipelines.dgkd(cfg, ["resnet14"])


def test_chain_sizes_lists_parameters():
    cfg = kd.make_config("smoke", method="kd", teacher="resnet20")
    sizes = kd.pipelines.chain_sizes(cfg, ["resnet14"])
    assert [n for n, _ in sizes] == ["resnet20", "resnet14", "resnet8"]
    ps = [p for _, p in sizes]
    assert ps == sorted(ps, reverse=True)
    assert ps[-1] == kd.num_params(kd.create_model("resnet8", 10, 1))


# Figures


def test_chapter_12_figures_draw_their_data():
    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd
    from matplotlib.figure import Figure

    gap = pd.DataFrame(
        dict(
            route=["KD", "KD", "TAKD"],
            teacher=["resnet14", "resnet32", "resnet32"],
            gap=[2.25, 6.0, 6.0],
            teacher_acc=[88.0, 89.0, 89.0],
            acc_mean=[87.0, 87.5, 87.8],
            acc_std=[0.2, 0.3, float("nan")],
        )
    )
    fig = kd.plots.gap_curve(gap, student_alone=86.5)
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].get_xticks()) == 2  # one tick per gap
    sweep = pd.DataFrame(
        dict(
            stop=[0.0, 0.5, 1.0],
            acc_mean=[86, 87, 88],
            acc_std=[0.1, 0.0, 0.2],
            seeds=[2, 1, 2],
        )
    )
    fig = kd.plots.stop_sweep(sweep, reference={"teacher": 89.0})
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0].startswith("0") and "alone" in labels[0] and "KD" in labels[-1]
    fig = kd.plots.guide_drops([[0], [1], [0, 1]], ["teacher", "assistant"])
    grid = fig.axes[0].get_images()[0].get_array()
    np.testing.assert_array_equal(grid, [[1, 0, 1], [0, 1, 1]])
    table = pd.DataFrame(
        dict(
            label=["teacher", "student: kd", "student: ce"],
            macs=[3e7, 1e7, 1e7],
            latency_ms=[3.0, 1.0, 1.0],
            acc_mean=[89.0, 87.0, 86.0],
            acc_std=[float("nan"), 0.3, 0.2],
        )
    )
    fig = kd.plots.ladder_costs(table)
    assert len(fig.axes) == 2
    # the two students share one architecture: spread apart, never on top
    xs = [c.get_children()[0].get_xdata()[0] for c in fig.axes[0].containers]
    assert len(set(xs)) == 3
