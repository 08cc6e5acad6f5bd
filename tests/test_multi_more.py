"""Feature-level ensembles of several teachers (survey 2.3.3): FEED.

``feed_loss`` against a float64 reference with explicit loops, its
properties (scale invariance per sample, zero for proportional maps) and
errors; the distiller's terms against an independent forward, with one
teacher and with a list, live and precomputed; what each term trains; bad
inputs; the multi-teacher pipeline with ``feed``, and training through
``kd.run`` with two finished teacher runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdutils as kd
from kdutils import runs as kruns
from kdutils.losses import feed_loss
from kdutils.pipelines import multi_teacher

B, K, C, S = 6, 10, 3, 16


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, S, S, generator=g)
    y = torch.randint(0, K, (B,), generator=g)
    return x, y


def _models(seed: int = 0):
    torch.manual_seed(seed)
    student = kd.create_model("resnet8", num_classes=K, in_channels=C)
    teachers = nn.ModuleList(
        [
            kd.create_model("resnet14", num_classes=K, in_channels=C),
            kd.create_model("resnet8_w16-20-40-80", num_classes=K, in_channels=C),
        ]
    )
    return student, teachers


def _feed_loops(maps_s, maps_t) -> float:
    total = 0.0
    for fs, ft in zip(maps_s, maps_t, strict=True):
        fs, ft = fs.detach().double().numpy(), ft.detach().double().numpy()
        err, n = 0.0, 0
        for b in range(fs.shape[0]):
            a, t = fs[b].ravel(), ft[b].ravel()
            a, t = a / np.sqrt((a**2).sum()), t / np.sqrt((t**2).sum())
            for d in range(len(a)):
                err += abs(a[d] - t[d])
                n += 1
        total += err / n
    return total


def test_feed_loss_against_float64_loops():
    g = torch.Generator().manual_seed(0)
    maps_s = [
        torch.randn(4, 5, 3, 3, generator=g),
        torch.randn(4, 7, 3, 3, generator=g),
    ]
    maps_t = [torch.rand(4, 5, 3, 3, generator=g), torch.rand(4, 7, 3, 3, generator=g)]
    assert feed_loss(maps_s, maps_t).item() == pytest.approx(
        _feed_loops(maps_s, maps_t), rel=1e-5
    )


def test_feed_loss_ignores_each_samples_scale_and_vanishes_for_proportional_maps():
    g = torch.Generator().manual_seed(1)
    f_s, f_t = torch.randn(4, 6, 2, 2, generator=g), torch.rand(4, 6, 2, 2, generator=g)
    scale = torch.rand(4, 1, 1, 1, generator=g) + 0.1
    torch.testing.assert_close(feed_loss([f_s * scale], [f_t]), feed_loss([f_s], [f_t]))
    torch.testing.assert_close(feed_loss([f_s], [f_t / scale]), feed_loss([f_s], [f_t]))
    assert feed_loss([3 * f_t], [f_t]).item() < 1e-7
    # Summed over teachers: two copies of one pair give twice its value.
    torch.testing.assert_close(
        feed_loss([f_s, f_s], [f_t, f_t]), 2 * feed_loss([f_s], [f_t])
    )


@pytest.mark.parametrize(
    "maps_s, maps_t, words",
    [
        ([], [], "one transformed student map per teacher"),
        ([torch.rand(2, 3, 2, 2)], [], "one transformed student map per teacher"),
        ([torch.rand(2, 3, 2, 2)], [torch.rand(2, 4, 2, 2)], "teacher 0"),
    ],
)
def test_feed_loss_rejects_mismatched_maps(maps_s, maps_t, words):
    with pytest.raises(ValueError, match=words):
        feed_loss(maps_s, maps_t)


def test_feed_terms_against_an_independent_forward():
    student, teachers = _models()
    d = kd.build("feed", student, teachers).train()
    assert d.teacher_layers == ("0.layer3", "1.layer3")
    assert [t[-2].out_channels for t in d.transforms] == [64, 80]
    x, y = _batch()
    state = {k: v.clone() for k, v in d.state_dict().items()}
    logits, terms = d(x, y)
    d.load_state_dict(state)
    with kd.capture(student, ["layer3"]) as f:
        z = student(x)
    maps_t = []
    with torch.no_grad():
        for t in teachers:
            with kd.capture(t, ["layer3"]) as ft:
                t(x)
            maps_t.append(ft["layer3"])
    maps_s = []
    for tr in d.transforms:
        h = f["layer3"]
        for layer in tr:  # conv, leaky ReLU (0.1), three times
            h = F.leaky_relu(layer(h), 0.1) if isinstance(layer, nn.Conv2d) else h
        maps_s.append(h)
    torch.testing.assert_close(logits, z)
    assert set(terms) == {"ce", "feed"}
    torch.testing.assert_close(terms["ce"], F.cross_entropy(z, y))
    assert terms["feed"].item() == pytest.approx(
        500.0 * _feed_loops(maps_s, maps_t), rel=1e-5
    )


def test_precomputed_teacher_outputs_give_the_same_terms():
    student, teachers = _models(seed=2)
    d = kd.build("feed", student, teachers).eval()
    x, y = _batch(2)
    _, live = d(x, y)
    _, cached = d(x, y, teacher_out=d.teacher_outputs(x))
    for k in live:
        torch.testing.assert_close(live[k], cached[k])


def test_one_teacher_is_a_list_of_one():
    student, teachers = _models(seed=3)
    d = kd.build("feed", student, teachers[0]).eval()
    assert d.teacher_layers == ("layer3",) and len(d.transforms) == 1
    x, y = _batch(3)
    _, terms = d(x, y)
    assert torch.isfinite(terms["feed"])


def test_what_each_term_trains():
    student, teachers = _models(seed=4)
    d = kd.build("feed", student, teachers).train()
    x, y = _batch(4)
    _, terms = d(x, y)
    stem = student.stem[0].weight
    g_feed = torch.autograd.grad(
        terms["feed"],
        [stem, student.fc.weight, *d.transforms.parameters()],
        retain_graph=True,
        allow_unused=True,
    )
    assert g_feed[0].abs().sum() > 0  # the student's features
    assert g_feed[1] is None  # not its classifier
    assert all(g is not None for g in g_feed[2:])  # every transformation
    (g_ce,) = torch.autograd.grad(
        terms["ce"], [d.transforms[0][0].weight], allow_unused=True
    )
    assert g_ce is None
    assert all(not p.requires_grad for p in teachers.parameters())


@pytest.mark.parametrize(
    "bad, words",
    [(dict(feed_weight=-1.0), "feed_weight"), (dict(ce_weight=-0.1), "ce_weight")],
)
def test_feed_rejects_bad_hyperparameters(bad, words):
    with pytest.raises(ValueError, match=words):
        kd.build("feed", *_models(), **bad)


def test_feed_rejects_maps_of_different_sizes():
    torch.manual_seed(0)
    student = kd.create_model("resnet8", num_classes=K, in_channels=C)
    teacher = kd.create_model("resnet14", num_classes=K, in_channels=C)
    d = kd.build("feed", student, teacher)
    x, y = _batch()
    out = d.teacher_outputs(x)
    out["layer3"] = F.avg_pool2d(out["layer3"], 2)
    with pytest.raises(ValueError, match="one size"):
        d(x, y, teacher_out=out)


def test_the_pipeline_accepts_feed_and_trains_it(digits_config):
    cfg = digits_config(method="feed", teacher="resnet8", epochs=1, teacher_epochs=1)
    out = multi_teacher(cfg, ("resnet8", "resnet14"), progress=False)
    student = out[-1]
    assert [t["key"] for t in student.teacher] == [r.key for r in out[:2]]
    assert {"train_ce", "train_feed"} <= set(student.history[-1])
    assert np.isfinite(student.history[-1]["train_feed"])
    d = kd.load_distiller(student)
    assert len(d.transforms) == 2
    assert kruns.run_id(out[0]) in student.config["teacher_runs"]
