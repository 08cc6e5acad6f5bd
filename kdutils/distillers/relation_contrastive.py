"""Distillers for structural knowledge, second half: relations scored contrastively.

Survey section 2.2.3, Eq. (4). The first half, :mod:`kdutils.distillers.relation`,
holds the batch relations and CRD; this module holds complementary relation
contrastive distillation (CRCD), which scores each sample's relation to
anchors against a memory of the whole training set, as CRD scores the
samples themselves.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..losses import RelationContrastMemory, ce_feature_grad, crd_nce_loss
from .base import check_weights, register
from .relation import Embed, _pool_dims, _Relational, check_contrast

__all__ = ["CRCD"]


def _classifier_weight(model: nn.Module, who: str) -> Tensor:
    """The weight of ``model.fc``, the linear layer after ``pool``."""
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ValueError(
            f"CRCD's gradient relation needs the {who}'s last layer `fc` (a Linear "
            "after `pool`); set grad_weight=0 to use the feature relation alone"
        )
    return fc.weight


@register("crcd", section="2.2.3")
class CRCD(_Relational):
    """Complementary relation contrastive distillation (Zhu et al. 2021).

    Two elements of each sample, its ``pool`` embedding and the gradient of
    the label loss with respect to it, each go through linear heads to
    ``feat_dim`` (128) and are L2-normalised. For each element a pair of
    memory banks (:class:`~kdutils.losses.RelationContrastMemory`) holds one
    entry per training sample. The anchors are the batch's own entries in the
    other network's bank; the relation of a student embedding to an anchor,
    ``n(v_S - a)``, must single out the teacher's relation of the same sample
    to that anchor among those of ``nce_k`` samples of other classes, scored
    by CRD's NCE loss at temperature ``nce_t`` (and symmetrically for the
    teacher's embedding against the student's bank). ``L = ce_weight CE +
    kd_weight KD + crcd_weight (L_s + L_t) + grad_weight (G_s + G_t)``.

    Defaults are those of the authors' released script (``train_student.py``
    of their repository github.com/Lechatelia/CRCD, a PyTorch re-implementation
    they describe as incomplete): 500 negatives, ``nce_t = 0.05``, momentum 0.5,
    ``-r 1 -a 0.9 -b 1`` (KD on, T = 4). The gradient term follows the paper
    (the same relation contrastive loss on the gradient elements, with their
    own heads and banks and the same negatives); the weight 1 is our reading:
    the script's
    default gradient term is a cosine distance instead, and it multiplies that
    term by the KD loss. Not done here: their last 10 of 250 epochs without
    any distillation term. ``forward`` needs the samples' dataset indices.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        feat_dim: int = 128,
        nce_k: int = 500,
        nce_t: float = 0.05,
        nce_m: float = 0.5,
        crcd_weight: float = 1.0,
        grad_weight: float = 1.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.9,
        T: float = 4.0,
    ) -> None:
        check_weights(crcd_weight=crcd_weight, grad_weight=grad_weight)
        check_contrast("CRCD", feat_dim, nce_k, nce_t, nce_m)
        super().__init__(student, teacher)
        self._init_base(ce_weight, kd_weight, T)
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = (
            feat_dim,
            nce_k,
            nce_t,
            nce_m,
        )
        self.crcd_weight, self.grad_weight = crcd_weight, grad_weight
        if grad_weight > 0:
            _classifier_weight(student, "student")
            _classifier_weight(teacher, "teacher")
        self.teacher_layers = ("pool",)
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.grad_embed_s: nn.Module | None = None
        self.grad_embed_t: nn.Module | None = None
        self.memory: RelationContrastMemory | None = None
        self.grad_memory: RelationContrastMemory | None = None
        # The run's seed: the negatives depend only on (seed, step), as CRD's.
        self._seed = torch.initial_seed() % 2**62

    def setup(self, data) -> None:
        d_s, d_t = _pool_dims(self.student, self.teacher, data)
        args = (data.labels, self.nce_k, self.nce_t, self.nce_m, self._seed)
        self.embed_s = Embed(d_s, self.feat_dim)
        self.embed_t = Embed(d_t, self.feat_dim)
        self.memory = RelationContrastMemory(self.feat_dim, *args)
        if self.grad_weight > 0:
            # The gradient of the loss w.r.t. ``pool`` has ``pool``'s width.
            self.grad_embed_s = Embed(d_s, self.feat_dim)
            self.grad_embed_t = Embed(d_t, self.feat_dim)
            self.grad_memory = RelationContrastMemory(self.feat_dim, *args)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if self.memory is None:
            raise RuntimeError("CRCD.setup(data) must run first (it makes the banks)")
        if idx is None:
            raise ValueError(
                "CRCD needs the samples' dataset indices: forward(..., idx=)"
            )
        logits_s, fs, t = self._features(x, teacher_out)
        n = self.memory.n_data
        contrast = self.memory.sample(idx)  # the same negatives for both elements
        p_s, p_t = self.memory(
            self.embed_s(fs["pool"]), self.embed_t(t["pool"]), idx, contrast
        )
        terms = self._base_terms(logits_s, t["logits"], y)
        terms["crcd"] = self.crcd_weight * (crd_nce_loss(p_s, n) + crd_nce_loss(p_t, n))
        if self.grad_memory is not None:
            g_s = ce_feature_grad(logits_s, self.student.fc.weight, y)
            g_t = ce_feature_grad(t["logits"], self.teacher.fc.weight, y)
            q_s, q_t = self.grad_memory(
                self.grad_embed_s(g_s), self.grad_embed_t(g_t), idx, contrast
            )
            terms["crcd_grad"] = self.grad_weight * (
                crd_nce_loss(q_s, n) + crd_nce_loss(q_t, n)
            )
        return logits_s, terms
