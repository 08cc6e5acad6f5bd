"""Losses of distillation for object detection (survey section 5.1).

Pure functions for the CenterNet detector of :mod:`kdutils.detection`
(outputs on a stride-4 grid: ``"feat"``, ``"heat"``, ``"size"``,
``"offset"``), student first, teacher second. The teacher's tensors are
detached here as well, so no gradient reaches the teacher whatever the
caller does, and half-precision inputs are computed in float32. The three
papers wrote for two-stage Faster R-CNN detectors; each docstring says how
its loss is carried over to a one-stage, anchor-free detector:

- :func:`chen_hint_loss`, :func:`chen_soft_loss`, :func:`teacher_bounded_loss`:
  Chen et al. 2017, "Learning efficient object detection models with
  knowledge distillation" (NeurIPS). No official code was released; the
  forms and defaults are the paper's, and where it gives none this says so;
- :func:`mimic_loss`: Li et al. 2017, "Mimicking very efficient network for
  object detection" (CVPR), feature mimicking inside object regions;
- :func:`imitation_anchors`, :func:`imitation_mask`, :func:`imitation_loss`:
  fine-grained feature imitation (Wang et al. 2019, "Distilling object
  detectors with fine-grained feature imitation", CVPR; code
  twangnh/Distilling-Object-Detectors). The survey's section 5.1 does not
  name it: it is here as a comparison point from beyond the survey's list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_T

__all__ = [
    "chen_hint_loss",
    "chen_soft_loss",
    "teacher_bounded_loss",
    "mimic_loss",
    "imitation_anchors",
    "imitation_mask",
    "imitation_loss",
]


def _f32(x: Tensor) -> Tensor:
    """``x`` in at least float32 (sums over whole maps lose too much in half)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _check_feats(name: str, s: Tensor, t: Tensor) -> None:
    if s.dim() != 4 or s.shape != t.shape:
        raise ValueError(
            f"{name}: student {tuple(s.shape)} and teacher {tuple(t.shape)} must be "
            "(B, C, H, W) of one shape (adapt the student's channels first)"
        )


def chen_hint_loss(feat_s: Tensor, feat_t: Tensor) -> Tensor:
    """Chen et al.'s hint: the L2 distance of adapted student features to the
    teacher's.

    ``mean_{b,c,h,w} (V - Z)^2`` with ``V`` the student's features after the
    adaptation layer (a 1x1 convolution, which the paper uses even when the
    channels already match) and ``Z`` the teacher's, here both detectors'
    backbone output (layer3). The paper writes ``||V - Z||_2^2`` and gives no
    normalisation; the mean over elements is FitNets' reference reduction
    (as :func:`kdutils.losses.hint_loss`), on which the paper's weight
    ``gamma = 0.5`` is applied. ``(B, C, H, W), (B, C, H, W) -> ()``.
    """
    _check_feats("chen_hint_loss", feat_s, feat_t)
    return (_f32(feat_s) - _f32(feat_t.detach())).pow(2).mean()


def chen_soft_loss(
    heat_s: Tensor, heat_t: Tensor, T: float = 1.0, bg_weight: float = 1.5
) -> Tensor:
    """Chen et al.'s class-weighted soft cross-entropy, on CenterNet heat maps.

    The paper's ``L_soft = -sum_c w_c P_t(c) log P_s(c)`` over the classes of
    one region, ``P = softmax(Z / T)``, with ``w = 1.5`` for the background
    and 1 for every object class, averaged over the regions. A CenterNet heat
    map has one sigmoid per (class, cell) instead of one softmax per region,
    so each (class, cell) is read as a two-way distribution, "this class
    here" (``p = sigmoid(z / T)``, weight 1) against "not this class here"
    (its background, ``1 - p``, weight ``bg_weight``)::

        -1/(B H W) sum_{b,c,h,w} [ p_t log p_s + bg_weight (1 - p_t) log(1 - p_s) ]

    summed over the classes and averaged over the cells of the batch (the
    cells play the paper's regions). A cross-entropy, not a KL divergence:
    it includes the teacher's entropy, so it is not zero when the student
    equals the teacher, and with ``bg_weight != 1`` its minimum over ``p_s``
    is ``p_t / (p_t + bg_weight (1 - p_t))``, below the teacher's ``p_t``
    (the weight makes the student more cautious). No ``T^2`` factor (the
    paper has none; its experiments use ``T = 1``). The paper mixes it with
    the hard loss as
    ``mu L_hard + (1 - mu) L_soft`` and gives no value of ``mu`` in the
    text; that weighting is the caller's. ``(B, C, H, W) x 2 -> ()``.
    """
    _check_feats("chen_soft_loss", heat_s, heat_t)
    check_T(T)
    if bg_weight < 0:
        raise ValueError(f"bg_weight must be >= 0, got {bg_weight}")
    zs, zt = _f32(heat_s) / T, _f32(heat_t.detach()) / T
    p_t = torch.sigmoid(zt)
    # log sigmoid(z) and log(1 - sigmoid(z)) = log sigmoid(-z), stably
    per = p_t * F.logsigmoid(zs) + bg_weight * (1 - p_t) * F.logsigmoid(-zs)
    b, _, h, w = heat_s.shape
    return -per.sum() / (b * h * w)


def _gather(maps: Tensor, ind: Tensor) -> Tensor:
    """``(B, D, H, W)`` maps read at flat cell indices ``(B, K)`` -> ``(B, K, D)``."""
    flat = maps.flatten(2)
    return flat.gather(2, ind[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def teacher_bounded_loss(
    pred_s: Tensor,
    pred_t: Tensor,
    target: Tensor,
    ind: Tensor,
    mask: Tensor,
    margin: float = 0.0,
) -> Tensor:
    """Chen et al.'s teacher-bounded regression loss, at the objects' centres.

    For each object ``j``, with ``R_s, R_t`` the student's and teacher's
    regression outputs and ``y`` the ground truth::

        L_b = ||R_s - y||^2   if ||R_s - y||^2 + margin > ||R_t - y||^2,  else 0

    so the student is pulled towards the ground truth only while it is not
    better than the teacher by ``margin``; the teacher is a bound, never a
    target. The loss is ``sum_j L_b / (number of objects)`` (the paper
    averages over its regions; at least 1 in the denominator). Carried over
    to CenterNet: ``R`` is a regression map (``"size"`` or ``"offset"``, ``(B,
    D, H, W)``) read at each object's centre cell ``ind`` ``(B, K)``, ``y``
    the matching target (``"wh"`` or ``"reg"``, ``(B, K, D)``), ``mask``
    ``(B, K)`` 1 for a real object; call it once per map. The paper adds it to
    the usual regression loss as ``L_sL1 + nu L_b`` with ``nu = 0.5``; its
    text gives no value of the margin ``m``, hence ``margin = 0`` (a common
    reimplementation's choice).
    """
    if pred_s.dim() != 4 or pred_s.shape != pred_t.shape:
        raise ValueError(
            f"teacher_bounded_loss: pred_s {tuple(pred_s.shape)} and pred_t "
            f"{tuple(pred_t.shape)} must be (B, D, H, W) maps of one shape"
        )
    b, d = pred_s.shape[:2]
    if ind.dim() != 2 or ind.shape[0] != b or mask.shape != ind.shape:
        raise ValueError(
            f"teacher_bounded_loss: ind {tuple(ind.shape)} and mask "
            f"{tuple(mask.shape)} "
            f"must both be (B, K) with B = {b}"
        )
    if target.shape != (*ind.shape, d):
        raise ValueError(
            f"teacher_bounded_loss: target must be (B, K, D) = {(*ind.shape, d)}, "
            f"got {tuple(target.shape)}"
        )
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    pred_s, pred_t = _f32(pred_s), _f32(pred_t.detach())
    y = target.to(pred_s.dtype)
    err_s = (_gather(pred_s, ind) - y).pow(2).sum(-1)  # (B, K)
    err_t = (_gather(pred_t, ind) - y).pow(2).sum(-1)
    live = (mask > 0) & (err_s + margin > err_t)
    return (err_s * live).sum() / (mask > 0).sum().clamp(min=1)


def _check_boxes(name: str, boxes: Sequence[Tensor], b: int) -> None:
    if isinstance(boxes, Tensor) or len(boxes) != b:
        raise ValueError(
            f"{name}: boxes must be a list of B = {b} tensors (k_i, 4), one per image"
        )
    for i, bx in enumerate(boxes):
        if not isinstance(bx, Tensor) or bx.dim() != 2 or bx.shape[1] != 4:
            raise ValueError(
                f"{name}: boxes[{i}] must be a (k, 4) xyxy tensor, got "
                f"{tuple(getattr(bx, 'shape', ()))}"
            )


def mimic_loss(
    feat_s: Tensor,
    feat_t: Tensor,
    boxes: Sequence[Tensor],
    stride: int = 4,
    output_size: int = 7,
    normalize: bool = True,
) -> Tensor:
    """Li et al.'s feature mimicking, restricted to the object regions.

    ``L_m = 1/(2N) sum_i 1/m_i ||u_i - v_i||^2`` over the ``N`` regions of
    the batch, ``u_i`` the teacher's features of region ``i``, ``v_i`` the
    student's after its adaptation (the paper's transformation ``r``, a 1x1
    convolution applied by the caller), ``m_i`` their number of entries.
    The paper first writes the loss without ``1/m_i`` and then normalises
    by each region's dimension because the plain sum is too large to
    converge; ``normalize=False`` gives the plain form.

    Carried over: the paper's regions are the RPN's proposals, cut from the
    feature map at their own size; here they are the ground-truth boxes
    (``boxes[b]``, ``(k_b, 4)`` xyxy input pixels, e.g.
    :func:`kdutils.detection.gt_boxes`), read with torchvision's
    ``roi_align`` (``spatial_scale = 1/stride``, ``output_size`` square,
    2x2 samples per bin as Mask R-CNN, ``aligned=True`` for continuous
    coordinates), so every ``m_i = C output_size^2``. A batch with no box
    gives 0. ``(B, C, H, W) x 2 -> ()``.
    """
    _check_feats("mimic_loss", feat_s, feat_t)
    _check_boxes("mimic_loss", boxes, feat_s.shape[0])
    if (
        isinstance(output_size, bool)
        or not isinstance(output_size, int)
        or output_size < 1
    ):
        raise ValueError(f"output_size must be an int >= 1, got {output_size!r}")
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    feat_s, feat_t = _f32(feat_s), _f32(feat_t.detach())
    rois = [bx.to(device=feat_s.device, dtype=feat_s.dtype) for bx in boxes]
    n = sum(len(r) for r in rois)
    if n == 0:
        return feat_s.sum() * 0
    from torchvision.ops import roi_align  # seconds to import: only when used

    kw = dict(
        output_size=output_size,
        spatial_scale=1 / stride,
        sampling_ratio=2,
        aligned=True,
    )
    v = roi_align(feat_s, rois, **kw)  # (N, C, P, P)
    u = roi_align(feat_t, rois, **kw)
    per_region = (u - v).pow(2).flatten(1).sum(1)  # (N,)
    if normalize:
        per_region = per_region / v[0].numel()
    return per_region.sum() / (2 * n)


def imitation_anchors(
    sizes: Sequence[float] = (16, 24, 32), ratios: Sequence[float] = (0.5, 1.0, 2.0)
) -> Tensor:
    """Anchor shapes ``(A, 2)`` (width, height in pixels) for
    :func:`imitation_mask`: for each ratio ``r = h / w`` and size ``s``,
    ``w = s / sqrt(r)``, ``h = s sqrt(r)`` (area ``s^2``, as Faster R-CNN's
    ``generate_anchors``, without its rounding to whole pixels).

    CenterNet has no anchors; these are used only to build the mask. The
    defaults fit the scenes: items are ``round(28 s)`` px squares with
    ``s`` in [0.75, 1.25] and their tight boxes have a geometric-mean side
    of about 15 to 30 px (5th to 95th percentile) and ``h / w`` of about 0.4
    to 2.5, so three sizes a factor 1.5 apart span the scales, and the
    authors' ratios (0.5, 1, 2) the shapes.
    """
    if not sizes or not ratios or min(sizes) <= 0 or min(ratios) <= 0:
        raise ValueError(
            f"sizes and ratios must be non-empty and > 0, got {sizes!r}, {ratios!r}"
        )
    out = [(s / math.sqrt(r), s * math.sqrt(r)) for r in ratios for s in sizes]
    return torch.tensor(out, dtype=torch.float32)


def imitation_mask(
    boxes: Sequence[Tensor],
    size: tuple[int, int],
    stride: int = 4,
    anchors: Tensor | None = None,
    psi: float = 0.5,
) -> Tensor:
    """Wang et al.'s fine-grained imitation mask: the cells near an object.

    At every cell of the ``size = (h, w)`` grid, the anchors (``(A, 2)``
    widths and heights, :func:`imitation_anchors` by default) are centred
    on the cell's centre ``((x + 0.5) stride, (y + 0.5) stride)``. For each
    ground-truth box, ``M`` is the largest IoU any anchor of the image has
    with it; a cell is in the mask when one of its anchors has IoU ``> psi
    M`` with one of the boxes (the authors' ``anchor_target_layer``: all
    anchors, those crossing the border included, strict ``>``, the masks of
    the boxes merged). ``boxes[b]``: ``(k_b, 4)`` xyxy input pixels; an image
    without boxes has an empty mask. IoU of continuous boxes (torchvision's
    ``box_iou``; their Faster R-CNN code adds one pixel to widths).
    Returns bool ``(B, h, w)``.
    """
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (h, w) with h, w >= 1, got {size!r}")
    if not 0 < psi <= 1:
        raise ValueError(f"psi must be in (0, 1], got {psi}")
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    if isinstance(boxes, Tensor):
        raise ValueError("imitation_mask: boxes must be a list of (k, 4) tensors")
    _check_boxes("imitation_mask", boxes, len(boxes))
    from torchvision.ops import box_iou  # seconds to import: only when used

    anchors = imitation_anchors() if anchors is None else anchors
    if anchors.dim() != 2 or anchors.shape[1] != 2 or len(anchors) == 0:
        raise ValueError(
            f"anchors must be (A, 2) widths and heights, got {tuple(anchors.shape)}"
        )
    h, w = size
    ys, xs = torch.meshgrid(
        (torch.arange(h, dtype=torch.float64) + 0.5) * stride,
        (torch.arange(w, dtype=torch.float64) + 0.5) * stride,
        indexing="ij",
    )
    centres = torch.stack([xs, ys], -1).reshape(h * w, 1, 2)  # (hw, 1, 2)
    half = anchors.double()[None] / 2  # (1, A, 2)
    grid = torch.cat([centres - half, centres + half], -1).reshape(-1, 4)  # (hw A, 4)
    masks = []
    for bx in boxes:
        if len(bx) == 0:
            masks.append(torch.zeros(h, w, dtype=torch.bool))
            continue
        iou = box_iou(grid, bx.detach().double().cpu())  # (hw A, k)
        near = iou > psi * iou.max(dim=0).values  # (hw A, k)
        masks.append(near.reshape(h * w, -1).any(1).reshape(h, w))
    dev = boxes[0].device if len(boxes) else torch.device("cpu")
    return (
        torch.stack(masks).to(dev) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    )


def imitation_loss(feat_s: Tensor, feat_t: Tensor, mask: Tensor) -> Tensor:
    """Wang et al.'s fine-grained feature imitation loss.

    ``sum_{b,c,h,w} I_{b,h,w} (f^s_adapted - f^t)^2 / (2 N_p)``, ``I`` the
    imitation mask (:func:`imitation_mask`, ``(B, H, W)``) and ``N_p`` its
    number of cells over the batch (not times the channels), as the authors'
    ``sup_loss`` (trainval_net_sup.py); the student's features are adapted
    by the caller (their ``stu_feature_adap``: a 3x3 convolution and a ReLU). An empty
    mask gives 0 (theirs divides by zero). Their code weights it by 0.01
    and skips it for the first 400 iterations. ``(B, C, H, W) x 2, (B, H, W)
    -> ()``.
    """
    _check_feats("imitation_loss", feat_s, feat_t)
    b, _, h, w = feat_s.shape
    if mask.shape != (b, h, w):
        raise ValueError(
            f"imitation_loss: mask must be (B, H, W) = {(b, h, w)}, "
            f"got {tuple(mask.shape)}"
        )
    feat_s, feat_t = _f32(feat_s), _f32(feat_t.detach())
    m = mask.to(feat_s.dtype)[:, None]  # (B, 1, H, W)
    n_p = m.sum()
    if n_p == 0:
        return feat_s.sum() * 0
    return ((feat_s - feat_t).pow(2) * m).sum() / (2 * n_p)
