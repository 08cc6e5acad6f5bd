"""The character Transformer: shapes, attention against a plain loop, causality,
bits per character and FLOPs against independent computations, sampling, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdutils import text
from kdutils.lm import CharTransformer, LMOutput, bits_per_char, flops_per_token, sample


def tiny(n_layers=2, d=16, heads=2, context=12, **kw):
    torch.manual_seed(0)
    return CharTransformer(n_layers, d, heads, context, **kw).eval()


def test_shapes_of_everything_returned():
    m = tiny(n_layers=3, d=16, heads=4)
    x = torch.randint(0, 96, (5, 10))
    logits = m(x)
    assert logits.shape == (5, 10, 96)
    out = m(x, return_all=True)
    assert isinstance(out, LMOutput)
    torch.testing.assert_close(out.logits, logits)
    assert len(out.hidden) == 4 and all(h.shape == (5, 10, 16) for h in out.hidden)
    assert len(out.scores) == len(out.probs) == 3
    assert all(s.shape == (5, 4, 10, 10) for s in out.scores + out.probs)
    # the embedding output is token + position embedding
    torch.testing.assert_close(out.hidden[0], m.tok(x) + m.pos(torch.arange(10)))


def test_attention_equals_a_loop_over_heads_and_positions():
    m = tiny(n_layers=1, d=8, heads=2)
    x = torch.randint(0, 96, (2, 6))
    out = m(x, return_all=True)
    attn = m.blocks[0].attn
    h = m.blocks[0].ln1(out.hidden[0]).detach()
    w, b = attn.qkv.weight.detach(), attn.qkv.bias.detach()
    for n in range(2):
        heads = []
        for k in range(2):  # head k uses dims k*4:(k+1)*4 of q, k and v
            sl = slice(4 * k, 4 * k + 4)
            q = h[n] @ w[:8][sl].T + b[:8][sl]
            kk = h[n] @ w[8:16][sl].T + b[8:16][sl]
            v = h[n] @ w[16:][sl].T + b[16:][sl]
            rows = []
            for i in range(6):
                s = torch.tensor([float(q[i] @ kk[j]) / 2.0 for j in range(i + 1)])
                assert torch.allclose(out.scores[0][n, k, i, : i + 1], s, atol=1e-5)
                assert torch.isneginf(out.scores[0][n, k, i, i + 1 :]).all()
                p = torch.exp(s - s.max()) / torch.exp(s - s.max()).sum()
                torch.testing.assert_close(out.probs[0][n, k, i, : i + 1], p)
                assert (out.probs[0][n, k, i, i + 1 :] == 0).all()
                rows.append(p @ v[: i + 1])
            heads.append(torch.stack(rows))
        mixed = attn.proj(torch.cat(heads, dim=1))
        expected = out.hidden[0][n] + mixed
        expected = expected + m.blocks[0].mlp(m.blocks[0].ln2(expected))
        torch.testing.assert_close(out.hidden[1][n], expected, atol=1e-5, rtol=1e-5)


def test_the_future_does_not_change_the_past():
    m = tiny()
    x = torch.randint(0, 96, (1, 10))
    y = x.clone()
    y[0, 6:] = (y[0, 6:] + 7) % 96
    torch.testing.assert_close(m(x)[0, :6], m(y)[0, :6])
    assert not torch.allclose(m(x)[0, 6:], m(y)[0, 6:])


def test_tied_and_untied_heads():
    tied, untied = tiny(tied=True), tiny(tied=False)
    assert tied.head.weight is tied.tok.weight
    assert untied.head.weight is not untied.tok.weight
    n = sum(p.numel() for p in untied.parameters()) - sum(
        p.numel() for p in tied.parameters()
    )
    assert n == 96 * 16


def test_bad_input_is_one_clear_error():
    m = tiny(context=12)
    with pytest.raises(ValueError, match=r"13 characters; the model reads 1 to 12"):
        m(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"integer character ids"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"in \[0, 96\)"):
        m(torch.full((1, 4), 96))
    with pytest.raises(ValueError, match="multiple of n_heads"):
        CharTransformer(1, 10, 3, 8)
    with pytest.raises(ValueError, match="context must be >= 1"):
        CharTransformer(1, 8, 2, 0)


def test_bits_per_char_equals_a_per_character_loop():
    m = tiny(context=8)
    ids = text.encode("The quick brown fox jumps over the lazy dog, twice!")
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 8):  # consecutive windows of 8 inputs
            window = ids[start : start + 9]
            logp = m(window[None, :-1])[0].log_softmax(-1).double().numpy()
            for i, target in enumerate(window[1:].tolist()):
                total -= logp[i, target]
                count += 1
    assert count == len(ids) - 1
    expected = total / count / np.log(2)
    assert bits_per_char(m, ids, batch_size=2) == pytest.approx(expected, rel=1e-6)
    # a model that knows nothing: zero logits give log2(96) bits
    zero = tiny(context=8)
    with torch.no_grad():
        zero.head.weight.zero_()
    assert bits_per_char(zero, ids) == pytest.approx(math.log2(96), rel=1e-6)
    with pytest.raises(ValueError, match="at least 2 characters"):
        bits_per_char(m, ids[:1])


def test_sample_is_reproducible_and_reads_a_sliding_context():
    m = tiny(context=6)
    a = sample(m, "Hi", 20, generator=torch.Generator().manual_seed(1))
    b = sample(m, "Hi", 20, generator=torch.Generator().manual_seed(1))
    assert a == b and len(a) == 20 and set(a) <= set(text.VOCAB)
    # a very low temperature is the greedy choice, step by step
    greedy, seq = "", text.encode("Hi")
    for _ in range(10):
        nxt = int(m(seq[None, -6:])[0, -1].argmax())
        greedy += text.VOCAB[nxt]
        seq = torch.cat([seq, torch.tensor([nxt])])
    assert sample(m, "Hi", 10, temperature=1e-6) == greedy


@pytest.mark.parametrize(
    "prompt,kw,match",
    [
        ("café", {}, "outside the vocabulary"),
        ("x" * 7, {}, "the prompt has 7 characters; the model reads at most 6"),
        ("", {}, "the prompt is empty"),
        ("Hi", {"temperature": 0.0}, "temperature must be > 0"),
        ("Hi", {"n": -1}, "n must be >= 0"),
    ],
)
def test_sample_bad_input(prompt, kw, match):
    m = tiny(context=6)
    args = {"n": 3, **kw}
    with pytest.raises(ValueError, match=match):
        sample(m, prompt, args.pop("n"), **args)


def test_flops_per_token_counts_every_matrix_product():
    n_layers, d, heads, L = 2, 16, 2, 12
    m = tiny(n_layers=n_layers, d=d, heads=heads, context=L)
    per_layer = 2 * L * (3 * d * d + d * d + 8 * d * d)  # qkv, proj, MLP (4d)
    per_layer += 2 * 2 * L * L * d  # q k^T and probs v over all heads
    head = 2 * L * d * 96
    assert flops_per_token(m) == pytest.approx((n_layers * per_layer + head) / L)
    assert flops_per_token(m, length=4) < flops_per_token(m)


def test_gradients_flow_through_scores_and_hidden_states():
    m = tiny().train()
    out = m(torch.randint(0, 96, (2, 8)), return_all=True)
    finite = torch.where(torch.isinf(out.scores[0]), 0.0, out.scores[0])
    (
        finite.sum()
        + out.hidden[1].pow(2).mean()
        + F.log_softmax(out.logits, -1).mean()
    ).backward()
    assert all(p.grad is not None for p in m.parameters())
