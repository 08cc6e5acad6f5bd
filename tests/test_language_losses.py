"""The language-model distillation losses (kdutils/losses/language.py).

Each loss against an independent float64 numpy computation written from its
definition with explicit loops, plus its properties (T^2 scaling, the mask,
zero when the student equals the teacher where that holds, invariances),
gradients reaching the student only, and the errors for bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import kdutils as kd
from kdutils.losses import (
    lm_kd_loss,
    lrc_cos_nce,
    lrc_loss,
    pkd_layers,
    pkd_loss,
    tinybert_attention_loss,
    tinybert_hidden_loss,
    tinybert_layer_map,
    tinybert_pred_loss,
)

B, L, V, H = 3, 5, 7, 2


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _hiddens(n_layers: int, d: int, seed: int, b: int = B) -> list[torch.Tensor]:
    g = _gen(seed)
    return [torch.randn(b, L, d, generator=g) for _ in range(n_layers + 1)]


def _scores(n_layers: int, seed: int, masked: float = float("-inf")) -> list:
    """Pre-softmax scores with the causal mask applied as ``masked``."""
    g = _gen(seed)
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    out = []
    for _ in range(n_layers):
        a = 3 * torch.randn(B, H, L, L, generator=g)
        out.append(a.masked_fill(future, masked))
    return out


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().double().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _linear(d_in: int, d_out: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out)


def _apply(lin: nn.Linear, x: np.ndarray) -> np.ndarray:
    return _np(lin.weight) @ x + _np(lin.bias)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(np.linalg.norm(x), 1e-12)


# lm_kd_loss (DistilBERT)


def _lm_kd_ref(s, t, T, mask=None) -> float:
    s, t = _np(s), _np(t)
    total, n = 0.0, 0
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            if mask is not None and not mask[b][i]:
                continue
            ps, pt = _softmax(s[b, i] / T), _softmax(t[b, i] / T)
            total += sum(pt[v] * math.log(pt[v] / ps[v]) for v in range(len(pt)))
            n += 1
    return total / n * T * T


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_lm_kd_matches_reference(T):
    g = _gen(1)
    s, t = torch.randn(B, L, V, generator=g), torch.randn(B, L, V, generator=g)
    got = lm_kd_loss(s, t, T).item()
    assert got == pytest.approx(_lm_kd_ref(s, t, T), rel=1e-5)
    mask = torch.rand(B, L, generator=g) > 0.4
    mask[0, 0] = True
    got = lm_kd_loss(s, t, T, mask).item()
    assert got == pytest.approx(_lm_kd_ref(s, t, T, mask.tolist()), rel=1e-5)
    # a 0/1 integer mask selects the same positions
    assert lm_kd_loss(s, t, T, mask.long()).item() == pytest.approx(got, rel=1e-6)


def test_lm_kd_properties():
    g = _gen(2)
    s, t = torch.randn(B, L, V, generator=g), torch.randn(B, L, V, generator=g)
    assert lm_kd_loss(t.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    # T^2: dividing logits scaled by T by T gives the T = 1 divergence times T^2
    for T in (2.0, 5.0):
        scaled = lm_kd_loss(s * T, t * T, T).item()
        assert scaled == pytest.approx(T * T * lm_kd_loss(s, t, 1.0).item(), rel=1e-5)
    # the mask averages over the kept tokens only: changing the others is free
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, :2] = True
    s2 = s.clone()
    s2[:, 2:] += 10 * torch.randn(B, L - 2, V, generator=g)
    assert lm_kd_loss(s2, t, 2.0, mask).item() == pytest.approx(
        lm_kd_loss(s, t, 2.0, mask).item(), rel=1e-6
    )
    kept = lm_kd_loss(s[:, :2], t[:, :2], 2.0).item()
    assert lm_kd_loss(s, t, 2.0, mask).item() == pytest.approx(kept, rel=1e-6)


# BERT-PKD


def test_pkd_layers_follow_the_paper():
    assert pkd_layers(12, 6, "skip") == [2, 4, 6, 8, 10]
    assert pkd_layers(12, 6, "last") == [7, 8, 9, 10, 11]
    assert pkd_layers(12, 3, "skip") == [4, 8]
    assert pkd_layers(4, 2, "skip") == [2]
    assert pkd_layers(4, 2, "last") == [3]


def _pkd_ref(hs, ht, layers, positions, lin=None) -> float:
    total, count = 0.0, 0
    m = len(hs) - 1
    pos = range(L) if positions == "all" else [L - 1]
    for j, tj in zip(range(1, m), layers, strict=True):
        for b in range(B):
            for i in pos:
                x = _np(hs[j][b, i])
                if lin is not None:
                    x = _apply(lin, x)
                d = _unit(x) - _unit(_np(ht[tj][b, i]))
                total += float((d**2).sum())
                count += len(d)
    return total / count


@pytest.mark.parametrize("scheme", ["skip", "last"])
@pytest.mark.parametrize("positions", ["all", "last"])
def test_pkd_matches_reference(scheme, positions):
    hs, ht = _hiddens(3, 4, 3), _hiddens(6, 4, 4)
    got = pkd_loss(hs, ht, scheme=scheme, positions=positions).item()
    ref = _pkd_ref(hs, ht, pkd_layers(6, 3, scheme), positions)
    assert got == pytest.approx(ref, rel=1e-5)


def test_pkd_with_projection_and_layers():
    hs, ht = _hiddens(3, 4, 5), _hiddens(6, 6, 6)
    lin = _linear(4, 6, 0)
    got = pkd_loss(hs, ht, proj=lin, teacher_layers=[1, 5]).item()
    assert got == pytest.approx(_pkd_ref(hs, ht, [1, 5], "all", lin), rel=1e-5)


def test_pkd_properties():
    ht = _hiddens(4, 4, 7)
    # a student equal to the teacher's chosen layers, each vector rescaled
    # by a positive factor, has zero patient loss (PKD normalises)
    scale = torch.rand(B, L, 1, generator=_gen(8)) + 0.5
    hs = [ht[0], ht[2] * scale, ht[4]]
    assert pkd_loss(hs, ht).item() == pytest.approx(0.0, abs=1e-10)
    assert pkd_loss(_hiddens(2, 4, 9), ht).item() > 0.01


# TinyBERT


def test_tinybert_layer_map():
    assert tinybert_layer_map(4, 2) == [0, 2, 4]
    assert tinybert_layer_map(12, 4) == [0, 3, 6, 9, 12]
    assert tinybert_layer_map(3, 3) == [0, 1, 2, 3]


def _att_ref(a_s, a_t) -> float:
    k = len(a_t) // len(a_s)
    total = 0.0
    for m in range(1, len(a_s) + 1):
        s, t = _np(a_s[m - 1]), _np(a_t[m * k - 1])
        s = np.where(s <= -100, 0.0, s)
        t = np.where(t <= -100, 0.0, t)
        diff = 0.0
        for idx in np.ndindex(s.shape):
            diff += (s[idx] - t[idx]) ** 2
        total += diff / s.size
    return total


def test_tinybert_attention_matches_reference():
    a_s, a_t = _scores(2, 10), _scores(4, 11)
    got = tinybert_attention_loss(a_s, a_t).item()
    assert got == pytest.approx(_att_ref(a_s, a_t), rel=1e-5)


def test_tinybert_attention_ignores_the_mask_value():
    a_s, a_t = _scores(2, 12), _scores(4, 13)
    b_s, b_t = _scores(2, 12, masked=-1e4), _scores(4, 13, masked=-150.0)
    assert tinybert_attention_loss(a_s, a_t).item() == pytest.approx(
        tinybert_attention_loss(b_s, b_t).item(), rel=1e-6
    )
    # scores equal to the mapped teacher layers: zero
    same = [a_t[1].clone(), a_t[3].clone()]
    assert tinybert_attention_loss(same, a_t).item() == 0.0


def _hid_ref(hs, ht, lin) -> float:
    k = (len(ht) - 1) // (len(hs) - 1)
    total = 0.0
    for m in range(len(hs)):
        s, t = _np(hs[m]), _np(ht[m * k])
        sq, n = 0.0, 0
        for b in range(s.shape[0]):
            for i in range(s.shape[1]):
                d = (_apply(lin, s[b, i]) if lin else s[b, i]) - t[b, i]
                sq += float((d**2).sum())
                n += len(d)
        total += sq / n
    return total


def test_tinybert_hidden_matches_reference():
    hs, ht = _hiddens(2, 3, 14), _hiddens(4, 5, 15)
    lin = _linear(3, 5, 1)
    got = tinybert_hidden_loss(hs, ht, lin).item()
    assert got == pytest.approx(_hid_ref(hs, ht, lin), rel=1e-5)
    ht = _hiddens(4, 3, 16)
    assert tinybert_hidden_loss(hs, ht).item() == pytest.approx(
        _hid_ref(hs, ht, None), rel=1e-5
    )
    same = [ht[0], ht[2], ht[4]]
    assert tinybert_hidden_loss(same, ht).item() == 0.0


def test_tinybert_pred_matches_reference():
    g = _gen(17)
    s, t = torch.randn(B, L, V, generator=g), torch.randn(B, L, V, generator=g)
    for T in (1.0, 3.0):
        ref = 0.0
        for b in range(B):
            for i in range(L):
                ps, pt = _softmax(_np(s[b, i]) / T), _softmax(_np(t[b, i]) / T)
                ref -= float((pt * np.log(ps)).sum())
        got = tinybert_pred_loss(s, t, T).item()
        assert got == pytest.approx(ref / (B * L * V), rel=1e-5)
    # a cross-entropy: at s = t it is the teacher's entropy (over V), not 0
    ent = -(torch.softmax(t, -1) * torch.log_softmax(t, -1)).sum(-1).mean() / V
    assert tinybert_pred_loss(t, t).item() == pytest.approx(ent.item(), rel=1e-5)


# LRC-BERT


def _cos_nce_ref(zs: np.ndarray, zt: np.ndarray) -> float:
    n = len(zs)
    k = n - 1

    def g(a, b):
        return 1 - float(_unit(a) @ _unit(b))

    total = 0.0
    for i in range(n):
        pos = g(zs[i], zt[i])
        diffs = sum(g(zs[i], zt[j]) - pos for j in range(n) if j != i)
        total += (2 * k - diffs) / (2 * k) + pos
    return total / n


def test_lrc_cos_nce_matches_reference():
    g = _gen(18)
    zs, zt = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    got = lrc_cos_nce(zs, zt).item()
    assert got == pytest.approx(_cos_nce_ref(_np(zs), _np(zt)), rel=1e-5)


def test_lrc_cos_nce_properties():
    # orthogonal teacher vectors, student on its positives: pos = 0, every
    # negative at g = 1, so each sample gives (2K - K) / 2K = 1/2
    zt = torch.eye(4)
    assert lrc_cos_nce(3 * zt, zt).item() == pytest.approx(0.5, abs=1e-6)
    # antipodal pair: the positive aligned and the negative opposite gives 0
    zt = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert lrc_cos_nce(zt.clone(), zt).item() == pytest.approx(0.0, abs=1e-6)
    # angles only: rescaling the vectors changes nothing
    g = _gen(19)
    zs, zt = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert lrc_cos_nce(7 * zs, 0.1 * zt).item() == pytest.approx(
        lrc_cos_nce(zs, zt).item(), rel=1e-5
    )


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_lrc_loss_matches_reference(pool):
    hs, ht = _hiddens(2, 3, 20), _hiddens(4, 5, 21)
    lins = nn.ModuleList([_linear(3, 5, 2), _linear(3, 5, 3)])
    got = lrc_loss(hs, ht, lins, pool=pool).item()
    ref = 0.0
    for m, lin in zip((1, 2), lins, strict=True):
        s, t = _np(hs[m]), _np(ht[2 * m])
        ps = s[:, -1] if pool == "last" else s.mean(1)
        pt = t[:, -1] if pool == "last" else t.mean(1)
        ref += _cos_nce_ref(np.stack([_apply(lin, x) for x in ps]), pt)
    assert got == pytest.approx(ref, rel=1e-5)
    # one projection shared by the layers equals a list repeating it
    assert lrc_loss(hs, ht, lins[0], pool).item() == pytest.approx(
        lrc_loss(hs, ht, [lins[0], lins[0]], pool).item(), rel=1e-6
    )


# gradients reach the student (and the projections), never the teacher


def _cases():
    d_s, d_t = 3, 5
    lin = _linear(d_s, d_t, 4)
    return (
        [
            ("lm_kd", lambda s, t: lm_kd_loss(s, t), (B, L, V), (B, L, V), None),
            ("pred", lambda s, t: tinybert_pred_loss(s, t), (B, L, V), (B, L, V), None),
            ("cos_nce", lambda s, t: lrc_cos_nce(s, t), (B, 4), (B, 4), None),
            ("pkd", lambda s, t: pkd_loss([s, s * 2, s], [t] * 5, proj=lin), 3, 3, lin),
            (
                "hidden",
                lambda s, t: tinybert_hidden_loss([s, s], [t] * 3, lin),
                3,
                3,
                lin,
            ),
            ("lrc", lambda s, t: lrc_loss([s, s + 1], [t] * 3, lin), 3, 3, lin),
            ("att", lambda s, t: tinybert_attention_loss([s], [t, t]), 4, 4, None),
        ],
        d_s,
        d_t,
    )


@pytest.mark.parametrize("i", range(7))
def test_gradient_reaches_the_student_only(i):
    cases, d_s, d_t = _cases()
    name, fn, shape_s, shape_t, lin = cases[i]
    if shape_s == 3:
        shape_s, shape_t = (B, L, d_s), (B, L, d_t)
    elif shape_s == 4:
        shape_s = shape_t = (B, H, L, L)
    s = torch.randn(shape_s, generator=_gen(30), requires_grad=True)
    t = torch.randn(shape_t, generator=_gen(31), requires_grad=True)
    loss = fn(s, t)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert s.grad is not None and s.grad.abs().sum() > 0, name
    assert t.grad is None, name
    if lin is not None:
        assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0


def test_causal_minus_inf_scores_give_finite_gradients():
    a_s = [a.requires_grad_() for a in _scores(1, 40)]
    tinybert_attention_loss(a_s, _scores(2, 41)).backward()
    assert torch.isfinite(a_s[0].grad).all()
    future = torch.ones(L, L, dtype=torch.bool).triu(1)
    assert (a_s[0].grad[..., future] == 0).all()


def test_exported_from_kd_losses():
    for name in ("lm_kd_loss", "pkd_loss", "tinybert_attention_loss", "lrc_loss"):
        assert name in kd.losses.__all__ and hasattr(kd.losses, name)


# bad input: one clear error


def test_shape_and_argument_errors():
    x = torch.zeros(B, L, V)
    with pytest.raises(ValueError, match="same shape|one shape"):
        lm_kd_loss(x, torch.zeros(B, L, V + 1))
    with pytest.raises(ValueError, match="must be"):
        lm_kd_loss(torch.zeros(B, V), torch.zeros(B, V))
    with pytest.raises(ValueError, match="mask"):
        lm_kd_loss(x, x, mask=torch.ones(B, L + 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="no position"):
        lm_kd_loss(x, x, mask=torch.zeros(B, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="0/1"):
        lm_kd_loss(x, x, mask=torch.full((B, L), 2))
    with pytest.raises(ValueError, match="temperature"):
        lm_kd_loss(x, x, T=0.0)
    with pytest.raises(ValueError, match="divisible"):
        pkd_layers(5, 2, "skip")
    with pytest.raises(ValueError, match="scheme"):
        pkd_layers(4, 2, "middle")
    with pytest.raises(ValueError, match="n_student"):
        pkd_layers(4, 1)
    with pytest.raises(ValueError, match="at least 2 blocks"):
        pkd_loss(_hiddens(1, 4, 0), _hiddens(2, 4, 1))
    with pytest.raises(ValueError, match="proj"):
        pkd_loss(_hiddens(2, 3, 0), _hiddens(4, 5, 1))
    with pytest.raises(ValueError, match="teacher_layers"):
        pkd_loss(_hiddens(3, 4, 0), _hiddens(6, 4, 1), teacher_layers=[1, 9])
    with pytest.raises(ValueError, match="positions"):
        pkd_loss(_hiddens(2, 4, 0), _hiddens(4, 4, 1), positions="first")
    with pytest.raises(ValueError, match="first 2 sizes"):
        pkd_loss(_hiddens(2, 4, 0), _hiddens(4, 4, 1, b=B + 1))
    with pytest.raises(ValueError, match="list of tensors"):
        pkd_loss(torch.zeros(B, L, 4), _hiddens(4, 4, 1))
    with pytest.raises(ValueError, match="unlike"):
        tinybert_attention_loss(
            [torch.zeros(B, H, L, L)],
            [torch.zeros(B, H, L, L), torch.zeros(B, H, L, 2)],
        )
    with pytest.raises(ValueError, match="3-d"):
        tinybert_hidden_loss([torch.zeros(B, 4)] * 2, _hiddens(2, 4, 1))
    with pytest.raises(ValueError, match="divisible"):
        tinybert_layer_map(5, 2)
    with pytest.raises(ValueError, match="heads"):
        tinybert_attention_loss(
            [torch.zeros(B, H + 1, L, L)], [torch.zeros(B, H, L, L)] * 2
        )
    with pytest.raises(ValueError, match="proj"):
        tinybert_hidden_loss(_hiddens(2, 3, 0), _hiddens(4, 5, 1))
    with pytest.raises(ValueError, match="one shape"):
        tinybert_pred_loss(x, torch.zeros(B, L, V + 1))
    with pytest.raises(ValueError, match="N >= 2"):
        lrc_cos_nce(torch.zeros(1, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        lrc_cos_nce(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="projections"):
        lrc_loss(_hiddens(2, 3, 0), _hiddens(4, 5, 1), [nn.Linear(3, 5)])
    with pytest.raises(ValueError, match="pool"):
        lrc_loss(_hiddens(2, 4, 0), _hiddens(4, 4, 1), None, pool="first")
    with pytest.raises(ValueError, match="projs"):
        lrc_loss(_hiddens(2, 3, 0), _hiddens(4, 5, 1), None)
    with pytest.raises(ValueError, match="N >= 2"):
        lrc_loss(_hiddens(2, 4, 0, b=1), _hiddens(4, 4, 1, b=1), None)
