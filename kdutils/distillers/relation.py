"""Distillers for structural knowledge, survey section 2.2.3, Eq. (4).

Each method computes a relation among the samples of a batch (or, for CRD,
between a sample and a memory of the whole training set) from the student's
and the teacher's features, and makes the student's match the teacher's.
Unless a paper says otherwise the recipe is RepDistiller's CIFAR benchmark,
the source of Table 1's rows: ``CE + beta * L_relation`` (``-r 1 -a 0 -b
beta``); every method also accepts ``kd_weight`` (with ``T``) to add Hinton's
soft-target term, which is off by default. Features are read at RepDistiller's
points: ``pool`` (the penultimate embedding, ``(B, C)``) or ``layer3`` (the
last stage's map).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import normalize
from ..losses import (
    ContrastMemory,
    category_structure_losses,
    cc_loss,
    crd_nce_loss,
    irg_edge_loss,
    irg_transform_loss,
    irg_vertex_loss,
    kd_loss,
    pkt_loss,
    rkd_angle_loss,
    rkd_distance_loss,
    sp_loss,
)
from ..models import capture
from .base import Distiller, check_weights, feature_shapes, register

__all__ = ["RKD", "SP", "PKT", "CC", "IRG", "CSKD", "CRD", "Embed"]


class Embed(nn.Module):
    """A linear projection ``(B, D_in) -> (B, D_out)``, optionally L2-normalised.

    CRD's embedding head (normalised) and CC's (not), as in RepDistiller.
    """

    def __init__(self, dim_in: int, dim_out: int = 128, l2norm: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)
        self.l2norm = l2norm

    def forward(self, x: Tensor) -> Tensor:
        x = self.linear(x.flatten(1))
        return x / x.norm(dim=1, keepdim=True) if self.l2norm else x


class _Relational(Distiller):
    """Shared parts: CE (+ optional KD) and the student/teacher features."""

    def _init_base(self, ce_weight: float, kd_weight: float, T: float) -> None:
        if T <= 0:
            raise ValueError(f"temperature T must be > 0, got {T}")
        check_weights(ce_weight=ce_weight, kd_weight=kd_weight)
        self.ce_weight, self.kd_weight, self.T = ce_weight, kd_weight, T

    def _base_hparams(self) -> dict:
        return dict(ce_weight=self.ce_weight, kd_weight=self.kd_weight, T=self.T)

    def _features(
        self, x: Tensor, teacher_out: dict[str, Tensor] | None
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Student logits, student features and teacher outputs at ``teacher_layers``."""
        with capture(self.student, self.teacher_layers) as feats:
            logits_s = self.student(x)
        t = teacher_out if teacher_out is not None else self.teacher_outputs(x)
        return logits_s, dict(feats), t

    def _base_terms(self, logits_s: Tensor, logits_t: Tensor, y: Tensor) -> dict:
        terms = {"ce": self.ce_weight * F.cross_entropy(logits_s, y)}
        if self.kd_weight > 0:
            terms["kd"] = self.kd_weight * kd_loss(logits_s, logits_t, self.T)
        return terms


def _pool_dims(student: nn.Module, teacher: nn.Module, data) -> tuple[int, int]:
    """Widths of the students's and teacher's ``pool`` embeddings."""
    x = normalize(data.images[:1], data.info)
    dev_s = next(student.parameters()).device
    dev_t = next(teacher.parameters()).device
    s = feature_shapes(student, ["pool"], x.to(dev_s))["pool"]
    t = feature_shapes(teacher, ["pool"], x.to(dev_t))["pool"]
    return s[0], t[0]


@register("rkd", section="2.2.3")
class RKD(_Relational):
    """Relational KD (Park et al. 2019): distances and angles within the batch.

    ``L = ce_weight CE + rkd_weight (distance_weight L_dist + angle_weight
    L_angle)`` on the ``pool`` embeddings. Defaults: the paper's 25 and 50, and
    RepDistiller's ``-b 1`` (its RKD row; the survey states no weights).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        distance_weight: float = 25.0,
        angle_weight: float = 50.0,
        rkd_weight: float = 1.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
    ) -> None:
        check_weights(
            distance_weight=distance_weight,
            angle_weight=angle_weight,
            rkd_weight=rkd_weight,
        )
        super().__init__(student, teacher)
        self._init_base(ce_weight, kd_weight, T)
        self.distance_weight, self.angle_weight = distance_weight, angle_weight
        self.rkd_weight = rkd_weight
        self.teacher_layers = ("pool",)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, fs, t = self._features(x, teacher_out)
        w = self.rkd_weight
        return logits_s, {
            **self._base_terms(logits_s, t["logits"], y),
            "rkd_dist": w
            * self.distance_weight
            * rkd_distance_loss(fs["pool"], t["pool"]),
            "rkd_angle": w * self.angle_weight * rkd_angle_loss(fs["pool"], t["pool"]),
        }


@register("sp", section="2.2.3")
class SP(_Relational):
    """Similarity-preserving KD (Tung & Mori 2019): batch Gram matrices.

    ``L = ce_weight CE + sp_weight L_SP`` on the last stage's maps
    (``layer3``). Default ``sp_weight = 3000``: RepDistiller's ``-b 3000``
    (the CRD benchmark's SP row; the survey states no weights).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        sp_weight: float = 3000.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
    ) -> None:
        check_weights(sp_weight=sp_weight)
        super().__init__(student, teacher)
        self._init_base(ce_weight, kd_weight, T)
        self.sp_weight = sp_weight
        self.teacher_layers = ("layer3",)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, fs, t = self._features(x, teacher_out)
        return logits_s, {
            **self._base_terms(logits_s, t["logits"], y),
            "sp": self.sp_weight * sp_loss([fs["layer3"]], [t["layer3"]]),
        }


@register("pkt", section="2.2.3", status="added")
class PKT(_Relational):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): cosine affinities.

    ``L = ce_weight CE + pkt_weight L_PKT`` on the ``pool`` embeddings.
    Default ``pkt_weight = 30000``: RepDistiller's ``-b 30000``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        pkt_weight: float = 30000.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
    ) -> None:
        check_weights(pkt_weight=pkt_weight)
        super().__init__(student, teacher)
        self._init_base(ce_weight, kd_weight, T)
        self.pkt_weight = pkt_weight
        self.teacher_layers = ("pool",)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, fs, t = self._features(x, teacher_out)
        return logits_s, {
            **self._base_terms(logits_s, t["logits"], y),
            "pkt": self.pkt_weight * pkt_loss(fs["pool"], t["pool"]),
        }


@register("cc", section="2.2.3", status="added")
class CC(_Relational):
    """Correlation congruence (Peng et al. 2019), RepDistiller's form.

    Both ``pool`` embeddings go through trainable linear heads to ``feat_dim``
    (128); ``L = ce_weight CE + cc_weight cc_loss(form="benchmark")``.
    Default ``cc_weight = 0.02``: RepDistiller's ``-b 0.02``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        feat_dim: int = 128,
        cc_weight: float = 0.02,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
    ) -> None:
        check_weights(cc_weight=cc_weight)
        if feat_dim < 1:
            raise ValueError(f"feat_dim must be >= 1, got {feat_dim}")
        super().__init__(student, teacher)
        self._init_base(ce_weight, kd_weight, T)
        self.feat_dim, self.cc_weight = feat_dim, cc_weight
        self.teacher_layers = ("pool",)
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None

    def setup(self, data) -> None:
        d_s, d_t = _pool_dims(self.student, self.teacher, data)
        self.embed_s = Embed(d_s, self.feat_dim, l2norm=False)
        self.embed_t = Embed(d_t, self.feat_dim, l2norm=False)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if self.embed_s is None:
            raise RuntimeError("CC.setup(data) must run first (it sizes the heads)")
        logits_s, fs, t = self._features(x, teacher_out)
        e_s, e_t = self.embed_s(fs["pool"]), self.embed_t(t["pool"])
        return logits_s, {
            **self._base_terms(logits_s, t["logits"], y),
            "cc": self.cc_weight * cc_loss(e_s, e_t),
        }


@register("irg", section="2.2.3")
class IRG(_Relational):
    """Instance relationship graph (Liu et al. 2019a): vertices, edges, transformations.

    Edges: the max-normalised squared-distance graph of the ``pool``
    embeddings; transformations: how far each sample moves through each
    stage (``stem -> layer1 -> layer2 -> layer3``, pooled); vertices: the
    logits. Losses and the weights 0.005 (edge, transformation) are those of
    the authors' released Caffe training files, which have no vertex term
    (``vertex_weight`` defaults to 0; the authors pair the blocks within each
    stage of ResNet-20, ours pair stage outputs because ResNet8 has one block
    per stage).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        vertex_weight: float = 0.0,
        edge_weight: float = 0.005,
        transform_weight: float = 0.005,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
    ) -> None:
        check_weights(
            vertex_weight=vertex_weight,
            edge_weight=edge_weight,
            transform_weight=transform_weight,
        )
        super().__init__(student, teacher)
        self._init_base(ce_weight, kd_weight, T)
        self.vertex_weight, self.edge_weight = vertex_weight, edge_weight
        self.transform_weight = transform_weight
        self.teacher_layers = ("stem", "layer1", "layer2", "layer3", "pool")

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, fs, t = self._features(x, teacher_out)
        maps = ("stem", "layer1", "layer2", "layer3")
        terms = self._base_terms(logits_s, t["logits"], y)
        if self.vertex_weight > 0:
            terms["irg_vertex"] = self.vertex_weight * irg_vertex_loss(
                logits_s, t["logits"]
            )
        terms["irg_edge"] = self.edge_weight * irg_edge_loss(fs["pool"], t["pool"])
        terms["irg_transform"] = self.transform_weight * irg_transform_loss(
            [fs[k] for k in maps], [t[k] for k in maps]
        )
        return logits_s, terms


@register("cskd", section="2.2.3")
class CSKD(_Relational):
    """Category structure KD (Chen et al. 2020c): intra- and inter-class relations.

    On the ``pool`` embeddings, the distances of samples to their class centre
    and between class centres (see
    :func:`kdutils.losses.category_structure_losses`). The weights (25 each,
    RKD's distance weight for a term of the same kind) are our choice: the
    paper's could not be checked against released code.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        intra_weight: float = 25.0,
        inter_weight: float = 25.0,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
    ) -> None:
        check_weights(intra_weight=intra_weight, inter_weight=inter_weight)
        super().__init__(student, teacher)
        self._init_base(ce_weight, kd_weight, T)
        self.intra_weight, self.inter_weight = intra_weight, inter_weight
        self.teacher_layers = ("pool",)

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        logits_s, fs, t = self._features(x, teacher_out)
        intra, inter = category_structure_losses(fs["pool"], t["pool"], y)
        return logits_s, {
            **self._base_terms(logits_s, t["logits"], y),
            "cs_intra": self.intra_weight * intra,
            "cs_inter": self.inter_weight * inter,
        }


def check_contrast(method: str, feat_dim, nce_k, nce_t, nce_m) -> None:
    """The contrastive memory's settings (CRD's and CRCD's): an embedding of
    ``feat_dim >= 1``, ``nce_k >= 1`` negatives, a temperature ``nce_t > 0``
    and a momentum ``0 <= nce_m < 1``."""
    if feat_dim < 1 or nce_k < 1 or nce_t <= 0 or not 0 <= nce_m < 1:
        raise ValueError(
            f"{method} needs feat_dim >= 1, nce_k >= 1, nce_t > 0 and 0 <= nce_m < 1; "
            f"got {feat_dim}, {nce_k}, {nce_t}, {nce_m}"
        )


@register("crd", section="2.1, 2.2.3")
class CRD(_Relational):
    """Contrastive representation distillation (Tian et al. 2020).

    ``pool`` embeddings through linear heads to ``feat_dim`` (128), L2-normalised;
    each anchor is contrasted with its own memory entry in the other network's
    bank and ``nce_k`` negatives (16384) of other classes, at temperature
    ``nce_t`` (0.07); banks updated with momentum ``nce_m`` (0.5); NCE loss
    with the authors' normalisation constant. ``L = ce_weight CE + crd_weight
    (L_s + L_t)``, defaults RepDistiller's CRD row ``-r 1 -a 0 -b 0.8`` (Table
    1's CRD row; ``kd_weight=1`` gives their CRD+KD). The banks hold one entry
    per training sample and are made in :meth:`setup`; ``forward`` needs the
    samples' dataset indices ``idx``.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        feat_dim: int = 128,
        nce_k: int = 16384,
        nce_t: float = 0.07,
        nce_m: float = 0.5,
        crd_weight: float = 0.8,
        ce_weight: float = 1.0,
        kd_weight: float = 0.0,
        T: float = 4.0,
    ) -> None:
        check_weights(crd_weight=crd_weight)
        check_contrast("CRD", feat_dim, nce_k, nce_t, nce_m)
        super().__init__(student, teacher)
        self._init_base(ce_weight, kd_weight, T)
        self.feat_dim, self.nce_k, self.nce_t, self.nce_m = (
            feat_dim,
            nce_k,
            nce_t,
            nce_m,
        )
        self.crd_weight = crd_weight
        self.teacher_layers = ("pool",)
        self.embed_s: nn.Module | None = None
        self.embed_t: nn.Module | None = None
        self.memory: ContrastMemory | None = None
        # The run's seed (``run`` seeds torch before building a method): the
        # negative sampler's draws then depend only on (seed, step).
        self._seed = torch.initial_seed() % 2**62

    def setup(self, data) -> None:
        d_s, d_t = _pool_dims(self.student, self.teacher, data)
        self.embed_s = Embed(d_s, self.feat_dim)
        self.embed_t = Embed(d_t, self.feat_dim)
        self.memory = ContrastMemory(
            self.feat_dim, data.labels, self.nce_k, self.nce_t, self.nce_m, self._seed
        )

    def forward(self, x: Tensor, y: Tensor, teacher_out=None, idx=None):
        if self.memory is None:
            raise RuntimeError("CRD.setup(data) must run first (it makes the banks)")
        if idx is None:
            raise ValueError(
                "CRD needs the samples' dataset indices: forward(..., idx=)"
            )
        logits_s, fs, t = self._features(x, teacher_out)
        v_s, v_t = self.embed_s(fs["pool"]), self.embed_t(t["pool"])
        probs_s, probs_t = self.memory(v_s, v_t, idx)
        n = self.memory.n_data
        crd = crd_nce_loss(probs_s, n) + crd_nce_loss(probs_t, n)
        return logits_s, {
            **self._base_terms(logits_s, t["logits"], y),
            "crd": self.crd_weight * crd,
        }
