"""Online adversarial feature-map distillation (2.3.5): least-squares losses, advonline."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import kdutils as kd
from kdutils.losses import ls_discriminator_loss, ls_generator_loss


def _scores(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, generator=g, dtype=torch.float64), torch.randn(
        5, generator=g, dtype=torch.float64
    )


def test_least_squares_losses_against_loops():
    r, f = _scores()
    rn, fn = r.numpy(), f.numpy()
    d_ref = sum((1 - v) ** 2 for v in rn) / len(rn) + sum(v**2 for v in fn) / len(fn)
    g_ref = sum((1 - v) ** 2 for v in fn) / len(fn)
    assert ls_discriminator_loss(r, f).item() == pytest.approx(d_ref, rel=1e-12)
    assert ls_generator_loss(f).item() == pytest.approx(g_ref, rel=1e-12)
    torch.testing.assert_close(
        ls_discriminator_loss(r[:, None], f[:, None]), ls_discriminator_loss(r, f)
    )


def test_least_squares_properties():
    ones, zeros = torch.ones(4), torch.zeros(4)
    # The perfect discriminator (1 on real, 0 on fake) has zero loss, and the
    # fake side then pays 1 each; a fake scored 1 pays nothing.
    assert ls_discriminator_loss(ones, zeros).item() == 0.0
    assert ls_generator_loss(zeros).item() == 1.0
    assert ls_generator_loss(ones).item() == 0.0
    # The undecided discriminator (1/2 everywhere) has loss 1/2.
    half = torch.full((4,), 0.5)
    assert ls_discriminator_loss(half, half).item() == pytest.approx(0.5)


def test_least_squares_errors():
    with pytest.raises(ValueError, match="one score per sample"):
        ls_discriminator_loss(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="one score per sample"):
        ls_generator_loss(torch.zeros(2, 2, 2))


def _data():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8, 1, 16, 16), generator=g).to(torch.uint8)
    return kd.data.TensorData(images, torch.arange(8) % 10, "fashion-mnist")


def _advonline(**kw):
    torch.manual_seed(0)
    student = kd.create_model("resnet8", num_classes=10, in_channels=1)
    d = kd.build("advonline", student, None, **kw)
    d.setup(_data())
    return d, student


def _batch():
    g = torch.Generator().manual_seed(2)
    return torch.randn(6, 1, 16, 16, generator=g), torch.randint(
        0, 10, (6,), generator=g
    )


def test_advonline_structure_and_defaults():
    d, student = _advonline()
    hp = d.hparams()
    assert hp["num_peers"] == 2 and hp["T"] == 3.0 and hp["layer"] == "layer3"
    assert len(d.peers) == 1 and len(d.adversaries) == 2
    assert all(not p.requires_grad for p in d.adversaries.parameters())
    assert all(p.requires_grad for p in d.peers.parameters())


@pytest.mark.parametrize("num_peers", [2, 3])
def test_advonline_terms_follow_the_cycle(num_peers):
    d, student = _advonline(num_peers=num_peers, kl_weight=0.5, adv_weight=2.0)
    d.eval()  # no discriminator step, running statistics: deterministic
    x, y = _batch()
    _, terms = d(x, y)
    nets = d.members()
    with torch.no_grad():
        zs, fs = [], []
        for m in nets:
            with kd.capture(m, ["layer3"]) as f:
                zs.append(m(x))
            fs.append(f["layer3"])
        ce, kl, adv = [], [], []
        for k in range(num_peers):
            prev = (k - 1) % num_peers  # the network that teaches network k
            q = F.softmax(zs[prev].double() / 3, 1)
            log_p = F.log_softmax(zs[k].double() / 3, 1)
            kl.append(9 * (q * (q.log() - log_p)).sum(1).mean())
            ce.append(F.cross_entropy(zs[k], y))
            score = d.adversaries[k].net(fs[k])[:, 0]
            adv.append(((1 - score) ** 2).mean())
    want = {
        "ce": ce[0],
        "kl": 0.5 * kl[0],
        "adv": 2.0 * adv[0],
        "peers_ce": sum(ce[1:]),
        "peers_kl": 0.5 * sum(kl[1:]),
        "peers_adv": 2.0 * sum(adv[1:]),
    }
    assert set(terms) == set(want)
    for k, v in want.items():
        assert terms[k].item() == pytest.approx(float(v), rel=1e-4, abs=1e-6), k


def test_advonline_discriminators_step_in_training_on_own_fake_and_peer_real():
    d, student = _advonline()
    x, y = _batch()
    twin = copy.deepcopy(d).train()  # the same maps as d's in training mode
    with torch.no_grad():
        maps = []
        for m in twin.members():
            with kd.capture(m, ["layer3"]) as f:
                m(x)
            maps.append(f["layer3"])
    # Network k's discriminator: its own maps fake, its predecessor's real.
    before = [a.loss(maps[k - 1], maps[k], y)[0] for k, a in enumerate(d.adversaries)]
    d.train()
    d(x, y)
    assert all(int(a.adam_step) == 1 for a in d.adversaries)
    assert set(d.step_metrics) == {"disc_loss", "disc_acc"}
    # The monitor is the discriminators' mean loss before their step.
    assert d.step_metrics["disc_loss"].item() == pytest.approx(
        float(torch.stack(before).mean()), rel=1e-3
    )


def test_advonline_gradients_stay_with_their_network():
    d, student = _advonline()
    d.train()
    x, y = _batch()
    _, terms = d(x, y)
    for name, own, other in (
        ("adv", student, d.peers[0]),
        ("kl", student, d.peers[0]),
        ("peers_adv", d.peers[0], student),
        ("peers_kl", d.peers[0], student),
    ):
        d.zero_grad(set_to_none=True)
        terms[name].backward(retain_graph=True)
        assert any(
            p.grad is not None and p.grad.abs().sum() > 0 for p in own.parameters()
        )
        assert all(p.grad is None for p in other.parameters()), name
        assert all(p.grad is None for p in d.adversaries.parameters())


@pytest.mark.parametrize(
    "bad",
    [
        dict(num_peers=1),
        dict(T=0.0),
        dict(adv_weight=-1.0),
        dict(disc_lr=0.0),
        dict(disc_beta1=1.0),
        dict(disc_hidden=0),
    ],
)
def test_advonline_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        _advonline(**bad)


def test_advonline_needs_setup_and_feature_maps():
    student = kd.create_model("resnet8", num_classes=10, in_channels=1)
    d = kd.build("advonline", student, None)
    with pytest.raises(RuntimeError, match="setup"):
        d(*_batch())
    d = kd.build("advonline", student, None, layer="fc")
    with pytest.raises(ValueError, match="feature maps"):
        d.setup(_data())


def _msmgan(width=None, **kw):
    torch.manual_seed(0)
    name = "resnet8" if width is None else kd.models.model_name(8, width)
    student = kd.create_model(name, num_classes=10, in_channels=1)
    teacher = kd.create_model("resnet14", num_classes=10, in_channels=1)
    d = kd.build("msmgan", student, teacher, **kw)
    d.setup(_data())
    return d, student, teacher


def test_msmgan_is_a_stand_in_with_one_discriminator_per_stage():
    d, student, _ = _msmgan()
    assert kd.METHODS["msmgan"].status == "stand-in"
    assert "Huang et al. 2022" in kd.METHODS["msmgan"].status_note
    assert len(d.adversaries) == len(student.stage_layers()) == 3
    assert all(not p.requires_grad for p in d.adversaries.parameters())
    stages = []
    for e in range(9):
        d.on_epoch(e, 9)
        stages.append(d.stage)
    assert stages == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Fewer epochs than stages: the phases that fit, earliest first.
    d.on_epoch(1, 2)
    assert d.stage == 1 and d.epoch_metrics(None) == {"stage": 1.0}


def test_msmgan_terms_against_an_independent_computation():
    d, student, teacher = _msmgan(width=(4, 4, 8, 16))  # connectors needed
    d.on_epoch(5, 9)  # the second stage
    d.eval()
    x, y = _batch()
    _, terms = d(x, y)
    with torch.no_grad():
        with kd.capture(student, ["layer2"]) as fs:
            zs = student(x).double()
        with kd.capture(teacher, ["layer2"]) as ft:
            zt = teacher(x).double()
        score = d.adversaries[1].net(d.connectors[1](fs["layer2"]))[:, 0].double()
        assert ft["layer2"].shape[1] == 32 and fs["layer2"].shape[1] == 8
    q, log_p = F.softmax(zt / 4, 1), F.log_softmax(zs / 4, 1)
    want = {
        "ce": 0.1 * F.cross_entropy(zs, y).item(),
        "kd": 0.9 * 16 * (q * (q.log() - log_p)).sum(1).mean().item(),
        "adv": float(-torch.log(torch.sigmoid(score)).mean()),
    }
    for k, v in want.items():
        assert terms[k].item() == pytest.approx(v, rel=1e-4, abs=1e-6), k


@pytest.mark.parametrize("epoch, stage", [(0, 0), (4, 1), (8, 2)])
def test_msmgan_is_greedy_held_stages_get_no_gradient(epoch, stage):
    d, student, _ = _msmgan()
    d.on_epoch(epoch, 9)
    d.train()
    x, y = _batch()
    _, terms = d(x, y)
    sum(terms.values()).backward()
    order = ["stem", "layer1", "layer2", "layer3", "fc"]
    for i, name in enumerate(order):
        grads = [p.grad for p in student.get_submodule(name).parameters()]
        # Held: the stem and the stages before the current one (none in phase 0).
        held = stage > 0 and i <= stage
        if held:
            assert all(g is None for g in grads), (stage, name)
        else:
            assert all(g is not None for g in grads), (stage, name)
    # Only the current stage's discriminator took its step.
    assert [int(a.adam_step) for a in d.adversaries] == [
        int(k == stage) for k in range(3)
    ]
    assert set(d.step_metrics) == {"disc_loss", "disc_acc"}


@pytest.mark.parametrize(
    "bad", [dict(T=0.0), dict(kd_weight=-1.0), dict(disc_hidden=0), dict(disc_lr=0.0)]
)
def test_msmgan_rejects_bad_hyperparameters(bad):
    with pytest.raises(ValueError):
        _msmgan(**bad)


def test_msmgan_needs_setup():
    student = kd.create_model("resnet8", num_classes=10, in_channels=1)
    teacher = kd.create_model("resnet14", num_classes=10, in_channels=1)
    d = kd.build("msmgan", student, teacher)
    with pytest.raises(RuntimeError, match="setup"):
        d(*_batch())
