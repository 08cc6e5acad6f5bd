"""Strong augmentation: the RandAugment variant of multi-level logit distillation (MLKD).

MLKD (Jin et al. 2023) shows the teacher and the student two views of every
image: the usual one and a strongly augmented one. The authors' strong view
(their ``mdistiller/dataset/cifar100.py``: ``RandAugment(2, 10)`` after the
random crop and flip) applies two operations drawn with replacement from the
fourteen below, each with a magnitude drawn uniformly from its range, and then
always a Cutout of a random size. The operations are Pillow's, as theirs are,
so every operation does to a pixel what it does in their loader.

:func:`rand_augment` applies it to a batch of uint8 images ``(B, C, H, W)``,
one draw per image, from the torch random generator (the run's seed makes it
reproducible). What differs from the authors' loader: the draws come from
torch instead of Python's ``random`` and NumPy; the strong view starts from the
batch's usual view instead of its own crop and flip; and a one-channel image
gets Cutout's grey as one value (123, the luminance of their RGB grey
``(125, 123, 114)``), and ``Color`` leaves it unchanged (it has no colour).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch import Tensor

__all__ = ["RANDAUGMENT_OPS", "CUTOUT_FILL", "rand_augment", "apply_op", "cutout"]


def _affine(img: Image.Image, coeffs: tuple[float, ...]) -> Image.Image:
    # Pillow's AFFINE maps each output pixel (x, y) to the input pixel
    # (a x + b y + c, d x + e y + f); nearest neighbour, black outside.
    return img.transform(img.size, Image.AFFINE, coeffs)


def _posterize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.posterize(img, max(1, int(v)))


def _solarize(img: Image.Image, v: float) -> Image.Image:
    return ImageOps.solarize(img, v)


def _color(img: Image.Image, v: float) -> Image.Image:
    if img.mode == "L":
        return img
    return ImageEnhance.Color(img).enhance(v)


# name -> (operation(img, magnitude), lowest magnitude, highest magnitude), in
# the authors' order; magnitudes are drawn uniformly in [low, high).
RANDAUGMENT_OPS: dict[str, tuple] = {
    "AutoContrast": (lambda img, _: ImageOps.autocontrast(img), 0.0, 1.0),
    "Brightness": (lambda img, v: ImageEnhance.Brightness(img).enhance(v), 0.05, 0.95),
    "Color": (_color, 0.05, 0.95),
    "Contrast": (lambda img, v: ImageEnhance.Contrast(img).enhance(v), 0.05, 0.95),
    "Equalize": (lambda img, _: ImageOps.equalize(img), 0.0, 1.0),
    "Identity": (lambda img, _: img, 0.0, 1.0),
    "Posterize": (_posterize, 4.0, 8.0),
    "Rotate": (lambda img, v: img.rotate(v), -30.0, 30.0),
    "Sharpness": (lambda img, v: ImageEnhance.Sharpness(img).enhance(v), 0.05, 0.95),
    "ShearX": (lambda img, v: _affine(img, (1, v, 0, 0, 1, 0)), -0.3, 0.3),
    "ShearY": (lambda img, v: _affine(img, (1, 0, 0, v, 1, 0)), -0.3, 0.3),
    "Solarize": (_solarize, 0.0, 256.0),
    "TranslateX": (
        lambda img, v: _affine(img, (1, 0, v * img.size[0], 0, 1, 0)),
        -0.3,
        0.3,
    ),
    "TranslateY": (
        lambda img, v: _affine(img, (1, 0, 0, 0, 1, v * img.size[1])),
        -0.3,
        0.3,
    ),
}

# Cutout's grey: the authors' RGB value, and its luminance for one channel.
CUTOUT_FILL = {"RGB": (125, 123, 114), "L": 123}


def apply_op(img: Image.Image, name: str, v: float) -> Image.Image:
    """One operation of :data:`RANDAUGMENT_OPS` with magnitude ``v``."""
    if name not in RANDAUGMENT_OPS:
        raise ValueError(
            f"unknown operation {name!r}; choose from: {', '.join(RANDAUGMENT_OPS)}"
        )
    return RANDAUGMENT_OPS[name][0](img, v)


def cutout(img: Image.Image, size: float, cx: float, cy: float) -> Image.Image:
    """A grey square of side ``size`` pixels placed at ``(cx, cy)`` (``size`` 0:
    unchanged).

    As in the authors' ``CutoutAbs``: the corner is ``(cx, cy)`` moved back by
    half the side and clipped to the image, the far corner the clipped corner
    plus the side, clipped again, and Pillow's rectangle includes both corners.
    """
    if size <= 0:
        return img
    w, h = img.size
    x0, y0 = int(max(0.0, cx - size / 2.0)), int(max(0.0, cy - size / 2.0))
    x1, y1 = min(w, x0 + size), min(h, y0 + size)
    out = img.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, x1, y1), CUTOUT_FILL[img.mode])
    return out


def _to_pil(image: Tensor) -> Image.Image:
    a = image.numpy()
    if a.shape[0] == 1:
        return Image.fromarray(a[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(a.transpose(1, 2, 0)), mode="RGB")


def _from_pil(img: Image.Image, channels: int) -> Tensor:
    a = np.array(img, dtype=np.uint8)  # a writable copy
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


def rand_augment(images: Tensor, n: int = 2) -> Tensor:
    """The strong view of a batch: ``n`` random operations, then Cutout, per image.

    ``images`` is uint8 ``(B, C, H, W)`` with one or three channels; the result
    has the same shape, dtype and device. Each image draws its ``n`` operations
    (with replacement) and their magnitudes, then Cutout's size (a fraction
    of the width drawn in ``[0, 0.5)``) and its centre, all from torch's random
    generator. The centre is drawn in ``(1, W]`` by ``(1, H]``, as the authors'
    call ``np.random.uniform(w)`` draws it (its one argument is the low end).
    """
    if (
        images.dtype != torch.uint8
        or images.dim() != 4
        or images.shape[1] not in (1, 3)
    ):
        raise ValueError(
            "images must be uint8 (B, C, H, W) with 1 or 3 channels, got "
            f"{images.dtype} {tuple(images.shape)}"
        )
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    names = list(RANDAUGMENT_OPS)
    b, c = images.shape[:2]
    picks = torch.randint(len(names), (b, n)).tolist()
    mags = torch.rand(b, n).tolist()
    cut = torch.rand(b, 3).tolist()  # relative size, then the centre's x and y
    cpu = images.cpu()
    out = torch.empty_like(cpu)
    for i in range(b):
        img = _to_pil(cpu[i])
        for k, u in zip(picks[i], mags[i], strict=True):
            fn, lo, hi = RANDAUGMENT_OPS[names[k]]
            img = fn(img, lo + (hi - lo) * u)
        w, h = img.size
        # The authors draw the centre with np.random.uniform(w), whose one
        # argument is the *low* end (high stays 1.0): a centre in (1, w].
        cx, cy = w + (1 - w) * cut[i][1], h + (1 - h) * cut[i][2]
        img = cutout(img, 0.5 * cut[i][0] * w, cx, cy)
        out[i] = _from_pil(img, c)
    return out.to(images.device)
