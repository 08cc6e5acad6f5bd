"""Chapter 11's pipelines: channel planting, KD-scored search, pruning + recovery."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

import kdutils as kd  # noqa: E402
from kdutils import pipelines as P  # noqa: E402
from kdutils.results import Result  # noqa: E402


def fake_runner(score):
    """A stand-in for ``kd.run`` whose accuracy is ``score(cfg)``: no training."""
    seen = []

    def runner(cfg, **_):
        seen.append(cfg)
        return Result(
            name=cfg.name,
            key="fake",
            config=cfg.to_dict(),
            history=[],
            final={"test_acc": score(cfg)},
            provenance={"wall_seconds": 1.0},
        )

    runner.seen = seen
    return runner


def widths_of(cfg) -> tuple[int, ...]:
    return tuple(int(w) for w in cfg.student.split("_w")[1].split("-"))


# ---------------------------------------------------------------- planting


def test_planting_grows_the_best_group_and_stops_when_nothing_improves(digits_config):
    # Accuracy rises with stage-3 width up to 12 channels, then falls:
    # the greedy path must grow stage 3 twice and stop in the third round.
    def score(cfg):
        w = widths_of(cfg)
        return 0.5 + 0.01 * min(w[3], 12) - 0.02 * max(w[3] - 12, 0) - 0.001 * w[1]

    runner = fake_runner(score)
    cfg = digits_config(method="kd")
    pl = P.channel_planting(
        cfg, (2, 2, 4, 4), step=4, epochs=1, max_rounds=5, runner=runner
    )
    assert [c.widths for c in pl.path] == [(2, 2, 4, 4), (2, 2, 4, 8), (2, 2, 4, 12)]
    assert len(pl.rounds) == 3 and "round 3" in pl.stopped
    # one candidate per group; the groups tie the stem to stage 1
    assert [c.widths for c in pl.rounds[0]] == [
        (6, 6, 4, 4),
        (2, 2, 8, 4),
        (2, 2, 4, 8),
    ]
    assert len(pl.candidates) == 1 + 3 * 3 == len(runner.seen)
    assert pl.final.widths == (2, 2, 4, 12) and pl.grown == [(3,), (3,)]


def test_planting_respects_min_gain_and_max_rounds(digits_config):
    runner = fake_runner(lambda cfg: 0.001 * sum(widths_of(cfg)))
    cfg = digits_config(method="kd")
    capped = P.channel_planting(cfg, (2, 2, 2, 2), step=2, max_rounds=2, runner=runner)
    assert len(capped.path) == 3 and capped.stopped == "reached max_rounds=2"
    # every growth adds at most 0.4 points here: a 1-point bar stops it at once
    strict = P.channel_planting(
        cfg, (2, 2, 2, 2), step=2, min_gain=1.0, max_rounds=3, runner=runner
    )
    assert len(strict.path) == 1 and "by more than 1 points" in strict.stopped


def test_planting_candidates_are_short_kd_runs_with_the_full_runs_teacher(
    digits_config,
):
    runner = fake_runner(lambda cfg: 0.5)
    cfg = digits_config(method="kd", epochs=4)
    P.channel_planting(cfg, (2, 2, 2, 2), epochs=1, max_rounds=1, runner=runner)
    for short in runner.seen:
        assert short.method == "kd" and short.epochs == 1 and short.eval_every == 1
        assert short.student.startswith("resnet8_w")  # depth of cfg.student
        # the same teacher run as the full-length config: one cache entry
        assert kd.teacher_config(short) == kd.teacher_config(cfg)


def test_planting_trains_real_cached_runs_and_counts_costs_exactly(digits_config):
    cfg = digits_config(method="kd")
    pl = P.channel_planting(cfg, (2, 2, 2, 2), step=2, epochs=1, max_rounds=1)
    again = P.channel_planting(cfg, (2, 2, 2, 2), step=2, epochs=1, max_rounds=1)
    assert all(c.result.from_cache for c in again.candidates)
    assert [c.acc for c in again.candidates] == [c.acc for c in pl.candidates]
    for c in pl.candidates:
        model = kd.create_model(c.name, 10, 1)
        assert c.params == kd.num_params(model)
        assert c.macs == kd.cost.count_macs(model, (1, 8, 8))
        assert c.acc == 100 * c.result.test_acc
    table = P.candidates_table(pl.candidates)
    assert list(table["student"]) == [c.name for c in pl.candidates]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(start=(2, 2, 2)), "4 positive widths"),
        (dict(start=(2, 2, 0, 2)), "4 positive widths"),
        (dict(groups=((0, 4),)), "in 0..3"),
        (dict(groups=((0, 1), (1,))), "overlap"),
        (dict(groups=((0,), ())), "non-empty"),
        (dict(step=(2, 2)), "step has 2 entries"),
        (dict(step=0), "step must be >= 1"),
        (dict(max_rounds=0), "max_rounds"),
        (dict(epochs=0), "epochs must be >= 1"),
    ],
)
def test_planting_rejects_bad_input(digits_config, kwargs, match):
    args = dict(start=(2, 2, 2, 2), runner=fake_runner(lambda cfg: 0.5))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        P.channel_planting(digits_config(method="kd"), **args)


# ---------------------------------------------------------------- search


def test_search_space_enumerates_samples_and_checks():
    space = P.SearchSpace()
    archs = space.architectures()
    assert space.size == len(archs) == 81 == len(set(archs))
    assert all(w[0] == w[1] for _, w in archs)  # the stem follows stage 1
    a, b = space.sample(10, seed=3), space.sample(10, seed=3)
    assert a == b and len(set(a)) == 10 and set(a) <= set(archs)
    assert space.sample(10, seed=4) != a
    for name in (kd.models.model_name(d, w) for d, w in archs):
        kd.models.check_model_name(name)
    with pytest.raises(ValueError, match="6n\\+2"):
        P.SearchSpace(depths=(10,))
    with pytest.raises(ValueError, match="three"):
        P.SearchSpace(stage_widths=((4,), (8,)))
    with pytest.raises(ValueError, match="1..81"):
        space.sample(82)


def test_search_scores_each_candidate_with_kd_and_the_baseline(digits_config):
    runner = fake_runner(
        lambda cfg: (0.9 if cfg.method == "kd" else 0.8) - 0.001 * sum(widths_of(cfg))
    )
    space = P.SearchSpace(depths=(8, 14), stage_widths=((2, 4), (4,), (8,)))
    cands = P.kd_search(
        digits_config(method="kd"), space, n=3, epochs=1, baseline="ce", runner=runner
    )
    assert [(c.depth, c.widths) for c in cands] == space.sample(3, seed=0)
    assert len(runner.seen) == 6
    assert {c.method for c in runner.seen} == {"kd", "ce"}
    for c in cands:
        assert c.acc == pytest.approx(90 - 0.1 * sum(c.widths))
        assert c.acc_ce == pytest.approx(80 - 0.1 * sum(c.widths))
        assert c.wall_seconds == 2.0


def test_search_with_real_runs_and_measured_latency(digits_config):
    space = P.SearchSpace(depths=(8,), stage_widths=((2, 4), (4,), (4,)))
    cands = P.kd_search(digits_config(method="kd"), space, n=2, epochs=1)
    assert all(c.latency_ms is None for c in cands)
    timed = P.with_latency(cands, repeats=3)
    # latency's form only (never its value): positive, and the rest unchanged
    assert all(c.latency_ms > 0 and c.latency_iqr_ms >= 0 for c in timed)
    assert [c.acc for c in timed] == [c.acc for c in cands]
    assert "latency_ms" in P.candidates_table(timed)


def _front_brute_force(points):
    """Indices of points that no other point dominates (cost <=, acc >=, one strict)."""
    keep = []
    for i, (ci, ai) in enumerate(points):
        dominated = any(
            (cj <= ci and aj >= ai and (cj < ci or aj > ai))
            for j, (cj, aj) in enumerate(points)
            if j != i
        )
        if not dominated:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
def test_pareto_front_matches_a_brute_force_dominance_check(seed):
    rng = np.random.default_rng(seed)
    # integer grid: ties in cost and in accuracy happen
    points = [
        (int(c), int(a))
        for c, a in zip(rng.integers(0, 8, 25), rng.integers(0, 8, 25), strict=True)
    ]
    items = [{"macs": c, "acc": a, "i": i} for i, (c, a) in enumerate(points)]
    front = P.pareto_front(items, cost="macs")
    expected = {points[i] for i in _front_brute_force(points)}
    assert {(it["macs"], it["acc"]) for it in front} == expected
    assert [it["macs"] for it in front] == sorted(it["macs"] for it in front)
    assert all(b["acc"] > a["acc"] for a, b in itertools.pairwise(front))


def test_pareto_front_needs_the_cost():
    with pytest.raises(ValueError, match="latency_ms is not set"):
        P.pareto_front([{"latency_ms": None, "acc": 1.0}], cost="latency_ms")


def test_mnas_reward_formula_and_errors():
    assert P.mnas_reward(80.0, 2.0, 2.0) == 80.0
    assert P.mnas_reward(80.0, 4.0, 2.0) == pytest.approx(80.0 * 2.0**-0.07)
    assert P.mnas_reward(80.0, 1.0, 2.0) > 80.0 > P.mnas_reward(80.0, 3.0, 2.0)
    with pytest.raises(ValueError, match="> 0"):
        P.mnas_reward(80.0, 0.0, 2.0)


# ---------------------------------------------------------------- pruning


def _trained_like(name="resnet14", seed=0) -> nn.Module:
    """A model with random, non-trivial batch-norm state (as after training)."""
    torch.manual_seed(seed)
    model = kd.create_model(name, 10, 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model.eval()


def test_l1_pruning_keeps_the_filters_of_largest_l1_norm():
    model = _trained_like()
    pruned = P.l1_filter_prune(model, 0.5)
    blocks = {f"layer{s}.{b}.conv1" for s in (1, 2, 3) for b in (0, 1)}
    assert set(pruned.pruned_channels) == blocks
    for name, idx in pruned.pruned_channels.items():
        w = model.get_submodule(name).weight.detach().numpy().astype(np.float64)
        norms = np.abs(w).reshape(w.shape[0], -1).sum(1)
        expected = np.sort(np.argsort(-norms)[: w.shape[0] - w.shape[0] // 2])
        assert idx.tolist() == expected.tolist()
        block = name.rpartition(".")[0]
        new, old = pruned.get_submodule(block), model.get_submodule(block)
        assert torch.equal(new.conv1.weight, old.conv1.weight[idx])
        assert torch.equal(new.bn1.running_var, old.bn1.running_var[idx])
        assert torch.equal(new.conv2.weight, old.conv2.weight[:, idx])
        assert new.conv2.out_channels == old.conv2.out_channels
    assert kd.num_params(pruned) < kd.num_params(model)
    # the original is untouched
    assert model.layer1[0].conv1.out_channels == 16


def test_pruning_nothing_changes_nothing_and_pruning_is_partial_on_request():
    model = _trained_like()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(P.l1_filter_prune(model, 0.0)(x), model(x))
    one = P.l1_filter_prune(model, 0.75, blocks=["layer3.1"])
    assert list(one.pruned_channels) == ["layer3.1.conv1"]
    assert (
        one.layer3[1].conv1.out_channels == 16
        and one.layer3[0].conv1.out_channels == 64
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ratio=1.0), "ratio"),
        (dict(ratio=-0.1), "ratio"),
        (dict(ratio=0.5, blocks=["layer4.0"]), "no residual block"),
    ],
)
def test_pruning_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.l1_filter_prune(_trained_like(), **kwargs)


def test_pruning_twice_and_models_without_blocks_are_refused():
    pruned = P.l1_filter_prune(_trained_like(), 0.5)
    with pytest.raises(ValueError, match="already pruned"):
        P.l1_filter_prune(pruned, 0.5, blocks=["layer1.0"])
    with pytest.raises(ValueError, match="no residual blocks"):
        P.l1_filter_prune(nn.Sequential(nn.Conv2d(1, 4, 3)), 0.5)
    with pytest.raises(ValueError, match="pruned_channels"):
        P.insert_pointwise(_trained_like())


def test_pointwise_starts_as_identity_and_merges_exactly():
    pruned = P.l1_filter_prune(_trained_like(), 0.5).double()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    with_pw = P.insert_pointwise(pruned)
    torch.testing.assert_close(with_pw(x), pruned(x))
    # any 1x1 weights: the merged network computes the same function
    g = torch.Generator().manual_seed(0)
    for m in with_pw.modules():
        if isinstance(m, P.ConvPointwise):
            m.pw.weight.data = torch.randn(m.pw.weight.shape, generator=g).double()
    merged = P.absorb_pointwise(with_pw)
    assert not any(isinstance(m, P.ConvPointwise) for m in merged.modules())
    assert kd.num_params(merged) == kd.num_params(pruned)
    torch.testing.assert_close(merged(x), with_pw(x))
    with pytest.raises(ValueError, match="already has 1x1"):
        P.insert_pointwise(with_pw)


def test_conv_pointwise_checks_its_targets():
    with pytest.raises(ValueError, match="one index per output channel"):
        P.ConvPointwise(nn.Conv2d(2, 4, 3, bias=False), torch.arange(3))
    with pytest.raises(ValueError, match="without bias"):
        P.ConvPointwise(nn.Conv2d(2, 4, 3), torch.arange(4))


def _digits(n=64):
    return kd.data.load("digits", train=True).subset(n)


def test_fskd_least_squares_solves_each_layer_as_an_independent_lstsq():
    teacher = _trained_like()
    student = P.insert_pointwise(P.l1_filter_prune(teacher, 0.5)).eval()
    data = _digits()
    fitted = P.fskd_least_squares(student, teacher, data, batch_size=20)
    x = kd.data.normalize(data.images, data.info)

    def rows(model, layer):
        with kd.capture(model, [layer]) as f, torch.no_grad():
            model(x)
        f = f[layer].double()
        return f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]).numpy()

    # The first pruned conv sees the teacher's own input: its fit is the identity.
    q0 = fitted.layer1[0].conv1.pw.weight.detach()[:, :, 0, 0].double().numpy()
    np.testing.assert_allclose(q0, np.eye(q0.shape[0]), atol=1e-5)
    # Every layer: numpy's least squares on the fitted network's own inputs.
    for name in ("layer1.0.conv2", "layer2.1.conv1", "layer3.1.conv2"):
        m = fitted.get_submodule(name)
        xs = rows(fitted, f"{name}.conv")
        yt = rows(teacher, name)[:, m.target_channels.numpy()]
        expected = np.linalg.lstsq(xs, yt, rcond=None)[0].T
        got = m.pw.weight.detach()[:, :, 0, 0].double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # the fit never increases a layer's squared error to the teacher
    for name in ("layer2.0.conv2", "layer3.0.conv1"):
        m = fitted.get_submodule(name)
        xs = rows(fitted, f"{name}.conv")
        yt = rows(teacher, name)[:, m.target_channels.numpy()]
        q = m.pw.weight.detach()[:, :, 0, 0].double().numpy()
        assert ((xs @ q.T - yt) ** 2).sum() <= ((xs - yt) ** 2).sum() + 1e-6
    with pytest.raises(ValueError, match="insert_pointwise"):
        P.fskd_least_squares(P.l1_filter_prune(teacher, 0.5), teacher, data)


def test_recover_trains_only_the_pointwise_convolutions(digits_config):
    cfg = digits_config(method="kd")
    teacher = _trained_like("resnet8")
    student = P.insert_pointwise(P.l1_filter_prune(teacher, 0.5))
    data, test = _digits(100), kd.data.load("digits", train=False).subset(50)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    for method, t in (("kd", teacher), ("ce", None)):
        fitted, history = P.recover(student, t, data, test, cfg, method, epochs=2)
        assert len(history) == 2 and history[-1]["test_acc"] is not None
        assert f"train_{method}" in history[-1]
        after = fitted.state_dict()
        for k, v in before.items():
            if k.endswith("pw.weight"):
                assert not torch.equal(after[k], v), k
            elif "weight" in k or k.endswith("bias"):
                assert torch.equal(after[k], v), k
        assert all(p.requires_grad for p in fitted.parameters())
    assert torch.equal(student.state_dict()["fc.weight"], before["fc.weight"])
    fitted, _ = P.recover(student, teacher, data, test, cfg, trainable="all", epochs=1)
    assert not torch.equal(fitted.fc.weight, before["fc.weight"])
    with pytest.raises(ValueError, match="trainable"):
        P.recover(student, teacher, data, test, cfg, trainable="bn")
    with pytest.raises(ValueError, match="insert_pointwise"):
        P.recover(P.l1_filter_prune(teacher, 0.5), teacher, data, test, cfg)


def test_prune_and_recover_reports_every_stage_at_its_cost(digits_config):
    cfg = digits_config(method="kd")
    teacher = kd.run(kd.teacher_config(cfg), progress=False).load_model()
    rows, models = P.prune_and_recover(teacher, cfg, ratio=0.5, n_samples=60, epochs=2)
    assert [r["stage"] for r in rows] == [
        "unpruned",
        "pruned",
        "least squares (FSKD)",
        "KD",
        "labels only",
    ]
    test = kd.loop.load_split(cfg, False)
    assert rows[0]["acc"] == 100 * kd.evaluate(teacher, test)["acc"]
    assert rows[0]["params"] == kd.num_params(teacher)
    pruned_cost = {(r["params"], r["macs"]) for r in rows[1:]}
    assert len(pruned_cost) == 1  # the 1x1 convolutions merged away
    params, macs = pruned_cost.pop()
    assert params < rows[0]["params"] and macs < rows[0]["macs"]
    for r in rows:
        assert r["macs"] == kd.cost.count_macs(models[r["stage"]], (1, 8, 8))
    with pytest.raises(ValueError, match="n_samples"):
        P.prune_and_recover(teacher, cfg, n_samples=10_000)


# ---------------------------------------------------------------- plots


def test_compression_figures(digits_config):
    runner = fake_runner(lambda cfg: 0.001 * sum(widths_of(cfg)))
    cfg = digits_config(method="kd")
    pl = P.channel_planting(cfg, (2, 2, 2, 2), step=2, max_rounds=2, runner=runner)
    fig = kd.plots.planting_path(pl)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == len(pl.path)
    cands = P.kd_search(cfg, n=4, epochs=1, baseline="ce", runner=runner)
    with pytest.raises(ValueError, match="latency_ms"):
        kd.plots.search_front(cands)
    fig = kd.plots.search_front(P.with_latency(cands, repeats=3))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    rows = [
        {"stage": "unpruned", "acc": 90.0, "params": 4000, "macs": 8e5},
        {"stage": "pruned", "acc": 30.0, "params": 2000, "macs": 4e5},
        {"stage": "KD", "acc": 80.0, "params": 2000, "macs": 4e5},
    ]
    fig = kd.plots.pruning_stages(rows)
    assert len(fig.axes[0].patches) == 3
    fig = kd.plots.accuracy_vs_cost({"planting": pl.candidates, "pruning": rows})
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="cost must be"):
        kd.plots.accuracy_vs_cost({"a": rows}, cost="flops")
