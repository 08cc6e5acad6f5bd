"""A small CenterNet detector on the CIFAR ResNets, for the scenes (survey 5.1).

One-stage and anchor-free, as "Objects as Points" (Zhou et al. 2019): every
object is the peak of a class heat map at its box centre, on a grid of stride
:data:`STRIDE` = 4, where two more maps give the box's width and height and
the centre's sub-cell offset. Targets, loss and decoding follow the authors'
code (xingyizhou/CenterNet: ``datasets/sample/ctdet.py``,
``utils/image.py``, ``models/losses.py``, ``models/decode.py``); each
function says where it differs and why.

The task-module protocol the dense trainer relies on: :data:`NUM_CLASSES`,
:func:`build`, the model's output dict, :func:`targets`, :func:`task_loss`,
:func:`evaluate`. :func:`decode` turns outputs into boxes and
:func:`gt_boxes` gives the ground-truth boxes of a batch of targets, for the
losses that look at object regions (``kdutils.losses.detection``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dense_metrics import detection_map
from .models import create_model
from .scenes import SceneSet, to_input

__all__ = [
    "STRIDE",
    "NUM_CLASSES",
    "MAX_OBJECTS",
    "Detector",
    "build",
    "gaussian_radius",
    "targets",
    "gt_boxes",
    "focal_loss",
    "task_loss",
    "decode",
    "evaluate",
]

STRIDE = 4  # input pixels per cell of the output grid (layer3 of a CIFAR ResNet)
NUM_CLASSES = 10
MAX_OBJECTS = 4  # make_scenes' default items=(1, 4)
HEAT_BIAS = -2.19  # CenterNet: sigmoid(-2.19) = 0.1, the heat maps start low
# CenterNet's ctdet defaults (its wh_weight and off_weight)
SIZE_WEIGHT, OFFSET_WEIGHT = 0.1, 1.0


def _head(c_in: int, width: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, width, 3, padding=1, bias=True),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, c_out, 1, bias=True),
    )


class Detector(nn.Module):
    """CIFAR ResNet backbone (stem, layer1-3; no pooling or classifier) and
    three CenterNet heads on layer3, each ``3x3 conv -> ReLU -> 1x1 conv``.

    ``forward(x: (B, 1, S, S))`` with ``S`` a multiple of 4 returns
    ``{"feat": (B, C, S/4, S/4)`` (layer3, what feature distillation uses),
    ``"heat": (B, 10, S/4, S/4)`` (class logits), ``"size": (B, 2, S/4, S/4)``
    (box width, height in grid cells), ``"offset": (B, 2, S/4, S/4)}``
    (centre minus its cell's corner, in cells). The heat head's last bias is
    -2.19 as CenterNet's; the other layers keep PyTorch's default
    initialisation (CenterNet draws the regression heads' weights from
    N(0, 0.001), which slows a short training from scratch).
    """

    feature_layers = ("stem", "layer1", "layer2", "layer3")

    def __init__(
        self,
        backbone: str = "resnet14",
        num_classes: int = NUM_CLASSES,
        head_width: int = 64,
    ) -> None:
        super().__init__()
        net = create_model(backbone, num_classes=num_classes, in_channels=1)
        self.backbone_name = backbone
        self.widths = net.widths
        self.stem, self.layer1, self.layer2, self.layer3 = (
            net.stem,
            net.layer1,
            net.layer2,
            net.layer3,
        )
        c = net.widths[-1]
        self.heat = _head(c, head_width, num_classes)
        self.size = _head(c, head_width, 2)
        self.offset = _head(c, head_width, 2)
        nn.init.constant_(self.heat[-1].bias, HEAT_BIAS)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if (
            x.dim() != 4
            or x.shape[1] != 1
            or x.shape[2] % STRIDE
            or x.shape[3] % STRIDE
        ):
            raise ValueError(
                f"x must be (B, 1, H, W) with H and W multiples of {STRIDE}, "
                f"got {tuple(x.shape)}"
            )
        feat = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return {
            "feat": feat,
            "heat": self.heat(feat),
            "size": self.size(feat),
            "offset": self.offset(feat),
        }


def build(backbone: str) -> Detector:
    """The detector on a backbone named as :func:`kdutils.models.create_model`
    names it (``"resnet14"``, ``"resnet8_w16-20-40-80"``), one input channel."""
    return Detector(backbone)


def gaussian_radius(h: Tensor, w: Tensor, min_overlap: float = 0.7) -> Tensor:
    """CenterNet's ``gaussian_radius((h, w), min_overlap)``, element-wise.

    The smallest of the three roots CornerNet's code computes for a box of
    height ``h`` and width ``w`` (a corner shifted by up to ``r`` still overlaps
    the box by ``min_overlap``), kept exactly as that code writes them
    (including its third root, which differs from the paper's derivation), in
    float64.
    """
    h, w = h.double(), w.double()
    b1 = h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 - torch.sqrt(b1**2 - 4 * c1)) / 2
    b2 = 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 - torch.sqrt(b2**2 - 16 * c2)) / 8
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / (2 * a3)
    return torch.minimum(torch.minimum(r1, r2), r3)


def _check_index(scenes: SceneSet, index: Tensor) -> Tensor:
    if not isinstance(scenes, SceneSet):
        raise ValueError(f"scenes must be a SceneSet, got {type(scenes).__name__}")
    if (
        not isinstance(index, Tensor)
        or index.dim() != 1
        or index.dtype.is_floating_point
        or index.dtype == torch.bool
    ):
        raise ValueError(
            "index must be a 1-D integer tensor of scene numbers, got "
            f"{getattr(index, 'dtype', type(index).__name__)} "
            f"{tuple(getattr(index, 'shape', ()))}"
        )
    index = index.long().cpu()
    if len(index) and (int(index.min()) < 0 or int(index.max()) >= len(scenes)):
        raise ValueError(
            f"index must lie in [0, {len(scenes) - 1}], got [{int(index.min())}, "
            f"{int(index.max())}]"
        )
    return index


def targets(
    scenes: SceneSet, index: Tensor, max_objects: int = MAX_OBJECTS
) -> dict[str, Tensor]:
    """CenterNet targets of the scenes ``index`` (on the CPU, deterministic).

    As ctdet's data set code, for each object with box ``(x0, y0, x1, y1)``:
    in grid units ``b = box / 4``, centre ``c = ((b0 + b2) / 2, (b1 + b3) / 2)``,
    cell ``floor(c)``; radius ``max(0, int(gaussian_radius(ceil(h), ceil(w),
    0.7)))`` with ``h, w`` the box's height and width in grid units; on its
    class's map, the unnormalised Gaussian of ``sigma = (2r + 1) / 6`` over
    the ``(2r + 1)^2`` window around the cell, merged by element-wise max
    (``draw_umich_gaussian``), so the cell itself holds exactly 1. Returns:

    - ``"heat"``: float32 ``(B, 10, S/4, S/4)``;
    - ``"wh"``: ``(B, K, 2)`` the box's ``(w, h)`` in grid units;
    - ``"reg"``: ``(B, K, 2)`` the offset ``c - floor(c)``;
    - ``"ind"``: int64 ``(B, K)``, the cell's flat index ``y W + x``;
    - ``"reg_mask"``: float32 ``(B, K)``, 1 for an object, 0 for padding;
    - ``"boxes"``: ``(B, K, 4)`` the boxes in input pixels, ``"labels"``:
      int64 ``(B, K)`` (-1 for padding), for region losses and evaluation;

    with ``K = max_objects``, objects in the scene's order. Unlike ctdet, the
    boxes are not clipped to ``[0, W - 1]`` grid units: scene boxes are
    continuous coordinates with exclusive ends inside the canvas, so a box
    touching the right edge keeps its width (ctdet's clip, written for its
    affine-warped crops, would shrink it by up to one cell). A scene with more
    than ``max_objects`` objects, a canvas that is not a multiple of 4, or a
    box outside the canvas raises ``ValueError``.
    """
    index = _check_index(scenes, index)
    if (
        isinstance(max_objects, bool)
        or not isinstance(max_objects, int)
        or max_objects < 1
    ):
        raise ValueError(f"max_objects must be an int >= 1, got {max_objects!r}")
    side = scenes.images.shape[-1]
    if side % STRIDE:
        raise ValueError(
            f"the canvas ({side} px) must be a multiple of the stride {STRIDE}"
        )
    gh = gw = side // STRIDE
    n, k = len(index), max_objects
    counts = [len(scenes.boxes[i]) for i in index.tolist()]
    if counts and max(counts) > k:
        i = int(index[counts.index(max(counts))])
        raise ValueError(
            f"scene {i} has {max(counts)} objects, more than max_objects={k}; "
            "raise max_objects"
        )
    boxes = torch.zeros(n, k, 4, dtype=torch.float64)
    labels = torch.full((n, k), -1, dtype=torch.int64)
    mask = torch.zeros(n, k, dtype=torch.bool)
    for row, i in enumerate(index.tolist()):
        m = counts[row]
        boxes[row, :m] = scenes.boxes[i].double()
        labels[row, :m] = scenes.labels[i]
        mask[row, :m] = True
    valid = boxes[mask]  # (M, 4) pixels
    if len(valid) and (
        (valid[:, :2] < 0).any()
        or (valid[:, 2:] > side).any()
        or (valid[:, 2:] <= valid[:, :2]).any()
    ):
        raise ValueError(
            f"boxes must be xyxy inside the {side}x{side} canvas, with x1 > x0, y1 > y0"
        )
    if len(valid) and (labels[mask].min() < 0 or labels[mask].max() >= NUM_CLASSES):
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES - 1}]")

    b = boxes / STRIDE  # grid units, (n, k, 4)
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    centre = torch.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2], -1)
    cell = centre.floor()
    radius = gaussian_radius(h.ceil(), w.ceil()).floor().clamp(min=0)  # max(0, int(r))

    # every object's Gaussian over the whole grid, zero outside its window
    obj_b, obj_k = mask.nonzero(as_tuple=True)
    cx, cy = cell[obj_b, obj_k, 0], cell[obj_b, obj_k, 1]
    r = radius[obj_b, obj_k]
    sigma = (2 * r + 1) / 6
    dx = torch.arange(gw, dtype=torch.float64)[None] - cx[:, None]  # (M, W)
    dy = torch.arange(gh, dtype=torch.float64)[None] - cy[:, None]  # (M, H)
    g = torch.exp(
        -(dx[:, None, :] ** 2 + dy[:, :, None] ** 2) / (2 * sigma[:, None, None] ** 2)
    )
    # gaussian2D zeroes values below float64 eps times its maximum (1)
    g = g * (g >= torch.finfo(torch.float64).eps)
    window = (dx.abs() <= r[:, None])[:, None, :] & (dy.abs() <= r[:, None])[:, :, None]
    g = (g * window).float()  # (M, H, W)
    heat = torch.zeros(n * NUM_CLASSES, gh * gw)
    rows = (obj_b * NUM_CLASSES + labels[obj_b, obj_k])[:, None].expand(-1, gh * gw)
    heat.scatter_reduce_(0, rows, g.flatten(1), "amax", include_self=True)
    m = mask.to(torch.float64)[..., None]
    return {
        "heat": heat.view(n, NUM_CLASSES, gh, gw),
        "wh": (torch.stack([w, h], -1) * m).float(),
        "reg": ((centre - cell) * m).float(),
        "ind": ((cell[..., 1] * gw + cell[..., 0]) * mask).long(),
        "reg_mask": mask.float(),
        "boxes": boxes.float(),
        "labels": labels,
    }


def gt_boxes(tgt: dict[str, Tensor]) -> list[Tensor]:
    """Per image, its ground-truth boxes ``(k_i, 4)`` in input pixels, from
    :func:`targets`' padded ``"boxes"`` and ``"reg_mask"``."""
    return [b[m > 0] for b, m in zip(tgt["boxes"], tgt["reg_mask"], strict=True)]


def focal_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """CenterNet's (CornerNet's) penalty-reduced focal loss ``_neg_loss``.

    ``pred``: probabilities ``(B, C, H, W)``; ``gt``: the Gaussian heat maps.
    ``-(sum_{gt=1} (1-p)^2 log p + sum_{gt<1} (1-gt)^4 p^2 log(1-p)) / n_pos``
    (alpha 2, beta 4), with ``n_pos`` the number of cells where ``gt == 1``;
    with none, the negative sum alone.
    """
    pos = gt.eq(1).to(pred.dtype)
    neg = 1 - pos
    pos_loss = (torch.log(pred) * (1 - pred).pow(2) * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred.pow(2) * (1 - gt).pow(4) * neg).sum()
    n_pos = pos.sum()
    if n_pos == 0:
        return -neg_loss
    return -(pos_loss + neg_loss) / n_pos


def _gather(maps: Tensor, ind: Tensor) -> Tensor:
    """``(B, D, H, W)`` maps read at flat cell indices ``(B, K)`` -> ``(B, K, D)``."""
    flat = maps.flatten(2)  # (B, D, HW)
    return flat.gather(2, ind[:, None, :].expand(-1, flat.shape[1], -1)).transpose(1, 2)


def _reg_l1(pred: Tensor, ind: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    # RegL1Loss: sum |pred - target| over masked entries / (entries + 1e-4)
    m = mask[..., None].expand_as(target).to(pred.dtype)
    got = _gather(pred, ind)
    return (got * m - target * m).abs().sum() / (m.sum() + 1e-4)


_OUT_KEYS = ("heat", "size", "offset")
_TGT_KEYS = ("heat", "wh", "reg", "ind", "reg_mask")


def _check_out_tgt(out: dict, tgt: dict) -> None:
    if not isinstance(out, dict) or not set(_OUT_KEYS) <= set(out):
        raise ValueError(f"out must be the detector's dict with keys {_OUT_KEYS}")
    if not isinstance(tgt, dict) or not set(_TGT_KEYS) <= set(tgt):
        raise ValueError(f"tgt must be a dict from targets() with keys {_TGT_KEYS}")
    if out["heat"].shape != tgt["heat"].shape:
        raise ValueError(
            f"out['heat'] {tuple(out['heat'].shape)} and tgt['heat'] "
            f"{tuple(tgt['heat'].shape)} must have one shape"
        )


def task_loss(
    out: dict[str, Tensor], tgt: dict[str, Tensor]
) -> tuple[Tensor, dict[str, float]]:
    """CenterNet's ctdet loss: ``focal + 0.1 L1(size) + 1 L1(offset)``.

    The focal loss (:func:`focal_loss`) on ``clamp(sigmoid(heat), 1e-4,
    1 - 1e-4)`` (their ``_sigmoid``); each L1 as their ``RegL1Loss``: the
    prediction read at each object's centre cell, ``sum |pred - target| *
    mask / (mask.sum() + 1e-4)`` with the mask repeated over the two
    coordinates. Computed in float32 whatever the outputs' dtype. Returns the
    total and ``{"heat", "size", "offset"}`` (the unweighted parts, floats).
    """
    _check_out_tgt(out, tgt)
    heat = torch.sigmoid(out["heat"].float()).clamp(1e-4, 1 - 1e-4)
    l_heat = focal_loss(heat, tgt["heat"].float())
    mask, ind = tgt["reg_mask"], tgt["ind"]
    l_size = _reg_l1(out["size"].float(), ind, tgt["wh"].float(), mask)
    l_off = _reg_l1(out["offset"].float(), ind, tgt["reg"].float(), mask)
    total = l_heat + SIZE_WEIGHT * l_size + OFFSET_WEIGHT * l_off
    return total, {"heat": l_heat.item(), "size": l_size.item(), "offset": l_off.item()}


def decode(out: dict[str, Tensor], k: int = 20) -> list[dict[str, Tensor]]:
    """The ``k`` best detections of each image, as CenterNet's ``ctdet_decode``.

    Sigmoid of the heat maps; a cell is kept only where it equals the 3x3 max
    around it (their ``_nms``); the ``k`` highest scores over all classes and
    cells; the centre is the cell plus the predicted offset, the box that
    centre plus or minus half the predicted size, all times :data:`STRIDE`
    (a negative predicted size, possible early in training, counts as 0, so
    every box is a valid ``xyxy``; CenterNet leaves it as it is).
    Returns per image ``{"boxes": (k, 4) xyxy input pixels, "scores": (k,),
    "labels": (k,) int64}`` (float32, on the outputs' device). Their top-k
    runs per class first and then over classes; one top-k over all of them
    keeps the same set.
    """
    if not isinstance(out, dict) or not {"heat", "size", "offset"} <= set(out):
        raise ValueError(
            "out must be the detector's dict with 'heat', 'size', 'offset'"
        )
    heat = torch.sigmoid(out["heat"].float())
    b, c, h, w = heat.shape
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= c * h * w:
        raise ValueError(f"k must be an int in [1, {c * h * w}], got {k!r}")
    peak = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (peak == heat)
    scores, idx = heat.flatten(1).topk(k)  # (B, k)
    labels, cell = idx // (h * w), idx % (h * w)
    ys, xs = (cell // w).float(), (cell % w).float()
    off = _gather(out["offset"].float(), cell)  # (B, k, 2)
    size = _gather(out["size"].float(), cell).clamp(min=0)
    cx, cy = xs + off[..., 0], ys + off[..., 1]
    half_w, half_h = size[..., 0] / 2, size[..., 1] / 2
    boxes = (
        torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1) * STRIDE
    )
    return [
        {"boxes": boxes[i], "scores": scores[i], "labels": labels[i]} for i in range(b)
    ]


def evaluate(
    model: nn.Module, scenes: SceneSet, batch_size: int = 256
) -> dict[str, float]:
    """COCO mAP of ``model`` on ``scenes``: ``{"map", "map_50", "map_75",
    "ap_<class>"...}`` from :func:`kdutils.dense_metrics.detection_map`, the
    top 20 detections of each scene (:func:`decode`; a scene holds at most 4
    objects). Runs in eval mode under ``torch.inference_mode`` on the model's
    device, then restores the model's mode."""
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, int)
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    preds: list[dict[str, Tensor]] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(scenes), batch_size):
                x = to_input(scenes.images[start : start + batch_size].to(device))
                preds += [
                    {key: v.cpu() for key, v in p.items()}
                    for p in decode(model(x), k=20)
                ]
    finally:
        model.train(was_training)
    truth = [
        {"boxes": bx, "labels": lb}
        for bx, lb in zip(scenes.boxes, scenes.labels, strict=True)
    ]
    return detection_map(preds, truth, num_classes=NUM_CLASSES)
