"""Chapter 3 (survey 2.2.1): the feature-fitting losses against independent
float64 computations of their reference definitions, the connectors, and the
FitNet, SSKD, AB, FT and VID distillers (stages, schedules, resuming)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from training_stops import interrupt as _interrupt

import kdutils as kd
from kdutils import losses
from kdutils import runs as kruns
from kdutils.config import teacher_config
from kdutils.distillers import fitting, fitting_added

CHANNELS, SIZE, CLASSES = 3, 16, 10


def _feats(seed: int, shape=(4, 3, 5, 5), scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    a = scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    b = scale * torch.randn(*shape, generator=g, dtype=torch.float64)
    return a, b


def _models(student="resnet8", teacher="resnet14", seed=0):
    torch.manual_seed(seed)
    s = kd.create_model(student, num_classes=CLASSES, in_channels=CHANNELS)
    t = kd.create_model(teacher, num_classes=CLASSES, in_channels=CHANNELS)
    return s, t


def _data(n: int = 32, seed: int = 1) -> kd.data.TensorData:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, CHANNELS, SIZE, SIZE), generator=g)
    return kd.data.TensorData(
        images.to(torch.uint8), torch.arange(n) % CLASSES, "cifar10"
    )


def _batch(seed: int = 0, b: int = 8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, CHANNELS, SIZE, SIZE, generator=g), torch.arange(b) % CLASSES


def _built(name, student="resnet8", teacher="resnet14", **hparams):
    s, t = _models(student, teacher)
    d = kd.build(name, s, t, **hparams)
    d.setup(_data())
    return d, s, t


def _loader(data=None, batch_size=8):
    return kd.data.Loader(data or _data(), batch_size, shuffle=True, seed=0)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before, module, prefix: str) -> bool:
    after = module.state_dict()
    keys = [k for k in before if k.startswith(prefix)]
    assert keys, prefix
    return any(not torch.equal(before[k], after[k]) for k in keys)


# hint_loss


@pytest.mark.parametrize("seed", range(3))
def test_hint_loss_is_the_mean_squared_error_over_all_elements(seed):
    s, t = _feats(seed)
    expected = np.mean((s.numpy() - t.numpy()) ** 2)
    assert losses.hint_loss(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_hint_loss_is_zero_for_equal_maps_and_a_mean_not_a_sum():
    s, t = _feats(3)
    assert losses.hint_loss(s, s.clone()).item() == 0.0
    twice = losses.hint_loss(torch.cat([s, s]), torch.cat([t, t]))
    torch.testing.assert_close(twice, losses.hint_loss(s, t))


def test_hint_loss_refuses_to_broadcast():
    s, _ = _feats(0, (4, 3, 5, 5))
    _, t = _feats(0, (4, 1, 5, 5))
    with pytest.raises(ValueError, match=r"\(4, 3, 5, 5\).*\(4, 1, 5, 5\)"):
        losses.hint_loss(s, t)


# ab_loss


def _ab_reference(feats_s, feats_t, margin):
    """The authors' margin loss with explicit loops over every element, float64."""
    n = len(feats_s)
    total = 0.0
    for i, (s, t) in enumerate(zip(feats_s, feats_t, strict=True)):
        s, t = s.numpy(), t.numpy()
        acc = 0.0
        for idx in itertools.product(*map(range, s.shape)):
            a, b = float(s[idx]), float(t[idx])
            if b <= 0 and a > -margin:
                acc += (a + margin) ** 2
            elif b > 0 and a <= margin:
                acc += (a - margin) ** 2
        total += 2.0 ** (i - n + 1) * acc / s.shape[0]
    return total * 3 / 1000


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
def test_ab_loss_matches_the_elementwise_definition(margin):
    pairs = [_feats(k, (2, 2, 3, 3), scale=1.5) for k in range(3)]
    feats_s, feats_t = [p[0] for p in pairs], [p[1] for p in pairs]
    got = losses.ab_loss(feats_s, feats_t, margin)
    assert got.item() == pytest.approx(
        _ab_reference(feats_s, feats_t, margin), rel=1e-12
    )


def test_ab_loss_is_zero_once_the_student_clears_the_margin_on_the_right_side():
    _, t = _feats(1, (2, 3, 4, 4))
    s = torch.where(t > 0, 1.0 + t.abs(), -1.0 - t.abs())  # beyond +-1, same side
    assert losses.ab_loss([s], [t], margin=1.0).item() == 0.0
    # ... and positive as soon as one neuron is on the wrong side.
    s[0, 0, 0, 0] = -s[0, 0, 0, 0]
    assert losses.ab_loss([s], [t], margin=1.0).item() > 0


def test_ab_loss_weights_the_deepest_pair_most():
    s, t = _feats(2, (2, 2, 3, 3))
    one = losses.ab_loss([s], [t])
    # The same pair, placed first of two (weight 1/2) with a zero-loss pair.
    clear = torch.ones(2, 2, 3, 3, dtype=torch.float64) * 5
    two = losses.ab_loss([s, clear], [t, clear])
    torch.testing.assert_close(two, one / 2)


def test_ab_loss_bad_input():
    s, t = _feats(0, (2, 2, 3, 3))
    with pytest.raises(ValueError, match="equally many"):
        losses.ab_loss([s, s], [t])
    with pytest.raises(ValueError, match="pair 0"):
        losses.ab_loss([s], [t[:, :1]])
    with pytest.raises(ValueError, match="margin"):
        losses.ab_loss([s], [t], margin=-1.0)


# ft_loss


@pytest.mark.parametrize("seed", range(3))
def test_ft_loss_is_the_l1_mean_of_l2_normalised_flat_factors(seed):
    s, t = _feats(seed, (3, 4, 2, 2))
    fs = s.numpy().reshape(3, -1)
    ft = t.numpy().reshape(3, -1)
    fs = fs / np.linalg.norm(fs, axis=1, keepdims=True)
    ft = ft / np.linalg.norm(ft, axis=1, keepdims=True)
    expected = np.abs(fs - ft).mean()
    assert losses.ft_loss(s, t).item() == pytest.approx(expected, rel=1e-12)


def test_ft_loss_ignores_each_samples_scale_and_refuses_other_shapes():
    s, t = _feats(4, (3, 4, 2, 2))
    scale = torch.tensor([0.1, 3.0, 50.0], dtype=torch.float64).view(3, 1, 1, 1)
    torch.testing.assert_close(losses.ft_loss(s * scale, t), losses.ft_loss(s, t))
    assert losses.ft_loss(t * scale, t).item() == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="ft_loss"):
        losses.ft_loss(s, t[:, :, :1])


# vid_loss


def test_vid_loss_is_the_gaussian_nll_without_its_constant():
    mu, t = _feats(5, (2, 3, 4, 4))
    var = torch.tensor([0.5, 2.0, 5.0], dtype=torch.float64)
    m, tt, v = mu.numpy(), t.numpy(), var.numpy()
    expected = np.mean(
        [
            0.5 * ((m[b, c, h, w] - tt[b, c, h, w]) ** 2 / v[c] + math.log(v[c]))
            for b, c, h, w in itertools.product(range(2), range(3), range(4), range(4))
        ]
    )
    assert losses.vid_loss(mu, t, var).item() == pytest.approx(expected, rel=1e-12)


def test_vid_loss_variance_is_optimal_at_the_mean_squared_error():
    mu, t = _feats(6, (4, 1, 3, 3))
    mse = ((mu - t) ** 2).mean()
    best = losses.vid_loss(mu, t, mse.view(1))
    for f in (0.5, 0.9, 1.1, 2.0):
        assert losses.vid_loss(mu, t, (f * mse).view(1)) > best


def test_vid_loss_needs_one_variance_per_channel():
    mu, t = _feats(0, (2, 3, 4, 4))
    with pytest.raises(ValueError, match="one entry per channel"):
        losses.vid_loss(mu, t, torch.ones(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="vid_loss"):
        losses.vid_loss(mu[:, :2], t, torch.ones(3, dtype=torch.float64))


# Connectors and the forward pass that stops early


@pytest.mark.parametrize(
    "s_shape, t_shape, kind",
    [
        ((16, 8, 8), (64, 8, 8), torch.nn.Conv2d),
        ((16, 8, 8), (32, 4, 4), torch.nn.Conv2d),
        ((16, 4, 4), (32, 8, 8), torch.nn.ConvTranspose2d),
        ((16, 6, 6), (8, 4, 4), torch.nn.Conv2d),
    ],
)
def test_conv_regressor_maps_student_shape_to_teacher_shape(s_shape, t_shape, kind):
    reg = fitting.conv_regressor(s_shape, t_shape)
    assert isinstance(reg[0], kind)
    assert isinstance(reg[-1], torch.nn.ReLU)
    out = reg(torch.randn(2, *s_shape))
    assert out.shape == (2, *t_shape)
    assert not isinstance(
        fitting.conv_regressor(s_shape, t_shape, relu=False)[-1], torch.nn.ReLU
    )


def test_conv_regressor_names_layers_and_shapes_when_it_cannot_map():
    with pytest.raises(ValueError, match=r"student layer1 \(16, 2, 2\).*\(32, 8, 8\)"):
        fitting.conv_regressor(
            (16, 2, 2), (32, 8, 8), names=("student layer1", "teacher layer2")
        )


def test_forward_until_stops_before_the_later_layers():
    s, _ = _models()
    s.train()
    before = _snapshot(s)
    x, _ = _batch()
    feats = fitting.forward_until(s, ["layer1", "layer2"], x)
    assert set(feats) == {"layer1", "layer2"}
    with torch.no_grad():
        with kd.capture(s, ["layer2"]) as ref:
            s.eval()(x)
    assert feats["layer2"].shape == ref["layer2"].shape
    after = s.state_dict()
    # layer2's batch norm saw the batch; layer3's never ran.
    assert not torch.equal(
        before["layer2.0.bn1.running_mean"], after["layer2.0.bn1.running_mean"]
    )
    assert torch.equal(
        before["layer3.0.bn1.running_mean"], after["layer3.0.bn1.running_mean"]
    )


# FitNet


def test_fitnet_defaults_are_table_1s_joint_form():
    d, _, _ = _built("fitnet")
    assert d.hparams() == dict(
        hint_layer="layer2",
        hint_weight=100.0,
        ce_weight=1.0,
        kd_weight=0.0,
        T=4.0,
        init_epochs=0,
        init_lr=0.05,
    )
    assert d.teacher_layers == ("layer2",)


def test_fitnet_terms_are_ce_and_100_times_the_regressed_hint():
    d, s, t = _built("fitnet")
    d.train()  # batch norm uses batch statistics: the forwards below agree
    x, y = _batch()
    _, terms = d(x, y)
    with torch.no_grad():
        with kd.capture(t, ["layer2"]) as ft:
            t(x)
    with kd.capture(s, ["layer2"]) as fs:
        logits = s(x)
    hint = torch.nn.functional.mse_loss(d.regressor(fs["layer2"]), ft["layer2"])
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert set(terms) == {"ce", "hint"}
    assert terms["hint"].item() == pytest.approx(100 * hint.item(), rel=1e-5)
    assert terms["ce"].item() == pytest.approx(ce.item(), rel=1e-5)


def test_fitnet_builds_a_regressor_for_a_wider_teacher():
    d, s, _ = _built("fitnet", teacher="resnet8x4")
    x, y = _batch()
    _, terms = d.train()(x, y)
    assert torch.isfinite(terms["hint"])
    assert d.regressor[0].out_channels == 128 and d.regressor[0].in_channels == 32


def test_fitnet_two_stage_trains_only_up_to_the_guided_layer_first(capsys):
    d, s, _ = _built(
        "fitnet", init_epochs=2, hint_weight=0.0, ce_weight=0.1, kd_weight=0.9
    )
    assert d.teacher_layers == ()  # the second stage reads only logits
    before = _snapshot(d)
    d.prepare(_loader())
    assert "[prepare] fitnet hint stage: 2 epoch(s)" in capsys.readouterr().out
    for prefix in ("student.stem", "student.layer1", "student.layer2", "regressor"):
        assert _changed(before, d, prefix), prefix
    for prefix in ("student.layer3", "student.fc"):
        assert not _changed(before, d, prefix), prefix
    x, y = _batch()
    _, terms = d.train()(x, y)
    assert set(terms) == {"ce", "kd"}


def test_fitnet_hint_stage_lowers_the_hint_loss():
    d, s, t = _built("fitnet", init_epochs=4, init_lr=0.02)
    x, _ = _batch(3, b=32)

    def hint():
        d.eval()
        with torch.no_grad():
            f_s = fitting.forward_until(s, ["layer2"], x)["layer2"]
            f_t = fitting.forward_until(t, ["layer2"], x)["layer2"]
            return losses.hint_loss(d.regressor(f_s), f_t).item()

    first = hint()
    d.prepare(_loader(_data(64)))
    assert hint() < first


def test_fitnet_rejects_bad_hyperparameters():
    s, t = _models()
    for bad in (dict(hint_weight=-1), dict(T=0), dict(init_epochs=-1), dict(init_lr=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            kd.build("fitnet", s, t, **bad)


# SSKD

SSKD_GROUPS = [["stem", "layer1"], ["layer2"], ["layer3"], ["fc"]]


def _sskd_prepare_trace(d, loader):
    """Run ``d.prepare(loader)``; per SGD step: phase, lr, optimised and
    gradient-carrying student parameters, student modules in training mode,
    and a copy of the student's parameters before the step."""
    s = d.student
    names = {id(p): n for n, p in s.named_parameters()}
    steps = []

    def hook(opt, _args, _kwargs):
        steps.append(
            dict(
                phase=d.phase,
                lr=opt.param_groups[0]["lr"],
                params={names[id(p)] for g in opt.param_groups for p in g["params"]},
                grads={n for n, p in s.named_parameters() if p.grad is not None},
                training=_training_with_parameters(s),
                before={n: p.detach().clone() for n, p in s.named_parameters()},
            )
        )

    handle = register_optimizer_step_pre_hook(hook)
    try:
        d.prepare(loader)
    finally:
        handle.remove()
    return steps


def _training_with_parameters(model) -> set[str]:
    """Names of the modules in training mode that hold parameters (not the pooling)."""
    return {
        n
        for n, m in model.named_modules()
        if m.training and next(m.parameters(recurse=False), None) is not None
    }


def _top(name: str) -> str:
    return name.split(".")[0]


def test_sskd_prepare_trains_the_stages_in_turn_each_with_its_own_cosine(capsys):
    d, s, _ = _built("sskd", stage_epochs=2, init_lr=0.04)
    assert d.teacher_layers == ()  # the main training reads no teacher output
    loader = _loader()
    before = _snapshot(d)
    steps = _sskd_prepare_trace(d, loader)
    out = capsys.readouterr().out
    for k, group in enumerate(SSKD_GROUPS[:3]):
        assert (
            f"[prepare] sskd stage {k + 1} ({', '.join(group)}): 2 epoch(s), "
            "cosine lr 0.04 -> 0, mean loss in the last" in out
        )
    per_phase = len(loader) * 2
    assert [st["phase"] for st in steps] == [
        k for k in range(3) for _ in range(per_phase)
    ]
    for k, group in enumerate(SSKD_GROUPS[:3]):
        mine = steps[k * per_phase : (k + 1) * per_phase]
        # Its own schedule: cosine from init_lr to 0 over the phase, per step.
        lrs = [st["lr"] for st in mine]
        ref = [0.02 * (1 + math.cos(math.pi * t / per_phase)) for t in range(per_phase)]
        assert lrs == pytest.approx(ref, rel=1e-12)
        for st in mine:
            # Only the phase's modules are optimised, get gradients and run in
            # training mode (batch norm statistics of the others stay put).
            assert {_top(n) for n in st["params"]} == set(group)
            assert st["grads"] <= st["params"]
            assert {_top(n) for n in st["training"]} == set(group)
        # Between the phase's first step and the next phase, only its own
        # parameters move.
        end = (
            steps[(k + 1) * per_phase]["before"]
            if k < 2
            else {n: p.detach() for n, p in s.named_parameters()}
        )
        moved = {
            _top(n) for n, p in mine[0]["before"].items() if not torch.equal(p, end[n])
        }
        assert moved == set(group), k
    # Across prepare: every stage changed, the classifier did not.
    for prefix in (
        "student.stem",
        "student.layer1",
        "student.layer2",
        "student.layer3",
    ):
        assert _changed(before, d, prefix), prefix
    assert not _changed(before, d, "student.fc")
    assert not any(p.grad is not None for p in s.parameters())  # no stale gradients
    # Each phase's mean loss per epoch is kept in state (and checkpoints).
    assert d.stage_losses.shape == (3, 2) and torch.isfinite(d.stage_losses).all()
    assert "stage_losses" in d.state_dict()
    assert d.phase is None


def test_sskd_stage_phases_lower_their_hint():
    d, _, _ = _built("sskd", stage_epochs=4)
    d.prepare(_loader(_data(64)))
    first, last = d.stage_losses[:, 0], d.stage_losses[:, -1]
    assert (last < first).all(), d.stage_losses


def _mse_reference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().numpy(), b.detach().double().numpy()
    return float(np.mean((a - b) ** 2))


def test_sskd_hints_are_the_plain_mse_of_stage_outputs():
    d, s, t = _built("sskd", hint_weight=2.0)
    d.eval()  # batch statistics would depend on how far each forward runs
    x, _ = _batch()
    names = s.stage_layers()
    with torch.no_grad():
        with kd.capture(t, names) as ft:
            t(x)
        with kd.capture(s, names) as fs:
            s(x)
    ref = {
        f"hint{k + 1}": 2 * _mse_reference(fs[n], ft[n]) for k, n in enumerate(names)
    }
    terms = d.stage_terms(x)
    assert set(terms) == set(ref)
    for k, key in enumerate(ref):
        assert terms[key].item() == pytest.approx(ref[key], rel=1e-5)
        d.phase = k  # each phase's objective is its stage's term
        assert d.stage_loss(k, x).item() == pytest.approx(ref[key], rel=1e-5)
    with pytest.raises(RuntimeError, match="phase"):
        d.stage_loss(0, x)


@pytest.mark.parametrize("phase", [0, 1, 2])
def test_sskd_stage_loss_reaches_only_its_own_stage(phase):
    d, s, _ = _built("sskd")
    d.phase = phase
    d.train()
    state = _snapshot(s)
    x, _ = _batch()
    d.stage_loss(phase, x).backward()
    for k, group in enumerate(SSKD_GROUPS):
        for name in group:
            mod = getattr(s, name)
            got = [
                p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters()
            ]
            assert all(got) if k == phase else not any(got), (phase, name)
            assert all(m.training == (k == phase) for m in mod.modules()), (phase, name)
    # Parameters and batch-norm statistics move only in the phase's own modules.
    moved = {_top(n) for n in state if not torch.equal(state[n], s.state_dict()[n])}
    assert moved == set(SSKD_GROUPS[phase])


def test_sskd_classifier_phase_trains_only_fc_on_the_labels():
    d, s, _ = _built("sskd")
    d.train()
    d.on_epoch(0, 2)
    assert d.phase == 3
    assert _training_with_parameters(s) == {"fc"}
    x, y = _batch()
    state = _snapshot(s)
    logits, terms = d(x, y)
    assert set(terms) == {"ce"}
    assert all(torch.equal(state[k], v) for k, v in s.state_dict().items())  # BN frozen
    with torch.no_grad():
        ref = torch.nn.functional.cross_entropy(s.eval()(x), y)
    d.train()
    assert terms["ce"].item() == pytest.approx(ref.item(), rel=1e-6)
    terms["ce"].backward()
    for n, p in s.named_parameters():
        assert (p.grad is not None) == n.startswith("fc."), n
    # Precomputed teacher outputs (logits only) change nothing.
    _, cached = d(x, y, teacher_out={"logits": torch.zeros(len(x), CLASSES)})
    assert cached["ce"].item() == pytest.approx(terms["ce"].item(), rel=1e-6)


def test_sskd_forward_outside_a_schedule_is_the_classifiers_ce_through_the_student():
    d, s, _ = _built("sskd")
    d.train()
    x, y = _batch()
    logits, terms = d(x, y)
    assert set(terms) == {"ce"}
    torch.testing.assert_close(
        terms["ce"], torch.nn.functional.cross_entropy(logits, y)
    )
    terms["ce"].backward()
    assert all(p.grad is not None for p in s.parameters())
    d.phase = 1
    with pytest.raises(RuntimeError, match="stage phase 2"):
        d(x, y)


def test_sskd_rejects_bad_hyperparameters():
    s, t = _models()
    for bad in (
        dict(stage_epochs=0),
        dict(stage_epochs=1.5),
        dict(init_lr=0),
        dict(init_lr=-0.1),
        dict(hint_weight=-1),
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            kd.build("sskd", s, t, **bad)
    assert kd.build("sskd", s, t).hparams() == dict(
        stage_epochs=30, init_lr=0.05, hint_weight=1.0
    )


def test_sskd_refuses_stages_of_other_shapes():
    s, t = _models(teacher="resnet8x4")
    d = kd.build("sskd", s, t)
    with pytest.raises(
        ValueError,
        match=r"student layer1 \(16, 16, 16\) != teacher layer1 \(64, 16, 16\)",
    ):
        d.setup(_data())


# AB


def test_ab_initialisation_trains_student_and_connectors_then_kd():
    d, s, _ = _built("ab", teacher="resnet8x4", init_epochs=2)
    assert d.teacher_layers == () and len(d.connectors) == 3
    assert all(isinstance(c[0], torch.nn.Conv2d) for c in d.connectors)
    x, y = _batch(4, b=32)
    d.train()
    before_loss = d.ab_term(x).item()
    d.load_state_dict(_snapshot(d))
    before = _snapshot(d)
    d.prepare(_loader(_data(64)))
    assert _changed(before, d, "connectors") and _changed(before, d, "student.layer1")
    assert not _changed(before, d, "student.fc")
    assert d.ab_term(x).item() < before_loss
    _, terms = d(x, y)
    assert set(terms) == {"ce", "kd"}


def test_ab_uses_pre_relu_points_and_no_connector_for_equal_shapes():
    d, _, _ = _built("ab")
    assert d.student_points == ["layer1.0.preact", "layer2.0.preact", "layer3.0.preact"]
    assert d.teacher_points[-1] == "layer3.1.preact"
    assert all(isinstance(c, torch.nn.Identity) for c in d.connectors)


# FT


def test_ft_paraphraser_is_trained_first_then_frozen():
    d, _, t = _built("ft", init_epochs=3)
    para = d.paraphraser
    assert para.encoder[2].out_channels == 32  # k = 0.5 of the teacher's 64
    assert not any(p.requires_grad for p in para.parameters())
    x, _ = _batch(5, b=32)
    with torch.no_grad():
        f_t = fitting.forward_until(t, ["layer3"], x)["layer3"]
        rec_before = torch.nn.functional.l1_loss(para(f_t), f_t).item()
    before = _snapshot(para)
    d.prepare(_loader(_data(64)))
    assert _changed(before, para, "encoder")
    assert not any(p.requires_grad for p in para.parameters())
    with torch.no_grad():
        assert torch.nn.functional.l1_loss(para(f_t), f_t).item() < rec_before
    trainable = {id(p) for p in d.parameters() if p.requires_grad}
    assert not trainable & {id(p) for p in para.parameters()}


def test_ft_term_is_500_times_ft_loss_of_the_factors():
    d, s, t = _built("ft")
    d.train()
    x, y = _batch()
    state = _snapshot(d)
    _, terms = d(x, y)
    d.load_state_dict(state)
    with torch.no_grad():
        with kd.capture(t, ["layer3"]) as ft:
            t(x)
    with kd.capture(s, ["layer3"]) as fs:
        s(x)
    f_s, f_t = d.factors(fs["layer3"], ft["layer3"])
    assert terms["ft"].item() == pytest.approx(
        500 * losses.ft_loss(f_s, f_t).item(), rel=1e-5
    )


# VID


def test_vid_starts_at_variance_5_and_sums_three_stage_nlls():
    d, s, t = _built("vid")
    assert len(d.regressors) == 3
    for reg in d.regressors:
        torch.testing.assert_close(reg.var(), torch.full_like(reg.var(), 5.0))
    d.train()
    x, y = _batch()
    state = _snapshot(d)
    _, terms = d(x, y)
    d.load_state_dict(state)
    with torch.no_grad():
        with kd.capture(t, t.stage_layers()) as ft:
            t(x)
    with kd.capture(s, s.stage_layers()) as fs:
        s(x)
    nll = sum(
        losses.vid_loss(reg(fs[n]), ft[n], reg.var())
        for reg, n in zip(d.regressors, s.stage_layers(), strict=True)
    )
    assert terms["vid"].item() == pytest.approx(nll.item(), rel=1e-5)


def test_vid_pools_the_larger_map_to_the_smaller():
    a, b = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 4, 4)
    pa, pb = fitting_added._pool_to_smaller(a, b)
    assert pa.shape[2:] == pb.shape[2:] == (4, 4) and pb is b
    pb2, pa2 = fitting_added._pool_to_smaller(b, a)
    assert pa2.shape[2:] == (4, 4) and pb2 is b


# Whole runs: stages before training, schedules, resuming


def _assert_same_weights(a, b) -> None:
    wa, wb = (torch.load(f"{r.path}/model.pt", weights_only=True) for r in (a, b))
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def _digits(digits_config, method, **kw):
    return digits_config(method=method, teacher="resnet14", **kw)


@pytest.mark.parametrize(
    "method, args",
    [
        ("fitnet", dict(init_epochs=1, hint_weight=0.0, ce_weight=0.1, kd_weight=0.9)),
        ("ab", dict(init_epochs=1)),
        ("ft", dict(init_epochs=1)),
        ("sskd", dict(epochs=2, stage_epochs=1)),
    ],
)
def test_a_staged_run_killed_mid_training_resumes_to_the_same_weights(
    digits_config, tmp_path, monkeypatch, capsys, method, args
):
    """What ``prepare`` trained lives in the checkpoint; a resumed run skips it."""
    cfg = _digits(digits_config, method, **{"epochs": 3, **args})
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "whole"))
    reference = kd.run(cfg, progress=False)
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "killed"))
    kd.run(teacher_config(cfg), progress=False)
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=2)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    assert (kruns.run_dir(cfg) / "checkpoint.pt").exists()
    capsys.readouterr()
    resumed = kd.run(cfg, progress=False)
    out = capsys.readouterr().out
    assert "[resume]" in out and "[prepare]" not in out
    _assert_same_weights(resumed, reference)


# linear CKA and the chapter's figures


def _cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Feature-space form: ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)."""
    x = x.reshape(len(x), -1) - x.reshape(len(x), -1).mean(0)
    y = y.reshape(len(y), -1) - y.reshape(len(y), -1).mean(0)
    num = np.linalg.norm(y.T @ x) ** 2
    return float(num / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


@pytest.mark.parametrize("seed", range(3))
def test_linear_cka_matches_the_feature_space_formula(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 3, 2, 2, generator=g)
    y = x.reshape(20, -1)[:, :5] @ torch.randn(5, 7, generator=g)
    y = y + 0.5 * torch.randn(20, 7, generator=g)
    ref = _cka_reference(x.double().numpy(), y.double().numpy())
    assert kd.plots.linear_cka(x.double(), y.double()) == pytest.approx(ref, rel=1e-9)
    got = kd.plots.linear_cka(x, y)  # float32 Gram matrices
    assert got == pytest.approx(ref, rel=1e-5)
    assert 0 < got < 1


def test_linear_cka_properties_and_bad_input():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert kd.plots.linear_cka(x, x) == pytest.approx(1.0)
    # Invariant to rotations, isotropic scaling and a shift of the features.
    assert kd.plots.linear_cka(x, 3 * x @ q + 1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same samples"):
        kd.plots.linear_cka(x, x[:10])
    with pytest.raises(ValueError, match="constant"):
        kd.plots.linear_cka(x, torch.ones(30, 2))


def _fake_result(method: str, history: list[dict]):
    return kd.Result(
        name=method, key="k", config={"method": method}, history=history,
        final={"test_acc": 0.5}, provenance={},
    )  # fmt: skip


def test_loss_terms_draws_each_term_and_leaves_gaps_where_a_phase_skips_it():
    import matplotlib

    matplotlib.use("Agg")
    runs = [
        _fake_result("fitnet", [{"train_ce": 2.0 / e, "train_hint": 1.0 / e,
                                 "train_acc": 0.5} for e in (1, 2, 3)]),
        _fake_result("phased", [{"train_hint1": 1.0}, {"train_hint2": 0.5},
                                {"train_ce": 0.3}]),
    ]  # fmt: skip
    fig = kd.plots.loss_terms(runs)
    a, b = fig.axes
    assert [ln.get_label() for ln in a.get_lines()] == ["ce", "hint"]
    assert a.get_yscale() == "log"
    hint1 = b.get_lines()[0].get_ydata()
    assert hint1[0] == 1.0 and np.isnan(hint1[1:]).all()


def test_cka_by_layer_and_feature_grid_draw_what_they_are_given():
    import matplotlib

    matplotlib.use("Agg")
    table = {m: {"layer1": 0.5, "layer2": 0.6, "layer3": 0.7} for m in ("ce", "kd")}
    fig = kd.plots.cka_by_layer(table, spread=table)
    assert len(fig.axes[0].get_lines()) >= 2  # one line per method
    maps = {"teacher": torch.rand(2, 7, 7), "student": np.random.rand(2, 7, 7)}
    fig = kd.plots.feature_grid(torch.zeros(2, 1, 28, 28), maps, labels=["a", "b"])
    assert len(fig.axes) == 6


@pytest.mark.parametrize(
    "method, args",
    [
        ("fitnet", {"init_epochs": 1}),
        ("ab", {"init_epochs": 1}),
        ("ft", {"init_epochs": 1}),
        ("fsp", {"init_epochs": 1}),
        ("sskd", {"stage_epochs": 1}),
    ],
)
def test_every_pre_training_stage_uses_the_runs_optimiser_settings(
    method, args, monkeypatch
):
    """One pre-training helper (``distillers.base.pretrain``) for all five
    methods, with the run's momentum and weight decay, not hard-coded ones."""
    cfg = kd.make_config(
        "smoke",
        method=method,
        dataset="digits",
        teacher="resnet8",
        student="resnet8",
        momentum=0.5,
        weight_decay=1e-3,
        **args,
    )
    data = kd.data.load("digits", train=True).subset(64)
    torch.manual_seed(0)
    d = kd.build(
        method,
        kd.build_model("resnet8", "digits"),
        kd.build_model("resnet8", "digits").eval(),
        **cfg.method_args,
    )
    d.setup(data)
    made = []
    real_sgd = torch.optim.SGD

    def recording_sgd(params, **kwargs):
        made.append(kwargs)
        return real_sgd(params, **kwargs)

    monkeypatch.setattr(torch.optim, "SGD", recording_sgd)
    d.prepare(kd.data.Loader(data, 32, shuffle=True, seed=0), cfg)
    assert made, f"{method} ran no pre-training stage"
    assert all(k["momentum"] == 0.5 and k["weight_decay"] == 1e-3 for k in made)
