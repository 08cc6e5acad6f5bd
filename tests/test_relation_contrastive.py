"""CRCD (survey 2.2.3): the relation scores against the authors' definition
written out with explicit loops (numpy float64), the gradient element against
autograd, properties of relations, the Distiller's terms and its errors."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

import kdutils as kd
from kdutils import data as kdata
from kdutils.losses import (
    RelationContrastMemory,
    ce_feature_grad,
    crcd_relation_scores,
    crd_nce_loss,
)


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


def _reference(v, bank, anchor_idx, contrast, nce_t):
    """The authors' computation: differences shifted by 1e-6, normalised, one
    (sample, anchor) row at a time, row b * A + a."""
    v, bank = v.detach().numpy(), bank.numpy()
    rows = []
    for b in range(len(v)):
        for a in anchor_idx.tolist():
            r_s = v[b] - bank[a] + 1e-6
            r_s = r_s / np.linalg.norm(r_s)
            row = []
            for j in contrast[b].tolist():
                r_t = bank[j] - bank[a] + 1e-6
                row.append(math.exp(float(r_t @ r_s) / np.linalg.norm(r_t) / nce_t))
            rows.append(row)
    return np.array(rows)


@pytest.mark.parametrize("n_bank", [12, 400])  # whole-bank and gathered paths
def test_relation_scores_equal_the_authors_definition(n_bank):
    bank = _unit(n_bank, 6, seed=1)
    v = _unit(5, 6, seed=2)
    idx = torch.tensor([0, 3, 4, 7, 9])
    g = torch.Generator().manual_seed(3)
    negatives = torch.randint(0, n_bank, (5, 4), generator=g)
    negatives[1, 2] = idx[3]  # a negative that is another sample's anchor
    contrast = torch.cat([idx[:, None], negatives], dim=1)  # (B, K+1)
    ours = crcd_relation_scores(v, bank, idx, contrast, 0.05)
    assert ours.shape == (25, 5)
    np.testing.assert_allclose(
        ours.numpy(), _reference(v, bank, idx, contrast, 0.05), rtol=1e-4
    )


def test_relations_ignore_a_common_translation_and_peak_at_a_copy():
    bank = _unit(20, 8, seed=4)
    idx = torch.tensor([1, 5, 6, 11])
    contrast = torch.cat(
        [idx[:, None], torch.tensor([[2, 3], [4, 7], [8, 9], [0, 13]])], 1
    )
    v = _unit(4, 8, seed=5)
    u = torch.randn(8, dtype=torch.float64)
    torch.testing.assert_close(
        crcd_relation_scores(v + u, bank + u, idx, contrast, 0.1),
        crcd_relation_scores(v, bank, idx, contrast, 0.1),
    )
    # A student that reproduces the teacher's entries has, for every anchor
    # but its own, the positive's relation exactly: cosine 1, the top score.
    out = crcd_relation_scores(bank[idx], bank, idx, contrast, 0.1).reshape(4, 4, 3)
    off = ~torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(
        out[..., 0][off], torch.full((12,), math.exp(10.0), dtype=torch.float64)
    )
    assert (out[..., 1:][off] < math.exp(10.0)).all()


def test_feature_gradient_equals_autograd():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    fc = torch.nn.Linear(5, 4).double()
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    logits = fc(feats)
    (expected,) = torch.autograd.grad(
        torch.nn.functional.cross_entropy(logits, y), feats, create_graph=True
    )
    ours = ce_feature_grad(logits, fc.weight, y)
    torch.testing.assert_close(ours, expected)
    # It stays differentiable in the classifier, as with create_graph=True.
    (gw,) = torch.autograd.grad(ours.sum(), fc.weight, retain_graph=True)
    (gw_ref,) = torch.autograd.grad(expected.sum(), fc.weight)
    torch.testing.assert_close(gw, gw_ref)


def test_bad_inputs_are_named():
    bank, v = _unit(10, 4), _unit(3, 4)
    idx, contrast = torch.arange(3), torch.zeros(3, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="bank"):
        crcd_relation_scores(_unit(3, 5), bank, idx, contrast, 0.05)
    with pytest.raises(ValueError, match="contrast"):
        crcd_relation_scores(v, bank, idx, contrast[:2], 0.05)
    with pytest.raises(ValueError, match="nce_t"):
        crcd_relation_scores(v, bank, idx, contrast, 0.0)
    with pytest.raises(ValueError, match="weight"):
        ce_feature_grad(torch.zeros(3, 4), torch.zeros(5, 2), torch.zeros(3).long())
    with pytest.raises(ValueError, match="labels"):
        ce_feature_grad(torch.zeros(3, 4), torch.zeros(4, 2), torch.zeros(2).long())


def test_memory_starts_and_stays_at_unit_length():
    labels = torch.arange(30) % 3
    mem = RelationContrastMemory(8, labels, nce_k=5, seed=0).train()
    assert torch.allclose(mem.memory_s.norm(dim=1), torch.ones(30))
    v = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    p_s, p_t = mem(v, v.flip(0), torch.tensor([0, 4, 8, 9]))
    assert p_s.shape == p_t.shape == (16, 6) and (mem.Z > 0).all()
    assert torch.allclose(mem.memory_t.norm(dim=1), torch.ones(30))


def _models():
    torch.manual_seed(0)
    return kd.create_model("resnet8", 10, 1), kd.create_model("resnet14", 10, 1)


def _data(n=40):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
    return kdata.TensorData(images, torch.arange(n) % 10, "fashion-mnist")


def test_distiller_terms_are_the_weighted_losses():
    data = _data()
    s, t = _models()
    d = kd.build("crcd", s, t, nce_k=16, crcd_weight=2.0, grad_weight=0.5).train()
    d.setup(data)
    mem, grad_mem = copy.deepcopy(d.memory), copy.deepcopy(d.grad_memory)
    x, y, idx = (
        kdata.normalize(data.images[:8], data.info),
        data.labels[:8],
        torch.arange(8),
    )
    _, terms = d(x, y, idx=idx)
    assert set(terms) == {"ce", "kd", "crcd", "crcd_grad"}
    with kd.capture(s, ["pool"]) as fs:
        logits_s = s(x)  # train-mode BN: the same batch gives the same features
    t_out = d.teacher_outputs(x)
    contrast = mem.sample(idx)
    p_s, p_t = mem(d.embed_s(fs["pool"]), d.embed_t(t_out["pool"]), idx, contrast)
    expected = 2.0 * (crd_nce_loss(p_s, 40) + crd_nce_loss(p_t, 40))
    torch.testing.assert_close(terms["crcd"], expected, rtol=1e-5, atol=1e-6)
    g_s = ce_feature_grad(logits_s, s.fc.weight, y)
    g_t = ce_feature_grad(t_out["logits"], t.fc.weight, y)
    q_s, q_t = grad_mem(d.grad_embed_s(g_s), d.grad_embed_t(g_t), idx, contrast)
    expected = 0.5 * (crd_nce_loss(q_s, 40) + crd_nce_loss(q_t, 40))
    torch.testing.assert_close(terms["crcd_grad"], expected, rtol=1e-5, atol=1e-6)


def test_defaults_follow_the_authors_script_and_grad_weight_zero_drops_the_term():
    s, t = _models()
    h = kd.build("crcd", s, t).hparams()
    assert (h["nce_k"], h["nce_t"], h["nce_m"], h["feat_dim"]) == (500, 0.05, 0.5, 128)
    assert (h["crcd_weight"], h["kd_weight"], h["ce_weight"], h["T"]) == (
        1.0,
        0.9,
        1.0,
        4.0,
    )
    d = kd.build("crcd", s, t, grad_weight=0.0, nce_k=8)
    d.setup(_data())
    assert d.grad_memory is None
    _, terms = d(torch.randn(4, 1, 12, 12), torch.arange(4), idx=torch.arange(4))
    assert "crcd_grad" not in terms


def test_needs_setup_indices_a_classifier_and_sane_hyperparameters():
    s, t = _models()
    d = kd.build("crcd", s, t, nce_k=8)
    x = torch.randn(4, 1, 12, 12)
    with pytest.raises(RuntimeError, match="setup"):
        d(x, torch.arange(4))
    d.setup(_data())
    with pytest.raises(ValueError, match="idx"):
        d(x, torch.arange(4))
    assert {"memory.memory_s", "grad_memory.memory_t", "memory.Z"} <= set(
        d.state_dict()
    )
    headless = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(144, 10))
    with pytest.raises(ValueError, match="fc"):
        kd.build("crcd", headless, t)
    for bad in (
        dict(nce_k=0),
        dict(nce_t=0.0),
        dict(nce_m=1.0),
        dict(grad_weight=-1.0),
    ):
        with pytest.raises(ValueError):
            kd.build("crcd", s, t, **bad)
