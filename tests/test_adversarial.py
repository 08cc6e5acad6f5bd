"""Adversarial distillation (2.3.5): losses, the self-training discriminator, advlogit, advfeat."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from training_stops import interrupt as _interrupt

import kdutils as kd
import kdutils.data as kdata
from kdutils import loop as kloop
from kdutils import runs as kruns
from kdutils.distillers.adversarial import Adversary, LogitDiscriminator
from kdutils.losses import (
    discriminator_accuracy,
    discriminator_bce_loss,
    generator_bce_loss,
    l1_match_loss,
)

B, K = 8, 10


def _scores(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, generator=g) * 2, torch.randn(B + 2, generator=g) * 2


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


# Losses


def test_discriminator_and_generator_bce_against_loops():
    r, f = _scores()
    rn, fn = r.double().numpy(), f.double().numpy()
    d_ref = -sum(np.log(_sigmoid(v)) for v in rn) / len(rn) - sum(
        np.log(1 - _sigmoid(v)) for v in fn
    ) / len(fn)
    g_ref = -sum(np.log(_sigmoid(v)) for v in fn) / len(fn)
    assert discriminator_bce_loss(r, f).item() == pytest.approx(d_ref, rel=1e-5)
    assert generator_bce_loss(f).item() == pytest.approx(g_ref, rel=1e-5)
    # (B, 1) scores are accepted.
    torch.testing.assert_close(
        discriminator_bce_loss(r[:, None], f[:, None]), discriminator_bce_loss(r, f)
    )


def test_bce_properties():
    # A perfect discriminator has near-zero loss; the student then has a large one.
    big = torch.full((B,), 30.0)
    assert discriminator_bce_loss(big, -big).item() < 1e-10
    assert generator_bce_loss(-big).item() == pytest.approx(30.0, rel=1e-6)
    # Undecided (score 0): log 2 each.
    z = torch.zeros(B)
    assert discriminator_bce_loss(z, z).item() == pytest.approx(2 * np.log(2))
    assert generator_bce_loss(z).item() == pytest.approx(np.log(2))


def test_discriminator_accuracy_against_a_count():
    r, f = _scores()
    right = sum(v > 0 for v in r.tolist()) + sum(v < 0 for v in f.tolist())
    assert discriminator_accuracy(r, f).item() == pytest.approx(right / (2 * B + 2))
    assert discriminator_accuracy(torch.ones(3), -torch.ones(3)).item() == 1.0


def test_l1_match_loss_against_loops():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    ref = np.abs(a.double().numpy() - b.double().numpy()).sum() / a.numel()
    assert l1_match_loss(a, b).item() == pytest.approx(ref, rel=1e-6)
    assert l1_match_loss(a, a).item() == 0.0


def test_loss_errors():
    r, f = _scores()
    with pytest.raises(ValueError, match=r"one score per sample.*\(8, 2\)"):
        discriminator_bce_loss(torch.zeros(B, 2), f)
    with pytest.raises(ValueError, match="student scores"):
        discriminator_bce_loss(r, torch.zeros(B, 1, 1))
    with pytest.raises(ValueError, match="generator_bce_loss"):
        generator_bce_loss(torch.zeros(B, 3))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(2, 4\)"):
        l1_match_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# The discriminator's own optimizer


def _bce_loss_fn(call, real, fake, y):
    out_r, out_f = call(real), call(fake)
    return discriminator_bce_loss(out_r[:, 0], out_f[:, 0]), discriminator_accuracy(
        out_r[:, 0], out_f[:, 0]
    )


def test_adversary_adam_matches_torch_adam():
    torch.manual_seed(0)
    net = LogitDiscriminator(K, 16)
    ref = copy.deepcopy(net)
    adv = Adversary(net, _bce_loss_fn, lr=1e-2, betas=(0.5, 0.9))
    opt = torch.optim.Adam(ref.parameters(), lr=1e-2, betas=(0.5, 0.9), foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(4):
        real, fake = torch.randn(B, K, generator=g) + 1, torch.randn(B, K, generator=g)
        y = torch.zeros(B, dtype=torch.long)
        loss, _ = adv.step(real, fake, y)
        opt.zero_grad()
        ref_loss, _ = _bce_loss_fn(ref, real, fake, y)
        ref_loss.backward()
        opt.step()
        torch.testing.assert_close(loss, ref_loss.detach())
    for (n, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=n)
    assert int(adv.adam_step) == 4
    assert not any(p.requires_grad or p.grad is not None for p in net.parameters())


def test_adversary_learns_to_separate():
    torch.manual_seed(0)
    adv = Adversary(LogitDiscriminator(K, 32), _bce_loss_fn, lr=1e-2)
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(64, K, generator=g) + 2, torch.randn(64, K, generator=g)
    y = torch.zeros(64, dtype=torch.long)
    first, _ = adv.step(real, fake, y)
    for _ in range(30):
        adv.step(real, fake, y)
    last, acc = adv.loss(real, fake, y)
    assert last < first / 2 and acc > 0.9


@pytest.mark.parametrize(
    "bad,msg",
    [
        (dict(lr=0.0), "disc_lr"),
        (dict(betas=(1.0, 0.9)), "disc_beta1"),
        (dict(eps=0.0), "eps"),
    ],
)
def test_adversary_rejects_bad_settings(bad, msg):
    with pytest.raises(ValueError, match=msg):
        Adversary(LogitDiscriminator(K), _bce_loss_fn, **bad)


# advlogit and advfeat


def _models(teacher: str = "resnet14"):
    torch.manual_seed(0)
    s = kd.create_model("resnet8", num_classes=K, in_channels=3)
    t = kd.create_model(teacher, num_classes=K, in_channels=3).eval()
    return s, t


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 3, 16, 16, generator=g), torch.randint(
        0, K, (B,), generator=g
    )


def _data():
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (16, 3, 16, 16), generator=g).to(torch.uint8)
    return kd.data.TensorData(images, torch.arange(16) % K, "cifar10")


def _build(name, teacher="resnet14", **kw):
    s, t = _models(teacher)
    d = kd.build(name, s, t, **kw)
    d.setup(_data())
    return d


def test_defaults():
    assert _build("advlogit").hparams() == dict(
        ce_weight=1.0,
        adv_weight=1.0,
        l1_weight=1.0,
        disc_hidden=256,
        disc_lr=2e-4,
        disc_beta1=0.5,
        disc_beta2=0.999,
    )
    d = _build("advfeat")
    assert d.hparams()["layer"] == "layer3" and d.teacher_layers == ("layer3",)
    assert isinstance(d.connector, torch.nn.Identity)


@pytest.mark.parametrize("name", ["advlogit", "advfeat"])
def test_the_discriminator_is_out_of_the_trainers_optimizer(name):
    d = _build(name)
    trainable = {id(p) for p in d.parameters() if p.requires_grad}
    disc = {id(p) for p in d.adversary.parameters()}
    assert disc and not trainable & disc
    keys = d.state_dict().keys()
    assert "adversary.adam_step" in keys and "adversary.exp_avg_0" in keys
    assert "adversary.net.net.0.weight" in keys


def _advlogit_reference(d, x, y, logits_s, disc_before):
    """The terms recomputed: the D step with torch's Adam, then G's terms."""
    with torch.no_grad():
        t = d.teacher(x)
    net = copy.deepcopy(disc_before)
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999), foreach=False)
    out_r, out_f = net(t), net(logits_s.detach())
    d_loss = (
        discriminator_bce_loss(out_r[:, 0], out_f[:, 0])
        + F.cross_entropy(out_r[:, 1:], y)
        + F.cross_entropy(out_f[:, 1:], y)
    )
    opt.zero_grad()
    d_loss.backward()
    opt.step()
    with torch.no_grad():
        out = net(logits_s.detach()).double()
        s, td = logits_s.detach().double(), t.double()
        adv = -torch.log(torch.sigmoid(out[:, 0])).mean() + F.cross_entropy(
            out[:, 1:], y
        )
        return dict(
            ce=F.cross_entropy(s, y).item(),
            adv=adv.item(),
            l1=(s - td).abs().mean().item(),
            disc_loss=d_loss.item(),
        )


def test_advlogit_terms_against_an_independent_computation():
    d = _build("advlogit", ce_weight=0.5, adv_weight=2.0, l1_weight=0.25).train()
    x, y = _batch()
    before = copy.deepcopy(d.adversary.net)
    logits, terms = d(x, y)
    ref = _advlogit_reference(d, x, y, logits, before)
    assert set(terms) == {"ce", "adv", "l1"}
    terms = {**terms, **d.step_metrics}
    assert terms["ce"].item() == pytest.approx(0.5 * ref["ce"], rel=1e-5)
    assert terms["adv"].item() == pytest.approx(2.0 * ref["adv"], rel=1e-4)
    assert terms["l1"].item() == pytest.approx(0.25 * ref["l1"], rel=1e-5)
    assert terms["disc_loss"].item() == pytest.approx(ref["disc_loss"], rel=1e-5)
    assert 0 <= terms["disc_acc"].item() <= 1
    assert d.last_disc_acc == pytest.approx(terms["disc_acc"].item())


@pytest.mark.parametrize("name", ["advlogit", "advfeat"])
def test_gradient_routing(name):
    d = _build(name).train()
    x, y = _batch()
    before = {k: v.clone() for k, v in d.adversary.state_dict().items()}
    logits, terms = d(x, y)
    # The discriminator stepped, and its step left no gradient on the student.
    after = d.adversary.state_dict()
    assert not torch.equal(before["net.net.0.weight"], after["net.net.0.weight"])
    assert int(after["adam_step"]) == 1
    assert all(p.grad is None for p in d.student.parameters())
    # The monitors carry no gradient; the student's terms never reach D.
    m = d.step_metrics
    assert not m["disc_loss"].requires_grad and not m["disc_acc"].requires_grad
    assert "disc_loss" not in terms
    sum(terms.values()).backward()
    assert all(p.grad is None for p in d.adversary.parameters())
    assert all(p.grad is None for p in d.teacher.parameters())
    # The adversarial term alone trains the student (through D).
    d.zero_grad(set_to_none=True)
    _, terms = d(x, y)
    terms["adv"].backward()
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in d.student.parameters()
    )


@pytest.mark.parametrize("name", ["advlogit", "advfeat"])
def test_no_discriminator_step_outside_training(name):
    d = _build(name)
    x, y = _batch()
    before = {k: v.clone() for k, v in d.adversary.state_dict().items()}
    d.eval()
    d(x, y)
    d.train()
    with torch.no_grad():
        d(x, y)
    for k, v in d.adversary.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert d._acc_n == 2 and 0 <= d.disc_acc_epoch <= 1
    d.on_epoch(1, 2)
    assert d.disc_acc_epoch is None and d.last_disc_acc is None


def test_advfeat_terms_against_an_independent_computation():
    d = _build("advfeat", adv_weight=0.5, l1_weight=3.0).train()
    x, y = _batch()
    before = copy.deepcopy(d.adversary.net)
    with kd.capture(d.student, ["layer3"]) as fs:
        logits_s = d.student(x)
    f_s = fs["layer3"]
    state = {k: v.clone() for k, v in d.student.state_dict().items()}
    d.student.load_state_dict(state)
    logits, terms = d(x, y)
    with torch.no_grad(), kd.capture(d.teacher, ["layer3"]) as ft:
        d.teacher(x)
    f_t = ft["layer3"]
    net = copy.deepcopy(before)
    for p in net.parameters():
        p.requires_grad_(True)
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999), foreach=False)
    d_loss = discriminator_bce_loss(net(f_t), net(f_s.detach()))
    d_loss.backward()
    opt.step()
    with torch.no_grad():
        score = net(f_s).double()[:, 0]
    adv = -torch.log(torch.sigmoid(score)).mean().item()
    l1 = (f_s.double() - f_t.double()).abs().mean().item()
    assert terms["adv"].item() == pytest.approx(0.5 * adv, rel=1e-4)
    assert terms["l1"].item() == pytest.approx(3.0 * l1, rel=1e-5)
    assert d.step_metrics["disc_loss"].item() == pytest.approx(d_loss.item(), rel=1e-5)
    torch.testing.assert_close(logits, logits_s)


def test_advfeat_connector_for_a_wider_teacher_and_shape_errors():
    d = _build("advfeat", teacher="resnet8x4")
    assert isinstance(d.connector, torch.nn.Conv2d)
    assert (d.connector.in_channels, d.connector.out_channels) == (64, 256)
    assert d.connector.weight.requires_grad
    x, y = _batch()
    _, terms = d.train()(x, y)
    assert all(torch.isfinite(v) for v in terms.values())
    s, t = _models()
    t.layer3 = torch.nn.Sequential(t.layer3, torch.nn.MaxPool2d(2))
    dd = kd.build("advfeat", s, t)
    with pytest.raises(ValueError, match=r"layer 'layer3'.*\(64, 4, 4\).*\(64, 2, 2\)"):
        dd.setup(_data())
    with pytest.raises(RuntimeError, match="setup"):
        kd.build("advfeat", *_models())(*_batch())


@pytest.mark.parametrize("name", ["advlogit", "advfeat"])
@pytest.mark.parametrize(
    "bad",
    [
        dict(ce_weight=-1.0),
        dict(adv_weight=-0.1),
        dict(l1_weight=-2.0),
        dict(disc_hidden=0),
        dict(disc_lr=0.0),
        dict(disc_beta2=1.0),
    ],
)
def test_bad_hyperparameters(name, bad):
    s, t = _models()
    with pytest.raises(ValueError, match=next(iter(bad))):
        kd.build(name, s, t, **bad)


# End to end: kd.run, history of the game, exact resume


@pytest.mark.parametrize("name", ["advlogit", "advfeat"])
def test_run_records_the_game_and_resumes_exactly(
    digits_config, tmp_path, monkeypatch, capsys, name
):
    cfg = digits_config(method=name, epochs=2)
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "uninterrupted"))
    reference = kd.run(cfg, progress=False)
    for h in reference.history:
        assert {"train_ce", "train_adv", "train_l1", "metric_disc_loss"} <= set(h)
        assert "train_disc_loss" not in h
        assert 0 <= h["metric_disc_acc"] <= 1
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "interrupted"))
    kd.run(kd.teacher_config(cfg), progress=False)  # interrupt the student only
    with monkeypatch.context() as m:
        _interrupt(m, epoch=1, after=2)
        with pytest.raises(KeyboardInterrupt):
            kd.run(cfg, progress=False)
    state = kloop.load_checkpoint(
        kruns.run_dir(cfg) / "checkpoint.pt", kruns.run_key(cfg)
    )["distiller"]
    steps = len(kdata.Loader(kloop.load_split(cfg, True), cfg.batch_size))
    assert int(state["adversary.adam_step"]) == steps
    assert state["adversary.exp_avg_sq_0"].abs().sum() > 0
    capsys.readouterr()
    resumed = kd.run(cfg, progress=False)
    assert "[resume]" in capsys.readouterr().out
    a = torch.load(Path(reference.path) / "model.pt", weights_only=True)
    b = torch.load(Path(resumed.path) / "model.pt", weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    for h, r in zip(resumed.history, reference.history, strict=True):
        assert {k: v for k, v in h.items() if k != "seconds"} == {
            k: v for k, v in r.items() if k != "seconds"
        }


def test_one_epoch_records_the_mean_of_the_batches_disc_loss_and_accuracy(
    digits_config, monkeypatch
):
    """metric_disc_acc / metric_disc_loss: the epoch's sample-weighted means of
    the discriminator's accuracy and loss on each batch before its step,
    recomputed here from a copy of the discriminator at that step."""
    cfg = digits_config(method="advlogit", epochs=1)
    batches = []
    step = Adversary.step

    def spy(self, real, fake, y):
        net = copy.deepcopy(self.net)
        with torch.no_grad():
            out_r, out_f = net(real).double(), net(fake).double()
        r, f = out_r[:, 0], out_f[:, 0]
        right = sum(int(v > 0) for v in r) + sum(int(v < 0) for v in f)
        loss = (
            torch.log1p(torch.exp(-r)).mean()
            + torch.log1p(torch.exp(f)).mean()
            + F.cross_entropy(out_r[:, 1:], y)
            + F.cross_entropy(out_f[:, 1:], y)
        )
        batches.append((len(y), right / (len(r) + len(f)), loss.item()))
        return step(self, real, fake, y)

    monkeypatch.setattr(Adversary, "step", spy)
    res = kd.run(cfg, progress=False)
    sizes = [n for n, _, _ in batches]
    total = len(kd.load_split(cfg, True))  # the 300 images less validation
    assert total % 64 and sizes == [64] * (total // 64) + [total % 64]
    (h,) = res.history
    acc = sum(n * a for n, a, _ in batches) / total
    loss = sum(n * v for n, _, v in batches) / total
    assert h["metric_disc_acc"] == pytest.approx(acc, abs=1e-7)
    assert h["metric_disc_loss"] == pytest.approx(loss, rel=1e-5)
    assert {"train_ce", "train_adv", "train_l1"} <= set(h)
    assert not {"train_disc_acc", "train_disc_loss"} & set(h)
