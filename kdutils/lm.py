"""A small character-level causal Transformer, written out (survey §5.5).

:class:`CharTransformer` is a GPT-style decoder in the manner of nanoGPT:
token and position embeddings, pre-LN blocks (multi-head causal
self-attention, then a two-layer GELU MLP, each around a residual), a final
layer norm and a linear head, tied to the token embedding by default. The
attention is written with plain matrix products (no
``nn.MultiheadAttention``), so each head's scores and probabilities can be
returned: the distillation methods of chapter 19 (BERT-PKD, TinyBERT,
LRC-BERT) read the hidden states and attention matrices of both networks.

``model(x)`` gives the next-character logits ``(B, L, V)``;
``model(x, return_all=True)`` gives an :class:`LMOutput` with the logits, the
hidden states (the embedding output and every block's output), and per
block the attention scores (before the softmax, masked positions
``-inf``) and probabilities, each ``(B, H, L, L)``.

:func:`bits_per_char` is the held-out metric, :func:`sample` draws text,
:func:`flops_per_token` counts the forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .text import VOCAB, decode, encode

__all__ = [
    "CharTransformer",
    "LMOutput",
    "bits_per_char",
    "flops_per_token",
    "sample",
]


@dataclass
class LMOutput:
    """Everything one forward pass computes.

    ``logits``: ``(B, L, V)``; ``hidden``: ``n_layers + 1`` tensors
    ``(B, L, d)``, the embedding output first, then each block's output (the
    residual stream, before the final layer norm); ``scores`` and ``probs``:
    ``n_layers`` tensors ``(B, H, L, L)``, query by key, the scaled dot
    products with the future masked to ``-inf``, and their softmax.
    """

    logits: Tensor
    hidden: list[Tensor]
    scores: list[Tensor]
    probs: list[Tensor]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, ``softmax(q k^T / sqrt(d_head) + mask) v``."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(
                f"d_model {d_model} is not a multiple of n_heads {n_heads}"
            )
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        B, L, d = h.shape
        # (B, L, 3d) -> three (B, H, L, d_head)
        q, k, v = (
            t.view(B, L, self.n_heads, self.d_head).transpose(1, 2)
            for t in self.qkv(h).split(d, dim=-1)
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, L, L)
        future = torch.ones(L, L, dtype=torch.bool, device=h.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
        probs = scores.softmax(dim=-1)
        out = (probs @ v).transpose(1, 2).reshape(B, L, d)
        return self.proj(out), scores, probs


class Block(nn.Module):
    """Pre-LN Transformer block: ``h + attn(LN(h))``, then ``h + MLP(LN(h))``."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model)
        )

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a, scores, probs = self.attn(self.ln1(h))
        h = h + a
        return h + self.mlp(self.ln2(h)), scores, probs


class CharTransformer(nn.Module):
    """A causal character language model over :data:`kdutils.text.VOCAB`.

    ``n_layers`` blocks of width ``d_model`` with ``n_heads`` heads and an MLP
    of ``d_ff`` (default ``4 d_model``), positions up to ``context``; the
    head shares the token embedding's weights when ``tied`` (as in GPT-2).
    Weights start as GPT-2's: normal with std 0.02, biases zero.
    """

    def __init__(
        self,
        n_layers: int,
        d_model: int,
        n_heads: int,
        context: int,
        d_ff: int | None = None,
        tied: bool = True,
        vocab_size: int = len(VOCAB),
    ) -> None:
        super().__init__()
        for name, v in (
            ("n_layers", n_layers),
            ("d_model", d_model),
            ("n_heads", n_heads),
            ("context", context),
        ):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.n_layers, self.d_model, self.n_heads = n_layers, d_model, n_heads
        self.context, self.vocab_size = context, vocab_size
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(
            Block(d_model, n_heads, d_ff or 4 * d_model) for _ in range(n_layers)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        if tied:
            self.head.weight = self.tok.weight

    def check_input(self, x: Tensor) -> None:
        """``ValueError`` unless ``x`` is a ``(B, L)`` integer tensor of ids
        below the vocabulary size with ``1 <= L <= context``."""
        if x.ndim != 2 or x.dtype not in (torch.long, torch.int):
            raise ValueError(
                f"expected (batch, length) integer character ids, got "
                f"{tuple(x.shape)} {x.dtype}"
            )
        if not 1 <= x.shape[1] <= self.context:
            raise ValueError(
                f"a sequence of {x.shape[1]} characters; the model reads 1 to "
                f"{self.context} (its context)"
            )
        if x.numel() and (x.min() < 0 or x.max() >= self.vocab_size):
            raise ValueError(f"character ids must be in [0, {self.vocab_size})")

    def forward(self, x: Tensor, return_all: bool = False) -> Tensor | LMOutput:
        self.check_input(x)
        positions = torch.arange(x.shape[1], device=x.device)
        h = self.tok(x) + self.pos(positions)  # (B, L, d)
        hidden, scores, probs = [h], [], []
        for block in self.blocks:
            h, s, p = block(h)
            hidden.append(h)
            scores.append(s)
            probs.append(p)
        logits = self.head(self.ln_f(h))  # (B, L, V)
        if not return_all:
            return logits
        return LMOutput(logits, hidden, scores, probs)


@torch.no_grad()
def bits_per_char(
    model: CharTransformer,
    ids: Tensor,
    batch_size: int = 64,
    context: int | None = None,
) -> float:
    """Mean cross-entropy of the next character, in bits, over a stream.

    The stream ``ids`` is cut into consecutive windows of ``context`` (the
    model's by default) inputs; every character after the first is predicted
    once, from the characters before it in its window. ``log2`` of the
    perplexity; a uniform guess over the 96 symbols is ``log2 96 = 6.58``.
    """
    context = context or model.context
    if len(ids) < 2:
        raise ValueError("bits per character needs a stream of at least 2 characters")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n = (len(ids) - 1) // context  # full windows
    starts = list(range(0, n * context, context))
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        idx = torch.tensor(starts[i : i + batch_size])[:, None] + torch.arange(
            context + 1
        )
        chunk = ids[idx].to(device)
        logits = model(chunk[:, :-1])
        total += F.cross_entropy(
            logits.flatten(0, 1), chunk[:, 1:].flatten(), reduction="sum"
        ).item()
        count += chunk[:, 1:].numel()
    rest = ids[n * context :].to(device)
    if len(rest) >= 2:  # the last, shorter window
        logits = model(rest[None, :-1])
        total += F.cross_entropy(logits[0], rest[1:], reduction="sum").item()
        count += len(rest) - 1
    model.train(was_training)
    return total / count / math.log(2)


@torch.no_grad()
def sample(
    model: CharTransformer,
    prompt: str,
    n: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> str:
    """``n`` characters drawn after ``prompt``, one at a time from
    ``softmax(logits / temperature)``, each step reading the last ``context``
    characters; returns the continuation (without the prompt).

    ``ValueError`` if the prompt is empty, longer than the model's context or
    has characters outside the vocabulary, or if ``temperature <= 0``.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not prompt:
        raise ValueError("the prompt is empty; give at least one character")
    if len(prompt) > model.context:
        raise ValueError(
            f"the prompt has {len(prompt)} characters; the model reads at most "
            f"{model.context} (its context)"
        )
    ids = encode(prompt)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seq = ids.to(device)
    for _ in range(n):
        logits = model(seq[None, -model.context :])[0, -1]  # (V,)
        p = (logits.float() / temperature).softmax(-1).cpu()
        nxt = torch.multinomial(p, 1, generator=generator)
        seq = torch.cat([seq, nxt.to(device)])
    model.train(was_training)
    return decode(seq[len(ids) :].cpu())


def flops_per_token(model: CharTransformer, length: int | None = None) -> float:
    """FLOPs of one forward pass on a ``(1, length)`` input (the context by
    default) divided by ``length``: every matrix product, attention's
    included, counted by :class:`torch.utils.flop_counter.FlopCounterMode`
    (2 FLOPs per multiply-accumulate; layer norms, GELU and softmax are not
    counted)."""
    length = length or model.context
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    x = torch.zeros(1, length, dtype=torch.long, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / length
