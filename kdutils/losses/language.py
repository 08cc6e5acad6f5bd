"""Losses of distillation for language models (survey section 5.5).

Pure functions for the causal character-level Transformer of
:mod:`kdutils.lm`, student first, teacher second. The teacher's tensors are
detached here, so no gradient reaches the teacher whatever the caller does,
and half-precision inputs are computed in float32. The four methods were
written for BERT (a bidirectional encoder classifying a whole sequence from
its ``[CLS]`` vector); each docstring says how the loss carries over to a
causal language model, where every position predicts the next token.

Layer conventions (those of TinyBERT's code and of Hugging Face models):
``hiddens`` is a list of ``n_layers + 1`` tensors ``(B, L, D)``, index 0 the
embedding output (the input of block 1) and index ``l`` the output of block
``l``; ``att_scores`` is a list of ``n_layers`` tensors ``(B, H, L, L)``,
index ``l - 1`` the pre-softmax scores ``q k^T / sqrt(d)`` of block ``l``,
the causal mask already applied as a value ``<= -100`` (``-inf`` is fine).
The layer-level losses take these full lists and choose the layer pairs
themselves, as the authors' training loops do.

- :func:`lm_kd_loss`: DistilBERT's soft targets (``sanh2019distilbert``; code
  huggingface/transformers, examples/research_projects/distillation/
  distiller.py);
- :func:`pkd_layers`, :func:`pkd_loss`: BERT-PKD's patient loss
  (``sun2019patient``; code intersun/PKD-for-BERT-Model-Compression,
  src/KD_loss.py and NLI_KD_training.py);
- :func:`tinybert_layer_map`, :func:`tinybert_attention_loss`,
  :func:`tinybert_hidden_loss`, :func:`tinybert_pred_loss`: TinyBERT
  (``jiao2020tinybert``; code huawei-noah/Pretrained-Language-Model, TinyBERT/
  task_distill.py and transformer/modeling.py);
- :func:`lrc_cos_nce`, :func:`lrc_loss`: LRC-BERT's COS-NCE (``fu2021lrc``).
  No official code was released; the loss is the paper's equation (see
  :func:`lrc_cos_nce` for what was checked and what is our reading).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_int, check_T

__all__ = [
    "lm_kd_loss",
    "pkd_layers",
    "pkd_loss",
    "tinybert_layer_map",
    "tinybert_attention_loss",
    "tinybert_hidden_loss",
    "tinybert_pred_loss",
    "lrc_cos_nce",
    "lrc_loss",
]

# TinyBERT's code treats every attention score at or below this as masked
TINYBERT_MASKED = -1e2

Proj = Callable[[Tensor], Tensor]


def _f32(x: Tensor) -> Tensor:
    """``x`` in at least float32."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_same(name: str, s: Tensor, t: Tensor, dims: int, what: str) -> None:
    if s.dim() != dims or s.shape != t.shape:
        raise ValueError(
            f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must be "
            f"{what} of one shape"
        )


def _layers(name: str, arg: str, xs: Sequence[Tensor], dims: int) -> list[Tensor]:
    """A non-empty list of tensors of ``dims`` dimensions, all of one shape
    (the layers of one model)."""
    if isinstance(xs, Tensor) or not isinstance(xs, (list, tuple)) or not xs:
        raise ValueError(f"{name}: {arg} must be a non-empty list of tensors")
    out = list(xs)
    for i, x in enumerate(out):
        if not isinstance(x, Tensor) or x.dim() != dims:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{name}: {arg}[{i}] must be a {dims}-d tensor, got {shape}"
            )
        if x.shape != out[0].shape:
            raise ValueError(
                f"{name}: {arg}[{i}] has shape {tuple(x.shape)}, unlike "
                f"{arg}[0] {tuple(out[0].shape)}"
            )
    return out


def _pair_check(name: str, s: list[Tensor], t: list[Tensor], k: int) -> None:
    """Student and teacher lists agree on their first ``k`` sizes."""
    if s[0].shape[:k] != t[0].shape[:k]:
        raise ValueError(
            f"{name}: student {tuple(s[0].shape)} and teacher {tuple(t[0].shape)} "
            f"must agree on their first {k} sizes"
        )


def lm_kd_loss(
    logits_s: Tensor, logits_t: Tensor, T: float = 2.0, mask: Tensor | None = None
) -> Tensor:
    """DistilBERT's soft-target loss on the next-token distributions.

    ``T^2 / n sum_{(b, i) in mask} sum_v p_t log(p_t / p_s)``, with
    ``p = softmax(l / T)`` over the vocabulary at position ``i`` of sequence
    ``b`` and ``n`` the number of selected positions: the Kullback-Leibler
    divergence from the teacher's distribution to the student's, summed over
    the vocabulary and averaged over the selected tokens, as DistilBERT's
    ``nn.KLDivLoss(reduction="batchmean")`` on the ``(n, V)`` rows that
    ``masked_select`` keeps, times ``T^2`` (distiller.py; its default
    ``T = 2``). ``mask`` plays DistilBERT's attention mask (its causal-LM
    branch keeps every non-padded position); ``None`` keeps them all.
    Zero when the logits agree. ``(B, L, V) x 2 [, (B, L)] -> ()``.
    """
    _check_same("lm_kd_loss", logits_s, logits_t, 3, "(B, L, V) logits")
    check_T(T)
    s, t = _f32(logits_s), _f32(logits_t.detach())
    if mask is not None:
        if mask.shape != s.shape[:2]:
            raise ValueError(
                f"lm_kd_loss: mask {tuple(mask.shape)} must be (B, L) = "
                f"{tuple(s.shape[:2])}"
            )
        if mask.dtype != torch.bool:
            if not ((mask == 0) | (mask == 1)).all():
                raise ValueError("lm_kd_loss: mask must be boolean or 0/1")
            mask = mask.bool()
        if not mask.any():
            raise ValueError("lm_kd_loss: mask selects no position")
        s, t = s[mask], t[mask]  # (n, V)
    else:
        s, t = s.flatten(0, 1), t.flatten(0, 1)
    kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="sum")
    return kl / s.shape[0] * T**2


def pkd_layers(n_teacher: int, n_student: int, scheme: str = "skip") -> list[int]:
    """BERT-PKD's choice of teacher layers for the student's blocks 1..M-1.

    ``"skip"`` (PKD-Skip) takes every ``N/M``-th teacher block,
    ``k N / M`` for ``k = 1..M-1`` (12 -> 6: ``[2, 4, 6, 8, 10]``), and needs
    ``N % M == 0``; ``"last"`` (PKD-Last) takes the blocks just below the top,
    ``N - M + k`` (12 -> 6: ``[7, 8, 9, 10, 11]``). The student's last block
    is left out, as in the paper and in the code (``full_output[:-1]``): the
    soft-target loss on the prediction already covers it. The numbers are
    block numbers, i.e. indices into a ``hiddens`` list whose index 0 holds
    the embeddings.
    """
    check_int("n_student", n_student, 2)
    check_int("n_teacher", n_teacher, n_student)
    if scheme == "skip":
        if n_teacher % n_student:
            raise ValueError(
                f"pkd_layers: 'skip' needs n_teacher ({n_teacher}) divisible by "
                f"n_student ({n_student})"
            )
        step = n_teacher // n_student
        return [k * step for k in range(1, n_student)]
    if scheme == "last":
        return [n_teacher - n_student + k for k in range(1, n_student)]
    raise ValueError(f"pkd_layers: scheme must be 'skip' or 'last', got {scheme!r}")


def pkd_loss(
    hiddens_s: Sequence[Tensor],
    hiddens_t: Sequence[Tensor],
    scheme: str = "skip",
    positions: str = "all",
    proj: Proj | None = None,
    teacher_layers: Sequence[int] | None = None,
) -> Tensor:
    """BERT-PKD's patient loss on normalised hidden states.

    ``1 / (n (M-1) D) sum_{x} sum_{j=1}^{M-1}
    || h^s_j(x) / ||h^s_j(x)|| - h^t_{I(j)}(x) / ||h^t_{I(j)}(x)|| ||^2``:
    the student's block-``j`` vector and the teacher's block-``I(j)``
    vector, each scaled to unit L2 norm, compared by squared error averaged
    over every element (the ``n`` vectors, the ``M - 1`` layer pairs and the
    ``D`` features), as the code's ``patience_loss`` with
    ``normalize_patience=True`` (``F.normalize`` then ``F.mse_loss``). The
    paper writes a plain sum over layers; the code's mean is what its weight
    ``beta`` (100 to 1000, 500 in its scripts) multiplies. ``I`` is
    :func:`pkd_layers` (``scheme``) unless ``teacher_layers`` gives it.

    Causal adaptation: PKD distils the ``[CLS]`` vector, the one BERT
    classifies from. In a language model every position predicts a token,
    so ``positions="all"`` uses every position's vector (``n = B L``);
    ``positions="last"`` keeps only the last position, the only one that has
    seen the whole window (``n = B``), closest to ``[CLS]``. PKD's student
    has the teacher's width; when the widths differ, ``proj`` (for example
    ``nn.Linear(D_s, D_t)``, trained with the student) maps the student's
    vectors first. That projection is our departure.

    ``hiddens_s``: ``M + 1`` tensors ``(B, L, D_s)``; ``hiddens_t``:
    ``N + 1`` tensors ``(B, L, D_t)`` -> ``()``.
    """
    hs = _layers("pkd_loss", "hiddens_s", hiddens_s, 3)
    ht = _layers("pkd_loss", "hiddens_t", hiddens_t, 3)
    _pair_check("pkd_loss", hs, ht, 2)
    m, n = len(hs) - 1, len(ht) - 1
    if m < 2:
        raise ValueError(
            "pkd_loss: the student needs at least 2 blocks (its blocks 1..M-1 "
            f"are distilled), got {m}"
        )
    if teacher_layers is None:
        layers = pkd_layers(n, m, scheme)
    else:
        layers = list(teacher_layers)
        if len(layers) != m - 1 or not all(
            isinstance(j, int) and 1 <= j <= n for j in layers
        ):
            raise ValueError(
                f"pkd_loss: teacher_layers must be {m - 1} block numbers in "
                f"1..{n}, got {layers}"
            )
    if positions not in ("all", "last"):
        raise ValueError(
            f"pkd_loss: positions must be 'all' or 'last', got {positions!r}"
        )
    s = torch.stack([_f32(hs[j]) for j in range(1, m)], dim=2)  # (B, L, M-1, Ds)
    t = torch.stack([_f32(ht[j].detach()) for j in layers], dim=2)
    if positions == "last":
        s, t = s[:, -1:], t[:, -1:]
    if proj is not None:
        s = proj(s)
    if s.shape != t.shape:
        raise ValueError(
            f"pkd_loss: student vectors {tuple(s.shape)} and teacher vectors "
            f"{tuple(t.shape)} differ (pass proj to map the student's width)"
        )
    return F.mse_loss(F.normalize(s, p=2, dim=-1), F.normalize(t, p=2, dim=-1))


def tinybert_layer_map(n_teacher: int, n_student: int) -> list[int]:
    """TinyBERT's uniform layer mapping ``g(m) = m N / M``, ``m = 0..M``.

    ``g(0) = 0`` pairs the embedding layers; student block ``m`` learns from
    teacher block ``m N / M`` (4 -> 2: ``[0, 2, 4]``). The code asserts
    ``N % M == 0`` (its ``layers_per_block``); so does this.
    """
    check_int("n_student", n_student, 1)
    check_int("n_teacher", n_teacher, n_student)
    if n_teacher % n_student:
        raise ValueError(
            f"tinybert_layer_map: n_teacher ({n_teacher}) must be divisible by "
            f"n_student ({n_student})"
        )
    step = n_teacher // n_student
    return [m * step for m in range(n_student + 1)]


def tinybert_attention_loss(att_s: Sequence[Tensor], att_t: Sequence[Tensor]) -> Tensor:
    """TinyBERT's attention-based distillation on the pre-softmax scores.

    ``sum_{m=1}^{M} 1 / (B H L^2) sum_{b,h,i,j} (A^s_m - A^t_{g(m)})^2``
    with ``A`` the scaled scores ``q k^T / sqrt(d)`` of each head before the
    softmax and ``g`` :func:`tinybert_layer_map`. As in task_distill.py,
    every score ``<= -100`` (the masked entries: padding there, the future
    positions of a causal model here) is set to 0 in both before the squared
    error (so the mask adds nothing), each pair is an ``MSELoss`` (mean), and
    the pairs are summed. Paper and code fit the unnormalised scores, not
    their softmax (the paper reports faster convergence). Student and
    teacher need the same number of heads (the paper's ``h``) and length.

    ``att_s``: ``M`` tensors ``(B, H, L, L)``; ``att_t``: ``N`` of them -> ``()``.
    """
    a_s = _layers("tinybert_attention_loss", "att_s", att_s, 4)
    a_t = _layers("tinybert_attention_loss", "att_t", att_t, 4)
    if a_s[0].shape != a_t[0].shape:
        raise ValueError(
            f"tinybert_attention_loss: student scores {tuple(a_s[0].shape)} and "
            f"teacher scores {tuple(a_t[0].shape)} must be (B, H, L, L) of one "
            "shape (TinyBERT needs the same number of heads)"
        )
    g = tinybert_layer_map(len(a_t), len(a_s))
    total = a_s[0].new_zeros((), dtype=_f32(a_s[0]).dtype)
    for m in range(1, len(a_s) + 1):
        s, t = _f32(a_s[m - 1]), _f32(a_t[g[m] - 1].detach())
        s = torch.where(s <= TINYBERT_MASKED, torch.zeros_like(s), s)
        t = torch.where(t <= TINYBERT_MASKED, torch.zeros_like(t), t)
        total = total + F.mse_loss(s, t)
    return total


def tinybert_hidden_loss(
    hiddens_s: Sequence[Tensor], hiddens_t: Sequence[Tensor], proj: Proj | None = None
) -> Tensor:
    """TinyBERT's hidden-state and embedding distillation.

    ``sum_{m=0}^{M} 1 / (B L D_t) sum (H^s_m W_h - H^t_{g(m)})^2``: the
    student's embedding output (``m = 0``) and every block's output, mapped
    by one learned matrix ``W_h`` (``proj``, e.g. ``nn.Linear(D_s, D_t)``:
    the code's ``fit_dense``, a single linear layer, with its bias, shared
    by all layers) to the teacher's width, against the teacher's layer
    ``g(m)`` (:func:`tinybert_layer_map`); an ``MSELoss`` (mean) per pair,
    summed over the ``M + 1`` pairs (task_distill.py's ``rep_loss``; the
    paper's embedding loss is the ``m = 0`` term). ``proj=None`` is allowed
    only when the widths agree.

    ``hiddens_s``: ``M + 1`` tensors ``(B, L, D_s)``; ``hiddens_t``:
    ``N + 1`` tensors ``(B, L, D_t)`` -> ``()``.
    """
    hs = _layers("tinybert_hidden_loss", "hiddens_s", hiddens_s, 3)
    ht = _layers("tinybert_hidden_loss", "hiddens_t", hiddens_t, 3)
    _pair_check("tinybert_hidden_loss", hs, ht, 2)
    if len(hs) < 2 or len(ht) < 2:
        raise ValueError(
            "tinybert_hidden_loss: each list needs the embeddings and at least "
            "one block (n_layers + 1 >= 2 tensors)"
        )
    g = tinybert_layer_map(len(ht) - 1, len(hs) - 1)
    total = hs[0].new_zeros((), dtype=_f32(hs[0]).dtype)
    for m, j in enumerate(g):
        s = _f32(hs[m])
        if proj is not None:
            s = proj(s)
        t = _f32(ht[j].detach())
        if s.shape != t.shape:
            raise ValueError(
                f"tinybert_hidden_loss: student layer {m} gives {tuple(s.shape)}, "
                f"teacher layer {j} {tuple(t.shape)} (pass proj mapping D_s to D_t)"
            )
        total = total + F.mse_loss(s, t)
    return total


def tinybert_pred_loss(logits_s: Tensor, logits_t: Tensor, T: float = 1.0) -> Tensor:
    """TinyBERT's prediction-layer soft cross-entropy, as its code computes it.

    ``-1 / (n V) sum_{x} sum_v softmax(l^t / T)_v log softmax(l^s / T)_v``:
    task_distill.py's ``soft_cross_entropy`` takes ``.mean()`` over every
    element of ``(- p_t * log p_s)``, i.e. over the ``n`` positions AND the
    ``V`` vocabulary entries. The paper writes the per-token cross-entropy,
    which is ``V`` times this; we follow the code. No ``T^2`` factor (the
    code has none; its default ``T = 1``). A cross-entropy, not a KL
    divergence: at ``s = t`` it equals the teacher's entropy over ``V``, not
    0. ``(..., V) x 2 -> ()``.
    """
    if logits_s.dim() < 2 or logits_s.shape != logits_t.shape:
        raise ValueError(
            f"tinybert_pred_loss: student {tuple(logits_s.shape)} and teacher "
            f"{tuple(logits_t.shape)} must be logits (..., V) of one shape"
        )
    check_T(T)
    p_t = F.softmax(_f32(logits_t.detach()) / T, dim=-1)
    return (-p_t * F.log_softmax(_f32(logits_s) / T, dim=-1)).mean()


def lrc_cos_nce(z_s: Tensor, z_t: Tensor) -> Tensor:
    """LRC-BERT's COS-NCE between the samples of a batch.

    With the angular distance ``g(a, b) = 1 - cos(a, b)`` (in ``[0, 2]``), the
    student's vector ``z^s_i``, its positive ``z^t_i`` (the teacher's vector
    of the same sample) and its ``K = N - 1`` negatives ``z^t_j``, ``j != i``
    (the teacher's vectors of the other samples of the batch)::

        L_i = (2K - sum_{j != i} [g(z^s_i, z^t_j) - g(z^s_i, z^t_i)]) / (2K)
              + g(z^s_i, z^t_i)

    averaged over the ``N`` samples. The first term (in ``[0, 2]``) pushes
    the student's vector to a larger angle from the other samples' teacher
    vectors than from its own; the second pulls it onto its own. No official
    code was released: this is the form of the paper's Eq. (1) for one
    sample, the same form an unofficial public reimplementation
    (``train_lrc_bert.py``, "formula (1)") computes. The batch average and
    the in-batch negatives are our reading: that reimplementation sums over
    the batch and draws ``K = 15`` negatives from a memory bank of the
    teacher's vectors over the data set. The student's vectors must already
    be mapped to the teacher's width. ``(N, D) x 2 -> ()``, ``N >= 2``.
    """
    _check_same("lrc_cos_nce", z_s, z_t, 2, "(N, D) vectors")
    n = z_s.shape[0]
    if n < 2:
        raise ValueError("lrc_cos_nce: needs N >= 2 samples (the negatives)")
    zs = F.normalize(_f32(z_s), dim=1)
    zt = F.normalize(_f32(z_t.detach()), dim=1)
    g = 1 - zs @ zt.T  # (N, N): g[i, j] = g(z^s_i, z^t_j)
    pos = g.diagonal()
    k = n - 1
    neg = g.sum(1) - pos  # sum over the K negatives
    per = (2 * k - (neg - k * pos)) / (2 * k) + pos
    return per.mean()


def lrc_loss(
    hiddens_s: Sequence[Tensor],
    hiddens_t: Sequence[Tensor],
    projs: Proj | Sequence[Proj] | None,
    pool: str = "last",
) -> Tensor:
    """LRC-BERT's COS-NCE summed over the mapped transformer layers.

    ``sum_{m=1}^{M} COS-NCE(W_m pool(H^s_m), pool(H^t_{g(m)}))`` with
    :func:`lrc_cos_nce`, ``g`` TinyBERT's uniform mapping
    (:func:`tinybert_layer_map`, our choice for pairing the layers; the
    embeddings are not contrasted) and
    ``W_m`` a learned linear map of layer ``m`` to the teacher's width
    (``projs``: one callable shared by all layers or a sequence of ``M``, e.g.
    an ``nn.ModuleList`` of ``nn.Linear(D_s, D_t)``; ``None`` only for equal
    widths). The negatives are the other sequences of the batch, so
    ``B >= 2``.

    Causal adaptation: LRC-BERT contrasts one vector per sample and layer
    (the unofficial reimplementation takes BERT's ``[CLS]``). ``pool="last"``
    takes the last
    position's vector, the only one that has attended to the whole window,
    the causal counterpart of ``[CLS]``; ``pool="mean"`` averages all
    positions instead. LRC-BERT's two-stage schedule (COS-NCE alone first,
    then with the prediction losses) and its gradient perturbation of the
    embeddings are training procedure, not part of this loss.

    ``hiddens_s``: ``M + 1`` tensors ``(B, L, D_s)``; ``hiddens_t``:
    ``N + 1`` tensors ``(B, L, D_t)`` -> ``()``.
    """
    hs = _layers("lrc_loss", "hiddens_s", hiddens_s, 3)
    ht = _layers("lrc_loss", "hiddens_t", hiddens_t, 3)
    _pair_check("lrc_loss", hs, ht, 2)
    if len(hs) < 2:
        raise ValueError("lrc_loss: the student needs at least one block")
    if pool not in ("last", "mean"):
        raise ValueError(f"lrc_loss: pool must be 'last' or 'mean', got {pool!r}")
    m_layers = len(hs) - 1
    g = tinybert_layer_map(len(ht) - 1, m_layers)
    if isinstance(projs, (list, tuple, nn.ModuleList)):
        if len(projs) != m_layers:
            raise ValueError(
                f"lrc_loss: {len(projs)} projections for {m_layers} student blocks"
            )
        per_layer = list(projs)
    elif projs is None or callable(projs):
        per_layer = [projs] * m_layers
    else:
        raise ValueError("lrc_loss: projs must be None, a callable or a list of them")

    def pooled(h: Tensor) -> Tensor:
        return h[:, -1] if pool == "last" else h.mean(dim=1)  # (B, L, D) -> (B, D)

    total = hs[0].new_zeros((), dtype=_f32(hs[0]).dtype)
    for m in range(1, m_layers + 1):
        s = pooled(_f32(hs[m]))
        if per_layer[m - 1] is not None:
            s = per_layer[m - 1](s)
        t = pooled(_f32(ht[g[m]].detach()))
        if s.shape != t.shape:
            raise ValueError(
                f"lrc_loss: student layer {m} gives {tuple(s.shape)}, teacher "
                f"layer {g[m]} {tuple(t.shape)} (pass projs mapping D_s to D_t)"
            )
        total = total + lrc_cos_nce(s, t)
    return total
