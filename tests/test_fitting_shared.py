"""Knowledge projection, rocket launching and interactive KD (survey section 2.2.1)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdutils as kd
from kdutils.distillers.fitting_shared import run_from

CLASSES, SIZE = 10, 16


def _models(student="resnet8", teacher="resnet14"):
    torch.manual_seed(0)
    s = kd.create_model(student, num_classes=CLASSES, in_channels=3)
    t = kd.create_model(teacher, num_classes=CLASSES, in_channels=3)
    return s, t


def _data(n=32):
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, SIZE, SIZE), generator=g).to(torch.uint8)
    return kd.data.TensorData(images, torch.arange(n) % CLASSES, "cifar10")


def _batch(b=8):
    g = torch.Generator().manual_seed(2)
    return torch.randn(b, 3, SIZE, SIZE, generator=g), torch.randint(
        0, CLASSES, (b,), generator=g
    )


# rocket_hint_loss


def test_rocket_hint_loss_matches_a_loop_over_samples_and_classes():
    g = torch.Generator().manual_seed(0)
    lo = torch.randn(5, 7, generator=g, dtype=torch.float64)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64)
    a, b = lo.numpy(), z.numpy()
    total = 0.0
    for i in range(a.shape[0]):
        for k in range(a.shape[1]):
            total += (a[i, k] - b[i, k]) ** 2
    expected = total / a.shape[0]
    got = kd.losses.rocket_hint_loss(lo, z)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.item(), expected, rtol=1e-12)


def test_rocket_hint_loss_is_zero_for_equal_logits_and_its_gradient_is_2_diff_over_b():
    g = torch.Generator().manual_seed(3)
    lo = torch.randn(4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(4, 6, generator=g, dtype=torch.float64)
    assert kd.losses.rocket_hint_loss(z, z.clone()).item() == 0.0
    kd.losses.rocket_hint_loss(lo, z).backward()
    torch.testing.assert_close(lo.grad, 2 * (lo.detach() - z) / 4)
    # The squared distance is not shift-invariant (unlike a softmax-based KD).
    assert kd.losses.rocket_hint_loss(z + 1.0, z).item() == pytest.approx(6.0)


@pytest.mark.parametrize(
    "a, b, words",
    [
        (torch.zeros(4, 3), torch.zeros(4, 5), "student shape"),
        (torch.zeros(4), torch.zeros(4), "must be"),
    ],
)
def test_rocket_hint_loss_rejects_bad_shapes(a, b, words):
    with pytest.raises(ValueError, match=words):
        kd.losses.rocket_hint_loss(a, b)


# Rocket launching


def test_rocket_terms_are_the_two_cross_entropies_and_the_weighted_hint():
    s, _ = _models()
    d = kd.build("rocket", s, None).train()
    x, y = _batch()
    logits, terms = d(x, y)
    assert set(terms) == {"ce", "hint", "booster_ce"}
    # Train mode normalises with the batch's statistics: recomputing gives the same.
    z = d.booster(d.shared_features(x))
    torch.testing.assert_close(terms["booster_ce"], F.cross_entropy(z, y))
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, y))
    torch.testing.assert_close(
        terms["hint"], 0.03 * ((logits - z) ** 2).sum(1).mean(), rtol=1e-5, atol=1e-6
    )


def test_rocket_shares_the_students_lower_layers_and_builds_a_deeper_booster():
    s, _ = _models()
    d = kd.build("rocket", s, None)
    light, booster = d.members()
    assert light is s
    assert booster[0] is s.stem and booster[1] is s.layer1  # shared modules
    assert list(d.booster.stages) == ["layer2", "layer3"]
    # resnet8 has one block per stage; booster_scale 3 gives three (a ResNet20 above).
    assert len(d.booster.stages["layer2"]) == 3 and len(s.layer2) == 1
    shared = {id(p) for p in s.stem.parameters()} | {
        id(p) for p in s.layer1.parameters()
    }
    assert not shared & {id(p) for p in d.booster.parameters()}
    d.eval()
    x, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(booster(x), d.booster(d.shared_features(x)))
        torch.testing.assert_close(s(x), run_from(s, "layer1", d.shared_features(x)))


@pytest.mark.parametrize("grad_block", [True, False])
def test_rocket_gradient_block_keeps_the_hint_out_of_the_booster(grad_block):
    s, _ = _models()
    d = kd.build("rocket", s, None, grad_block=grad_block).train()
    x, y = _batch()
    _, terms = d(x, y)
    terms["hint"].backward()
    booster_grads = [p.grad for p in d.booster.parameters()]
    if grad_block:
        assert all(g is None for g in booster_grads)
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in booster_grads)
    # The hint always reaches the shared layers through the light net.
    assert any(p.grad.abs().sum() > 0 for p in s.layer1.parameters())


def test_rocket_shares_more_or_fewer_stages_on_request():
    s, _ = _models()
    d = kd.build("rocket", s, None, shared="stem")
    assert list(d.booster.stages) == ["layer1", "layer2", "layer3"]
    d = kd.build("rocket", s, None, shared="layer2", booster_scale=2)
    assert list(d.booster.stages) == ["layer3"] and len(d.booster.stages["layer3"]) == 2


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(shared="layer3"), "shared must be"),
        (dict(booster_scale=0), "booster_scale"),
        (dict(hint_weight=-1.0), "hint_weight"),
        (dict(grad_block=1), "grad_block"),
    ],
)
def test_rocket_rejects_bad_settings(kwargs, words):
    s, _ = _models()
    with pytest.raises(ValueError, match=words):
        kd.build("rocket", s, None, **kwargs)


def test_rocket_needs_no_teacher_and_its_config_has_none():
    assert not kd.METHODS["rocket"].needs_teacher
    assert kd.make_config("smoke", method="rocket").teacher is None


# Knowledge projection


def test_kp_terms_are_the_students_ce_and_the_projection_routes_ce():
    s, t = _models()
    d = kd.build("kp", s, t)
    d.setup(_data())
    d.eval()  # batch norm in eval mode: the routes can be recomputed exactly
    x, y = _batch()
    with torch.no_grad():
        logits, terms = d(x, y)
        with kd.capture(t, ["layer1"]) as f:
            t(x)
        proj = d.projection(f["layer1"])
        h = s.layer3(s.layer2(proj))
        logits_p = s.fc(s.pool(h))
    assert proj.shape[1] == s.widths[1]  # the student's channels at layer1
    torch.testing.assert_close(logits, s(x))
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, y))
    torch.testing.assert_close(terms["proj_ce"], F.cross_entropy(logits_p, y))


def test_kp_prunes_the_projection_route_linearly():
    s, t = _models()
    d = kd.build("kp", s, t, proj_weight=2.0, prune_epochs=4)
    d.setup(_data())
    weights = []
    for e in range(6):
        d.on_epoch(e, 6)
        weights.append(d.route_weight)
    assert weights == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    x, y = _batch()
    _, terms = d.train()(x, y)
    assert terms["proj_ce"].item() == 0.0 and not terms["proj_ce"].requires_grad
    # The projection gets no gradient once the route is cut.
    sum(terms.values()).backward()
    assert all(p.grad is None for p in d.projection.parameters())


def test_kp_prune_epochs_scale_with_the_profile():
    cfg = kd.make_config("smoke", method="kp")
    assert cfg.method_args["prune_epochs"] == max(1, round(120 * cfg.epochs / 240))


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(layer="layer3"), "layer must be"),
        (dict(proj_weight=-1.0), "proj_weight"),
        (dict(prune_epochs=-1), "prune_epochs"),
    ],
)
def test_kp_rejects_bad_settings(kwargs, words):
    s, t = _models()
    with pytest.raises(ValueError, match=words):
        kd.build("kp", s, t, **kwargs)


def test_kp_refuses_maps_of_different_sizes():
    s, t = _models()
    d = kd.build("kp", s, t, layer="layer1")
    t.layer1[0].conv1.stride = (2, 2)  # a teacher whose layer1 map is halved
    t.layer1[0].shortcut = torch.nn.Sequential(
        torch.nn.Conv2d(16, 16, 1, stride=2, bias=False), torch.nn.BatchNorm2d(16)
    )
    with pytest.raises(ValueError, match="same spatial size"):
        d.setup(_data())


# Interactive KD


def test_iakd_without_swaps_is_the_student_and_with_all_swaps_the_teachers_stages():
    s, t = _models()
    d = kd.build("iakd", s, t)
    d.setup(_data())
    d.eval()
    x, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(d.hybrid(x, [False] * 3), s(x))
        h = t.layer3(t.layer2(t.layer1(s.stem(x))))
        torch.testing.assert_close(d.hybrid(x, [True] * 3), s.fc(s.pool(h)))
        h = s.layer3(t.layer2(s.layer1(s.stem(x))))
        torch.testing.assert_close(d.hybrid(x, [False, True, False]), s.fc(s.pool(h)))


def test_iakd_trains_only_the_task_loss_through_the_frozen_teacher_stage():
    s, t = _models()
    d = kd.build("iakd", s, t, swap_prob=1.0)
    d.setup(_data())
    d.on_epoch(0, 10)
    assert d.p == 1.0
    d.train()
    x, y = _batch()
    logits, terms = d(x, y)
    assert set(terms) == {"ce"}
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, y))
    assert d.step_metrics["swapped"].item() == 1.0
    terms["ce"].backward()
    assert all(p.grad is None for p in t.parameters())
    # Gradients pass through the teacher's stages to the student's stem and head.
    assert s.stem[0].weight.grad.abs().sum() > 0 and s.fc.weight.grad.abs().sum() > 0
    # The swapped-out student stages get nothing in this step.
    assert all(p.grad is None for p in s.layer2.parameters())


def test_iakd_swap_probability_falls_linearly_and_draws_per_stage():
    s, t = _models()
    d = kd.build("iakd", s, t, swap_prob=0.5, decay_epochs=4)
    d.setup(_data())
    ps = []
    for e in range(5):
        d.on_epoch(e, 5)
        ps.append(d.p)
    assert ps == [0.5, 0.375, 0.25, 0.125, 0.0]
    d.on_epoch(0, 5)
    d.train()
    x, y = _batch(2)
    torch.manual_seed(0)
    fractions = []
    for _ in range(300):
        with torch.no_grad():
            d(x, y)
        fractions.append(d.step_metrics["swapped"].item())
    assert abs(np.mean(fractions) - 0.5) < 0.06
    assert set(np.round(np.array(fractions) * 3).astype(int)) == {0, 1, 2, 3}


def test_iakd_adds_connectors_only_where_widths_differ():
    s, _ = _models()
    t = kd.create_model("resnet8x4", num_classes=CLASSES, in_channels=3)
    d = kd.build("iakd", s, t)
    d.setup(_data())
    assert all(isinstance(c, torch.nn.Sequential) for c in (*d.into, *d.back))
    x, y = _batch()
    out = d.eval().hybrid(x, [True, True, True])
    assert out.shape == (8, CLASSES)
    s2, t2 = _models()
    d2 = kd.build("iakd", s2, t2)
    d2.setup(_data())
    assert all(isinstance(c, torch.nn.Identity) for c in (*d2.into, *d2.back))


@pytest.mark.parametrize(
    "kwargs, words",
    [(dict(swap_prob=1.5), "swap_prob"), (dict(decay_epochs=-2), "decay_epochs")],
)
def test_iakd_rejects_bad_settings(kwargs, words):
    s, t = _models()
    with pytest.raises(ValueError, match=words):
        kd.build("iakd", s, t, **kwargs)
