"""Chapter 17's verification protocol: class split, hard copies, networks, pairs, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from kdutils import verification as vf


def test_training_and_heldout_classes_are_disjoint_and_as_stated():
    assert set(vf.TRAIN_CLASSES).isdisjoint(vf.HELDOUT_CLASSES)
    assert sorted(vf.TRAIN_CLASSES + vf.HELDOUT_CLASSES) == list(range(10))
    full = vf.train_data()
    # labelled by position in TRAIN_CLASSES: the ArcFace classes 0..5
    assert len(full) == 36000 and set(full.labels.tolist()) == set(range(6))
    raw = vf._split(True)
    first = [int((raw.labels == c).nonzero()[0]) for c in vf.TRAIN_CLASSES]
    for k, i in enumerate(first):
        j = int((full.labels == k).nonzero()[0])
        assert torch.equal(full.images[j], raw.images[i])
    held = vf.heldout_data()
    assert len(held) == 4000 and set(held.labels.tolist()) == set(vf.HELDOUT_CLASSES)
    part = vf.heldout_data(400, seed=1)
    assert (
        torch.bincount(part.labels, minlength=10)[list(vf.HELDOUT_CLASSES)].tolist()
        == [100] * 4
    )
    sub = vf.train_data(600, seed=3)
    assert torch.bincount(sub.labels).tolist() == [100] * 6
    again = vf.train_data(600, seed=3)
    assert torch.equal(sub.images, again.images)
    assert vf.class_names(vf.HELDOUT_CLASSES) == [
        "Trouser",
        "Pullover",
        "Sneaker",
        "Bag",
    ]


def test_degrade_is_a_low_resolution_copy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 28, 28, generator=g, dtype=torch.float64)
    torch.testing.assert_close(vf.degrade(x, 28), x)  # nothing to lose
    y = vf.degrade(x, 7)
    assert y.shape == x.shape
    # independent: 4x4 block means, then bilinear upsampling (half-pixel centres)
    blocks = x.reshape(3, 1, 7, 4, 7, 4).mean((3, 5))
    up = torch.nn.functional.interpolate(blocks, size=(28, 28), mode="bilinear")
    torch.testing.assert_close(y, up)
    c = torch.full((1, 1, 28, 28), 2.5, dtype=torch.float64)
    torch.testing.assert_close(vf.degrade(c, 5), c)  # constants survive
    with pytest.raises(ValueError, match="low_res must be"):
        vf.degrade(x, 0)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        vf.degrade(x[0], 7)


def test_occlude_masks_the_lower_rows_with_the_background():
    x = vf.to_input(vf.heldout_data(8).images)
    y = vf.occlude(x, 10)
    torch.testing.assert_close(y[..., :18, :], x[..., :18, :])
    black = vf.to_input(torch.zeros(1, 1, 28, 28, dtype=torch.uint8))[0, 0, 0, 0]
    torch.testing.assert_close(y[..., 18:, :], black.expand_as(y[..., 18:, :]))
    torch.testing.assert_close(vf.harden(x, "mask", 10), y)
    torch.testing.assert_close(vf.harden(x, "lowres", 7), vf.degrade(x, 7))
    with pytest.raises(ValueError, match="rows must be an integer"):
        vf.occlude(x, 28)
    with pytest.raises(ValueError, match="hard must be one of"):
        vf.harden(x, "blur", 3)


@pytest.mark.parametrize(
    "name,widths,convs",
    [("cnn_w8-16-32", (8, 16, 32), 1), ("cnn_w4-4-8_c2", (4, 4, 8), 2)],
)
def test_embedding_network_shapes(name, widths, convs):
    assert vf.check_embedder_name(name) == (widths, convs)
    net = vf.create_embedder(name, emb_dim=24)
    x = torch.randn(5, 1, 28, 28)
    assert net(x).shape == (5, 24)
    assert net.features(x).shape == (5, widths[2], 3, 3)
    convs_seen = sum(isinstance(m, torch.nn.Conv2d) for m in net.modules())
    assert convs_seen == 3 * convs
    head = vf.ArcFaceHead(24, 6)
    assert head.weight.shape == (24, 6)


@pytest.mark.parametrize(
    "bad", ["resnet8", "cnn_w8-16", "cnn_w0-8-8", "cnn_w8-8-8_c0", 3]
)
def test_bad_network_name_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="unknown embedding network"):
        vf.create_embedder(bad)


def test_embed_gives_unit_vectors_and_keeps_the_mode():
    net = vf.create_embedder("cnn_w4-4-8", emb_dim=8).train()
    imgs = vf.heldout_data().images[:30]
    e = vf.embed(net, imgs, batch=7)
    assert e.shape == (30, 8) and net.training
    torch.testing.assert_close(e.norm(dim=1), torch.ones(30))
    assert not torch.allclose(vf.embed(net, imgs, hard=("lowres", 7)), e)
    assert not torch.allclose(vf.embed(net, imgs, hard=("mask", 14)), e)


def test_pairs_are_balanced_fixed_and_correct():
    labels = vf.heldout_data().labels
    p = vf.make_pairs(labels, 600, seed=1)
    assert len(p) == 600 and int(p.same.sum()) == 300
    assert torch.equal(labels[p.a] == labels[p.b], p.same)
    assert (p.a != p.b).all()
    q = vf.make_pairs(labels, 600, seed=1)
    assert torch.equal(p.a, q.a) and torch.equal(p.b, q.b)
    assert not torch.equal(p.a, vf.make_pairs(labels, 600, seed=2).a)
    # every tenth of the list (a fold) holds both kinds
    for fold in p.same.view(10, -1):
        assert 0 < int(fold.sum()) < len(fold)
    # every class appears on both sides of the negatives
    neg = ~p.same
    assert set(labels[p.b[neg]].tolist()) == set(vf.HELDOUT_CLASSES)
    with pytest.raises(ValueError, match="n_pairs must be an even integer"):
        vf.make_pairs(labels, 601)
    with pytest.raises(ValueError, match="two classes"):
        vf.make_pairs(torch.zeros(10, dtype=torch.long), 20)


def _scores(n=400, seed=0):
    g = np.random.default_rng(seed)
    same = np.r_[np.ones(n // 2, bool), np.zeros(n // 2, bool)]
    g.shuffle(same)
    s = np.where(same, g.normal(0.6, 0.2, n), g.normal(0.2, 0.2, n)).round(3)  # ties
    return torch.tensor(s), torch.tensor(same)


def test_kfold_accuracy_matches_a_brute_force_search():
    s, y = _scores()
    got = vf.kfold_accuracy(s, y, folds=10)
    s, y = s.numpy(), y.numpy()
    accs = []
    for k in range(10):
        test = np.zeros(len(s), bool)
        test[40 * k : 40 * (k + 1)] = True
        tr_s, tr_y = s[~test], y[~test]
        best_t, best = None, -1
        u = sorted(set(tr_s.tolist()))
        # the definition: midpoints between distinct training scores and the
        # two ends, in increasing order; the first best (the smallest) wins
        cands = (
            [u[0] - 1]
            + [(a + b) / 2 for a, b in zip(u[:-1], u[1:], strict=True)]
            + [u[-1] + 1]
        )
        for t in cands:
            acc = ((tr_s > t) == tr_y).mean()
            if acc > best:
                best, best_t = acc, t
        accs.append(((s[test] > best_t) == y[test]).mean())
    assert got["acc"] == pytest.approx(np.mean(accs))
    assert got["acc_std"] == pytest.approx(np.std(accs))


def test_tar_at_far_matches_a_direct_count():
    s, y = _scores(2000, seed=1)
    for far in (1e-2, 5e-2, 1e-3):
        got = vf.tar_at_far(s, y, far)
        sn, yn = s.numpy(), y.numpy()
        neg = sn[~yn]
        k = int(far * len(neg))
        # the lowest threshold among the scores at which at most k negatives pass
        t = min(v for v in neg if (neg > v).sum() <= k)
        assert got == pytest.approx((sn[yn] > t).mean())
        assert (neg > t).sum() <= k
    with pytest.raises(ValueError, match="needs at least 10000 different pairs"):
        vf.tar_at_far(s, y, 1e-4)
    with pytest.raises(ValueError, match="both same and different"):
        vf.tar_at_far(s, torch.ones_like(y), 0.1)


def test_roc_points_match_scikit_learn():
    s, y = _scores(300, seed=2)
    fpr, tpr = vf.roc_points(s, y)
    ref_fpr, ref_tpr, _ = roc_curve(y.numpy(), s.numpy(), drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_metrics_of_a_perfect_and_a_useless_score():
    y = torch.tensor([True, False] * 100)
    m = vf.verification_metrics(y.double(), y, fars=(1e-2,))
    assert m["acc"] == 1.0 and m["tar@0.01"] == 1.0
    m = vf.verification_metrics(torch.zeros(200, dtype=torch.float64), y, fars=(1e-2,))
    assert m["acc"] == pytest.approx(0.5, abs=0.06) and m["tar@0.01"] == 0.0
    with pytest.raises(ValueError, match="one length"):
        vf.kfold_accuracy(torch.zeros(5), torch.ones(4, dtype=torch.bool))
