"""Metrics of dense prediction, computed by torchmetrics (survey section 5).

No metric here is hand-written: :func:`segmentation_metrics` calls
torchmetrics' ``MulticlassJaccardIndex`` and ``MulticlassAccuracy``, and
:func:`detection_map` its ``MeanAveragePrecision`` with the official COCO
evaluation (``pycocotools``) as back-end. This module checks the inputs,
calls them, and turns their tensors into a flat ``dict[str, float]``.

torchmetrics takes seconds to import, so it is imported inside the functions:
``import kdutils`` does not pay for it. Both libraries are dependencies of
the package; if one is missing anyway (an install with ``--no-deps``), the
call raises :class:`~kdutils.errors.EnvironmentProblem` naming what to
install.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .errors import EnvironmentProblem

__all__ = ["segmentation_metrics", "detection_map"]

_INSTALL = "pip install 'torchmetrics>=1.3' 'pycocotools>=2.0.8'"


def _need(module: str) -> None:
    """Import ``module`` or say, in one line, what to install."""
    try:
        __import__(module)
    except ImportError:
        raise EnvironmentProblem(
            f"kdutils.dense_metrics needs {module}, which is not installed: {_INSTALL}"
        ) from None


def _is_int(t: Tensor) -> bool:
    return (
        not t.dtype.is_floating_point
        and not t.dtype.is_complex
        and t.dtype != torch.bool
    )


def _check_segmentation(pred: Tensor, target: Tensor, num_classes: int) -> None:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    for name, t in (("pred", pred), ("target", target)):
        if not isinstance(t, Tensor) or t.dim() != 3 or not _is_int(t):
            raise ValueError(
                f"{name} must be an integer tensor (N, H, W) of class indices, got "
                f"{getattr(t, 'dtype', type(t).__name__)} of shape "
                f"{tuple(getattr(t, 'shape', ()))}"
            )
    if pred.shape != target.shape:
        raise ValueError(
            f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have one shape"
        )
    if pred.numel() == 0:
        raise ValueError("pred and target hold no pixel (N, H or W is 0)")
    for name, t in (("pred", pred), ("target", target)):
        lo, hi = int(t.min()), int(t.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"{name} holds classes in [{lo}, {hi}], outside [0, {num_classes - 1}] "
                f"(num_classes={num_classes})"
            )


def segmentation_metrics(
    pred: Tensor, target: Tensor, num_classes: int = 11
) -> dict[str, float]:
    """Mean IoU, pixel accuracy and each class's IoU of per-pixel labels.

    ``pred`` and ``target``: integer ``(N, H, W)`` class indices in
    ``[0, num_classes)``; for scenes, 0 is the background and ``1 + k`` the
    data set's class ``k``. Every pixel of the whole set is counted once (one
    confusion matrix over all images, as Pascal VOC and Cityscapes do, not a
    mean of per-image scores). Returns:

    - ``"iou_<c>"``: ``TP / (TP + FP + FN)`` of class ``c`` (torchmetrics'
      ``MulticlassJaccardIndex``, ``average="none"``), the background
      included as ``"iou_0"``;
    - ``"miou"``: their mean (``average="macro"``) over the classes present
      in ``pred`` or ``target``. A class absent from both has no IoU: it is
      left out of the mean (torchmetrics gives it weight 0) and its
      ``"iou_<c>"`` is NaN (torchmetrics would report 0);
    - ``"pixel_acc"``: the fraction of pixels labelled right
      (``MulticlassAccuracy``, ``average="micro"``).

    A bad argument raises one ``ValueError`` saying which and why.
    """
    _check_segmentation(pred, target, num_classes)
    _need("torchmetrics")
    from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

    p, t = pred.detach().long().cpu().flatten(), target.detach().long().cpu().flatten()
    # the inputs were checked above; torchmetrics' own check would scan them again
    kw = dict(num_classes=num_classes, validate_args=False)
    per_class = MulticlassJaccardIndex(average="none", **kw)(p, t)
    miou = MulticlassJaccardIndex(average="macro", **kw)(p, t)
    acc = MulticlassAccuracy(average="micro", **kw)(p, t)
    present = (torch.bincount(p, minlength=num_classes) > 0) | (
        torch.bincount(t, minlength=num_classes) > 0
    )
    out = {"miou": float(miou), "pixel_acc": float(acc)}
    for c in range(num_classes):
        out[f"iou_{c}"] = float(per_class[c]) if present[c] else math.nan
    return out


def _check_boxes(
    where: str, d: object, keys: tuple[str, ...], num_classes: int
) -> None:
    if not isinstance(d, dict) or not set(keys) <= set(d):
        raise ValueError(f"{where} must be a dict with keys {keys}, got {d!r:.80}")
    boxes, labels = d["boxes"], d["labels"]
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{where}['boxes'] must be a (k, 4) tensor of xyxy boxes, got "
            f"{tuple(getattr(boxes, 'shape', ()))}"
        )
    k = len(boxes)
    if not boxes.dtype.is_floating_point or not torch.isfinite(boxes).all():
        raise ValueError(f"{where}['boxes'] must be finite floats, got {boxes.dtype}")
    if (boxes[:, 2:] < boxes[:, :2]).any():
        raise ValueError(f"{where}['boxes'] must be xyxy with x1 >= x0 and y1 >= y0")
    if not isinstance(labels, Tensor) or labels.shape != (k,) or not _is_int(labels):
        raise ValueError(
            f"{where}['labels'] must be an integer ({k},) tensor, one per box, got "
            f"{getattr(labels, 'dtype', type(labels).__name__)} "
            f"{tuple(getattr(labels, 'shape', ()))}"
        )
    if k and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{where}['labels'] must lie in [0, {num_classes - 1}], got {labels.tolist()}"
        )
    if "scores" in keys:
        scores = d["scores"]
        if (
            not isinstance(scores, Tensor)
            or scores.shape != (k,)
            or not scores.dtype.is_floating_point
            or not torch.isfinite(scores).all()
        ):
            raise ValueError(
                f"{where}['scores'] must be a finite float ({k},) tensor, one per box"
            )


def _nan_if_missing(v: float) -> float:
    # COCO evaluation writes -1 where a value is undefined (no ground truth)
    return math.nan if v == -1 else v


def detection_map(
    preds: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]],
    num_classes: int = 10,
) -> dict[str, float]:
    """COCO mean average precision of boxes, per image lists of detections.

    ``preds[i]``: ``{"boxes": (k, 4) xyxy pixels, "scores": (k,), "labels":
    (k,) int}`` for image ``i``; ``targets[i]``: ``{"boxes": (m, 4), "labels":
    (m,)}``; labels in ``[0, num_classes)``. Computed by torchmetrics'
    ``MeanAveragePrecision(box_format="xyxy", iou_type="bbox",
    class_metrics=True, backend="pycocotools")``, i.e. the official COCO
    evaluation: IoU of continuous boxes (no +1 pixel), at most the 100
    best-scoring detections of an image count, precision interpolated at 101
    recall points. Returns:

    - ``"map"``: AP averaged over IoU thresholds 0.50:0.05:0.95 and classes;
    - ``"map_50"``, ``"map_75"``: AP at IoU 0.5 and 0.75;
    - ``"ap_<c>"`` for each class ``c``: its AP over 0.50:0.95.

    A class with no ground-truth box in ``targets`` has no AP: COCO reports -1,
    which becomes NaN here (whether or not it was predicted; its false
    positives lower no other class's AP). The means run over the classes that
    have ground truth. A bad argument raises one ``ValueError``.
    """
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or num_classes < 1
    ):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if not isinstance(preds, Sequence) or not isinstance(targets, Sequence):
        raise ValueError("preds and targets must be lists of dicts, one per image")
    if len(preds) != len(targets) or not preds:
        raise ValueError(
            f"preds and targets must be non-empty and of one length (one dict per "
            f"image), got {len(preds)} and {len(targets)}"
        )
    for i, (p, t) in enumerate(zip(preds, targets, strict=True)):
        _check_boxes(f"preds[{i}]", p, ("boxes", "scores", "labels"), num_classes)
        _check_boxes(f"targets[{i}]", t, ("boxes", "labels"), num_classes)
    _need("torchmetrics")
    _need("pycocotools")
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(
        box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools"
    )
    cpu = lambda d, keys: {k: d[k].detach().cpu() for k in keys}  # noqa: E731
    metric.update(
        [cpu(p, ("boxes", "scores", "labels")) for p in preds],
        [cpu(t, ("boxes", "labels")) for t in targets],
    )
    res = metric.compute()
    out = {k: _nan_if_missing(float(res[k])) for k in ("map", "map_50", "map_75")}
    per_class = dict(
        zip(
            res["classes"].reshape(-1).tolist(),
            res["map_per_class"].reshape(-1).tolist(),
            strict=True,
        )
    )
    for c in range(num_classes):
        out[f"ap_{c}"] = _nan_if_missing(per_class.get(c, -1.0))
    return out
