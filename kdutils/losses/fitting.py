"""Losses that fit feature maps directly: survey section 2.2.1, Eq. (2).

``L_KD = DF(f_S, f_T)``: a distance between a student feature map (usually
after a small learned connector) and the teacher's. The connectors
(regressors, translators, paraphrasers) are modules and live in the
Distillers (:mod:`kdutils.distillers.fitting`,
:mod:`kdutils.distillers.fitting_added`,
:mod:`kdutils.distillers.fitting_shared`); the functions here are pure.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

__all__ = ["hint_loss", "ab_loss", "ft_loss", "vid_loss", "rocket_hint_loss"]


def _check_same_shape(name: str, a: Tensor, b: Tensor, what: str = "") -> None:
    if a.shape != b.shape:
        where = f" ({what})" if what else ""
        raise ValueError(
            f"{name}: student shape {tuple(a.shape)} != teacher shape "
            f"{tuple(b.shape)}{where}; map the student feature to the teacher's "
            "shape first (a regressor or connector), nothing is broadcast"
        )


def hint_loss(feat_s: Tensor, feat_t: Tensor) -> Tensor:
    """FitNets' hint loss: the mean squared error over all elements.

    ``mean_{b,c,h,w} (f_S - f_T)^2`` with ``f_S`` the regressed student
    feature; shapes ``(B, C, H, W), (B, C, H, W) -> ()`` (any equal shapes).
    The paper writes ``1/2 ||f_T - r(f_S)||^2``; the CRD benchmark's code
    (RepDistiller's ``HintLoss``) uses ``nn.MSELoss``, a mean, and that is
    this function.

    Reference: ``romero2015fitnets``; survey section 2.2.1, Eq. (2).
    """
    _check_same_shape("hint_loss", feat_s, feat_t)
    return F.mse_loss(feat_s, feat_t)


def _ab_margin_sum(pre_s: Tensor, pre_t: Tensor, margin: float) -> Tensor:
    # Teacher neuron off (t <= 0): push the student below -margin;
    # on (t > 0): push it above +margin. Squared hinge, summed.
    off = (pre_t <= 0) & (pre_s > -margin)
    on = (pre_t > 0) & (pre_s <= margin)
    loss = (pre_s + margin).pow(2) * off + (pre_s - margin).pow(2) * on
    return loss.sum()


def ab_loss(
    feats_s: Sequence[Tensor], feats_t: Sequence[Tensor], margin: float = 1.0
) -> Tensor:
    """Activation-boundary loss on pre-ReLU features (Heo et al. 2019).

    Per pair ``i`` of ``n``: ``sum (s + m)^2 [s > -m][t <= 0] + (s - m)^2
    [s <= m][t > 0]`` over all elements, divided by the batch size, weighted
    by ``2^(i - n + 1)`` (the deepest pair 1, then 1/2, 1/4, ...), and the
    total scaled by ``3/1000``: the authors' CIFAR code. ``feats_s`` are the
    student's pre-ReLU maps after their connectors, ``feats_t`` the
    teacher's pre-ReLU maps; lists of ``(B, C, H, W)`` of equal shapes per
    pair, shallow to deep. Returns ``()``.

    Reference: ``heo2019knowledge``; not in the survey (a RepDistiller baseline,
    added beside section 2.2.1).
    """
    if len(feats_s) != len(feats_t) or not feats_s:
        raise ValueError(
            f"ab_loss needs equally many (>= 1) student and teacher maps, got "
            f"{len(feats_s)} and {len(feats_t)}"
        )
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    n = len(feats_s)
    total = feats_s[0].new_zeros(())
    for i, (s, t) in enumerate(zip(feats_s, feats_t, strict=True)):
        _check_same_shape("ab_loss", s, t, f"pair {i}")
        total = total + 2.0 ** (i - n + 1) * _ab_margin_sum(s, t, margin) / s.shape[0]
    return total * 3 / 1000


def ft_loss(factor_s: Tensor, factor_t: Tensor) -> Tensor:
    """Factor-transfer loss: L1 distance of L2-normalised, flattened factors.

    ``mean_{b,d} | F_S/||F_S||_2 - F_T/||F_T||_2 |`` where each sample's
    factor ``(C, H, W)`` is flattened to ``D = C*H*W`` and normalised; the
    authors' code (``nn.L1Loss`` on ``F.normalize(x.view(B, -1))``), so the
    mean runs over the batch and the D entries. Shapes ``(B, C, H, W),
    (B, C, H, W) -> ()``.

    Reference: ``kim2018paraphrasing``; not in the survey (a RepDistiller baseline,
    added beside section 2.2.1).
    """
    _check_same_shape("ft_loss", factor_s, factor_t)
    b = factor_s.shape[0]
    fs = F.normalize(factor_s.reshape(b, -1), dim=1)
    ft = F.normalize(factor_t.reshape(b, -1), dim=1)
    return (fs - ft).abs().mean()


def vid_loss(mean_s: Tensor, feat_t: Tensor, var: Tensor) -> Tensor:
    """VID's negative log-likelihood of the teacher feature under a Gaussian.

    ``mean_{b,c,h,w} 1/2 ((mu - t)^2 / var_c + log var_c)``, the constant
    ``log 2 pi / 2`` dropped: ``mu = mean_s`` is the student's prediction of
    the teacher's feature ``t``, ``var`` one positive variance per channel
    (the Distiller learns it through a softplus). Shapes ``(B, C, H, W),
    (B, C, H, W), (C,) -> ()``; as in RepDistiller's ``VIDLoss``.

    Reference: ``ahn2019variational``; not in the survey (a RepDistiller baseline,
    added beside section 2.2.1).
    """
    _check_same_shape("vid_loss", mean_s, feat_t)
    if var.dim() != 1 or var.shape[0] != feat_t.shape[1]:
        raise ValueError(
            f"vid_loss: var must have one entry per channel ({feat_t.shape[1]}), "
            f"got shape {tuple(var.shape)}"
        )
    v = var.view(1, -1, *([1] * (feat_t.dim() - 2)))  # (1, C, 1, 1)
    return (0.5 * ((mean_s - feat_t).pow(2) / v + v.log())).mean()


def rocket_hint_loss(logits_l: Tensor, logits_b: Tensor) -> Tensor:
    """Rocket launching's hint loss: the squared distance between the two nets' logits.

    ``1/B sum_b ||l_b - z_b||^2``: the squared difference of the light net's
    logits ``l`` and the booster's ``z`` (before the softmax), summed over the
    classes and averaged over the batch, as the authors' CIFAR code computes it
    (``((y - ys) * (y - ys)).sum() / batchSize``). Shapes ``(B, K), (B, K) ->
    ()``. The caller detaches ``logits_b`` for the paper's gradient block (the
    hint then never updates the booster's own layers).

    Reference: ``zhou2018rocket``; survey section 2.2.1.
    """
    if logits_l.dim() != 2:
        raise ValueError(
            f"rocket_hint_loss: logits must be (B, K), got {tuple(logits_l.shape)}"
        )
    _check_same_shape("rocket_hint_loss", logits_l, logits_b)
    return (logits_l - logits_b).pow(2).sum(1).mean()
