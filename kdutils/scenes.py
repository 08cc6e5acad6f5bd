"""Fashion-MNIST scenes: a synthetic detection and segmentation set built offline.

No detection or segmentation data ships with the machines this book runs on,
and none can be downloaded. :func:`make_scenes` builds it from what ships: it
places 1 to 4 Fashion-MNIST items, each rescaled, on a grey, noisy canvas, and
records for every scene each item's box and class and a per-pixel class mask.

- An item's pixels above ``threshold`` are its foreground: they are painted
  onto the canvas (opaque, so a later item covers an earlier one) and give the
  mask its class (``1 + class``; 0 is the background).
- Its box is the tight box of its foreground, ``(x0, y0, x1, y1)`` in pixels
  with exclusive ends (torchvision's ``xyxy``), and stays whole when a later
  item covers part of it. Placements that overlap an earlier box by more
  than ``max_overlap`` (intersection over union) are drawn again, so items
  overlap only slightly.
- Training scenes are built only from the training images, test scenes only
  from the test images. ``(n, train, seed)`` and the geometry decide the set
  completely; a set is built in seconds and kept in memory.

What it is not: every object is a centred, upright item of one of ten
classes on a plain background, with no perspective, clutter, truncation at
the border or scale range of COCO or Cityscapes. It tests whether a method
moves a student's localisation and per-pixel labels towards its teacher's,
not how it does on real scenes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .data import DATASETS, load

__all__ = ["SceneSet", "make_scenes", "box_iou_one", "to_input"]


@dataclass(frozen=True)
class SceneSet:
    """Scenes with their annotations.

    ``images``: uint8 ``(N, 1, S, S)``; ``masks``: int64 ``(N, S, S)``, 0 for
    the background and ``1 + class`` on an item; ``boxes[i]``: float32
    ``(k_i, 4)`` ``xyxy`` in pixels; ``labels[i]``: int64 ``(k_i,)`` classes
    ``0..9``; ``source``: the data set the items come from.
    """

    images: Tensor
    masks: Tensor
    boxes: tuple[Tensor, ...]
    labels: tuple[Tensor, ...]
    source: str

    def __len__(self) -> int:
        return len(self.images)

    @property
    def classes(self) -> int:
        return DATASETS[self.source].classes


def to_input(images: Tensor) -> Tensor:
    """A network's input from scene images: ``(images / 255 - 0.5) / 0.25``.

    uint8 ``(B, 1, S, S)`` -> float32 of the same shape, on the same device:
    grey levels mapped to ``[-2, 2]``, the background (64) near -1. One fixed
    affine map rather than per-set statistics, so teacher, student and every
    scene set see the same numbers.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(
            "images must be uint8 (B, C, S, S), got "
            f"{images.dtype} of shape {tuple(images.shape)}"
        )
    return (images.float() / 255 - 0.5) / 0.25


def box_iou_one(box: Tensor, boxes: Tensor) -> Tensor:
    """Intersection over union of one ``xyxy`` box with each of ``boxes`` ``(k, 4)``."""
    lo = torch.maximum(box[:2], boxes[:, :2])
    hi = torch.minimum(box[2:], boxes[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(dim=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _check(n, size, items, scale, max_overlap, noise, background, threshold, source):
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n (the number of scenes) must be an int >= 0, got {n!r}")
    if source not in DATASETS or DATASETS[source].channels != 1:
        raise ValueError(
            f"source must be a one-channel data set (fashion-mnist, digits), got {source!r}"
        )
    lo_items, hi_items = items
    if not (isinstance(lo_items, int) and isinstance(hi_items, int)) or not (
        1 <= lo_items <= hi_items
    ):
        raise ValueError(
            f"items must be (low, high) ints with 1 <= low <= high, got {items!r}"
        )
    lo_s, hi_s = scale
    if not 0 < lo_s <= hi_s:
        raise ValueError(
            f"scale must be (low, high) with 0 < low <= high, got {scale!r}"
        )
    largest = round(DATASETS[source].size * hi_s)
    if size < largest:
        raise ValueError(
            f"the canvas ({size} px) is smaller than the largest item ({largest} px: "
            f"{DATASETS[source].size} px times scale {hi_s}); enlarge size or lower scale"
        )
    if not 0 <= max_overlap < 1:
        raise ValueError(f"max_overlap must be in [0, 1), got {max_overlap!r}")
    if noise < 0 or not 0 <= background <= 255 or not 0 <= threshold < 255:
        raise ValueError(
            "noise must be >= 0, background in [0, 255] and threshold in [0, 255), "
            f"got {noise!r}, {background!r}, {threshold!r}"
        )


def make_scenes(
    n: int,
    train: bool = True,
    seed: int = 0,
    size: int = 64,
    items: tuple[int, int] = (1, 4),
    scale: tuple[float, float] = (0.75, 1.25),
    max_overlap: float = 0.15,
    noise: float = 12.0,
    background: int = 64,
    threshold: int = 40,
    source: str = "fashion-mnist",
) -> SceneSet:
    """``n`` scenes of ``size`` x ``size`` pixels (see the module's docstring).

    Each scene draws its number of items uniformly in ``items`` (inclusive),
    then for each item an image of the split, a scale in ``scale`` (the
    item's side is ``round(28 * scale)`` pixels, bilinear) and a position
    inside the canvas; a position whose box overlaps an earlier one by more
    than ``max_overlap`` is drawn again (at most 50 times, then the item is
    left out, so a scene can hold fewer items than drawn, never none). The
    canvas is ``background`` plus Gaussian noise of standard deviation
    ``noise``, clipped to ``[0, 255]``. A bad argument raises one
    ``ValueError`` saying which and why.
    """
    _check(n, size, items, scale, max_overlap, noise, background, threshold, source)
    return _make(
        n,
        bool(train),
        int(seed),
        int(size),
        (int(items[0]), int(items[1])),
        (float(scale[0]), float(scale[1])),
        float(max_overlap),
        float(noise),
        int(background),
        int(threshold),
        source,
    )


@functools.lru_cache(maxsize=8)
def _make(
    n,
    train,
    seed,
    size,
    items,
    scale,
    max_overlap,
    noise,
    background,
    threshold,
    source,
):
    data = load(source, train=train)
    pool = data.images[:, 0].float()  # (M, h, w)
    side = data.info.size
    g = torch.Generator().manual_seed(seed * 2 + int(train))
    canvas = (background + noise * torch.randn(n, size, size, generator=g)).clamp(
        0, 255
    )
    masks = torch.zeros(n, size, size, dtype=torch.int64)
    all_boxes, all_labels = [], []
    for i in range(n):
        k = int(torch.randint(items[0], items[1] + 1, (), generator=g))
        boxes: list[Tensor] = []
        labels: list[int] = []
        for _ in range(k):
            j = int(torch.randint(len(pool), (), generator=g))
            s = scale[0] + (scale[1] - scale[0]) * float(torch.rand((), generator=g))
            px = max(1, round(side * s))
            item = F.interpolate(
                pool[j][None, None], size=(px, px), mode="bilinear", align_corners=False
            )[0, 0]
            fg = item > threshold
            if not fg.any():
                continue
            rows, cols = fg.any(dim=1).nonzero(), fg.any(dim=0).nonzero()
            tight = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
            for _attempt in range(50):
                x = int(torch.randint(size - px + 1, (), generator=g))
                y = int(torch.randint(size - px + 1, (), generator=g))
                box = torch.tensor(
                    [x + tight[0], y + tight[1], x + tight[2], y + tight[3]],
                    dtype=torch.float32,
                )
                if (
                    not boxes
                    or box_iou_one(box, torch.stack(boxes)).max() <= max_overlap
                ):
                    break
            else:
                continue
            region = canvas[i, y : y + px, x : x + px]
            region[fg] = item[fg]
            masks[i, y : y + px, x : x + px][fg] = 1 + int(data.labels[j])
            boxes.append(box)
            labels.append(int(data.labels[j]))
        if not boxes:  # every draw failed: keep the scene honest, never empty
            raise RuntimeError(
                f"scene {i}: no item could be placed; lower max_overlap or threshold"
            )
        all_boxes.append(torch.stack(boxes))
        all_labels.append(torch.tensor(labels, dtype=torch.int64))
    images = canvas.round().to(torch.uint8)[:, None]
    return SceneSet(images, masks, tuple(all_boxes), tuple(all_labels), source)
