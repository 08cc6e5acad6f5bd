"""Chapter 17's losses against independent computations of their definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kdutils import losses as L

G = torch.Generator().manual_seed(0)


def _emb(b=12, d=6, **kw):
    return torch.randn(b, d, generator=G, dtype=torch.float64, **kw)


def _arcface_numpy(emb, w, y, s, m):
    """Logits from angles: s cos(theta_y + m) for the true class where
    theta_y + m < pi, else s (cos theta_y - m sin m'), m' = pi - m."""
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    c = w / np.linalg.norm(w, axis=0, keepdims=True)
    cos = np.clip(e @ c, -1, 1)
    out = cos.copy()
    for i, k in enumerate(y):
        theta = math.acos(cos[i, k])
        if theta + m < math.pi:
            out[i, k] = math.cos(theta + m)
        else:
            out[i, k] = cos[i, k] - math.sin(math.pi - m) * m
    return s * out


@pytest.mark.parametrize("s,m", [(64.0, 0.5), (16.0, 0.3), (8.0, 1.2)])
def test_arcface_matches_the_angle_definition(s, m):
    emb, w = _emb(), torch.randn(6, 5, generator=G, dtype=torch.float64)
    y = torch.randint(5, (12,), generator=G)
    got = L.arcface_logits(emb, w, y, s, m)
    want = _arcface_numpy(emb.numpy(), w.numpy(), y.numpy(), s, m)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)
    logp = torch.log_softmax(torch.tensor(want), 1)
    ce = -logp[torch.arange(12), y].mean()
    torch.testing.assert_close(L.arcface_loss(emb, w, y, s, m), ce)


def test_arcface_without_margin_is_the_scaled_cosine_softmax():
    emb, w = _emb(), torch.randn(6, 4, generator=G, dtype=torch.float64)
    y = torch.randint(4, (12,), generator=G)
    cos = torch.nn.functional.normalize(emb, dim=1) @ torch.nn.functional.normalize(
        w, dim=0
    )
    torch.testing.assert_close(L.arcface_logits(emb, w, y, 10.0, 0.0), 10 * cos)
    # a margin only lowers the true class's logit, so it raises the loss
    assert L.arcface_loss(emb, w, y, 10.0, 0.3) > L.arcface_loss(emb, w, y, 10.0, 0.0)


def test_arcface_bad_input_is_one_clear_error():
    emb, w, y = _emb(), torch.randn(6, 4), torch.zeros(12, dtype=torch.long)
    with pytest.raises(ValueError, match=r"weight must be \(D, C\)"):
        L.arcface_logits(emb, w.t(), y)
    with pytest.raises(ValueError, match="labels must be"):
        L.arcface_logits(emb, w.double(), y[:3])
    with pytest.raises(ValueError, match="margin in"):
        L.arcface_logits(emb, w.double(), y, 16.0, 2.0)


def test_histogram_matches_a_loop_over_bins():
    sims = torch.tensor([0.9, 0.2, -0.3, 0.55], dtype=torch.float64)
    got = L.ddl_histogram(sims)
    assert got.shape == (1, 1000)
    want = np.zeros(1000)
    for k in range(1000):
        t = k * 0.001
        want[k] = sum(math.exp(-0.5 * ((s - t) / 0.1) ** 2) for s in sims.tolist())
    np.testing.assert_allclose(got[0].numpy(), want / want.sum(), rtol=1e-9)
    assert got.sum().item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        L.ddl_histogram(torch.zeros(0))


def test_positive_similarities_keep_those_above_the_threshold():
    a, b = _emb(20), _emb(20)
    cos = torch.nn.functional.cosine_similarity(a, b)
    torch.testing.assert_close(L.ddl_pos_similarities(a, b), cos[cos > 0])
    torch.testing.assert_close(L.ddl_pos_similarities(a, b, 0.3), cos[cos > 0.3])


def test_negative_similarities_are_the_hardest_later_pair_floored_at_zero():
    e = _emb(9, 4)
    y = torch.tensor([0, 1, 0, 2, 1, 0, 3, 2, 1])
    u = (e / e.norm(dim=1, keepdim=True)).numpy()
    for labels in (None, y):
        want = []
        for i in range(9):
            row = [0.0]  # the zeros of the triangle the authors' max also sees
            for j in range(i + 1, 9):
                if labels is None or labels[i] != labels[j]:
                    row.append(float(u[i] @ u[j]))
            want.append(max(row))
        got = L.ddl_neg_similarities(e, labels)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


def test_kl_is_the_authors_smoothed_sum():
    p = L.ddl_histogram(torch.tensor([0.7, 0.8, 0.75], dtype=torch.float64))
    q = L.ddl_histogram(torch.tensor([0.2, 0.4], dtype=torch.float64))
    a, d = p[0].numpy() + 1e-9, q[0].numpy() + 1e-9
    assert L.ddl_kl(p, q).item() == pytest.approx(
        float((a * (np.log(a) - np.log(d))).sum())
    )
    assert L.ddl_kl(p, p).item() == pytest.approx(0.0, abs=1e-12)


def test_ddl_loss_matches_the_authors_structure():
    """The whole loss recomputed as ddl.py's forward does: lists of branches,
    branch 0 (easy) the anchor, the order loss over every (neg, pos) pair."""
    easy, hard = _emb(16), _emb(16)
    y_e, y_h = torch.arange(16) % 5, torch.arange(16) % 3
    neg = [L.ddl_neg_similarities(easy, y_e), L.ddl_neg_similarities(hard, y_h)]
    pos = [
        L.ddl_pos_similarities(easy[:8], easy[8:] + 2 * easy[:8]),
        L.ddl_pos_similarities(hard[:8], hard[8:] + hard[:8]),
    ]
    terms = L.ddl_loss(neg[1], pos[1], neg[0], pos[0], 0.1, 0.02, 0.5)

    def hist(v):
        t = np.arange(0, 1.0, 0.001)
        h = np.exp(-0.5 * ((v.numpy()[:, None] - t[None]) / 0.1) ** 2).sum(0)
        return h / h.sum()

    def kl(a, d):
        a, d = a + 1e-9, d + 1e-9
        return (a * np.log(a / d)).sum()

    assert terms["ddl_pos"].item() == pytest.approx(
        0.1 * kl(hist(pos[0]), hist(pos[1]))
    )
    assert terms["ddl_neg"].item() == pytest.approx(
        0.02 * kl(hist(neg[0]), hist(neg[1]))
    )
    order = sum(n.mean().item() - p.mean().item() for n in neg for p in pos)
    assert terms["ddl_order"].item() == pytest.approx(0.5 * order)


def test_ddl_gradient_reaches_both_branches_and_vanishes_for_equal_branches():
    easy, hard = _emb(10, requires_grad=True), _emb(10, requires_grad=True)
    t = L.ddl_loss(
        L.ddl_neg_similarities(hard),
        L.ddl_pos_similarities(hard[:5], hard[5:]),
        L.ddl_neg_similarities(easy),
        L.ddl_pos_similarities(easy[:5], easy[5:]),
    )
    (t["ddl_pos"] + t["ddl_neg"]).backward()
    # the authors' anchor (the easy branch) is not detached
    assert easy.grad.abs().sum() > 0 and hard.grad.abs().sum() > 0
    same = _emb(10)
    t = L.ddl_loss(
        L.ddl_neg_similarities(same),
        L.ddl_pos_similarities(same[:5], same[5:]),
        L.ddl_neg_similarities(same),
        L.ddl_pos_similarities(same[:5], same[5:]),
    )
    assert t["ddl_pos"].item() == pytest.approx(0, abs=1e-12)
    assert t["ddl_neg"].item() == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="no positive pair above the threshold"):
        L.ddl_loss(torch.ones(3), torch.zeros(0), torch.ones(3), torch.ones(3))


def test_embedding_cosine_loss():
    s, t = _emb(), _emb()
    want = 1 - np.mean(
        [
            float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
            for a, b in zip(s.numpy(), t.numpy(), strict=True)
        ]
    )
    assert L.embedding_cosine_loss(s, t).item() == pytest.approx(want)
    assert L.embedding_cosine_loss(s, 3 * s).item() == pytest.approx(0.0, abs=1e-12)
    assert L.embedding_cosine_loss(s, -s).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="one shape"):
        L.embedding_cosine_loss(s, t[:, :3])
