"""Verification on held-out classes: a stand-in for face verification (survey §5.3).

No face data ship with the machines this book runs on, so chapter 17 builds
the face-verification protocol on Fashion-MNIST, with *classes* playing
*identities*:

- the embedding networks train on the six classes :data:`TRAIN_CLASSES`
  (T-shirt/top, Dress, Coat, Sandal, Shirt, Ankle boot; training split);
- verification asks "same class or not?" of pairs of test-split images of the
  four classes :data:`HELDOUT_CLASSES` (Trouser, Pullover, Sneaker, Bag),
  which no network saw in training, as face verification asks "same person
  or not?" of people absent from the training set. The held-out four are one
  of each kind (legwear, a top, a shoe, a bag): each has relatives among the
  training classes (a pullover is a top, a sneaker a shoe), none is another's
  near copy;
- a *hard* sample is a copy of an image made hard by :func:`harden`:
  ``"mask"`` blanks its lower rows (:func:`occlude`), as a face mask hides
  the lower face, occlusion being a difficulty the survey names;
  ``"lowres"`` area-downsamples it and upsamples it back (:func:`degrade`),
  as low-resolution faces. An *easy* sample is the clean image. (At the
  chapter's scale a network trained on both kinds verified low-resolution
  copies as well as clean images, so chapter 17 uses the masks.)

The pairs (:func:`make_pairs`) are a fixed, seeded, balanced set: half the
same class, half different classes. The metrics follow the face benchmarks:
accuracy at the threshold chosen by 10-fold cross-validation as in LFW's
protocol (:func:`kfold_accuracy`), the true-accept rate at a fixed
false-accept rate (:func:`tar_at_far`), and ROC points for plots
(:func:`roc_points`). The score of a pair is the cosine similarity of the two
embeddings.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .data import CLASS_NAMES, DATASETS, TensorData, load, normalize

__all__ = [
    "HELDOUT_CLASSES",
    "TRAIN_CLASSES",
    "ArcFaceHead",
    "EmbeddingNet",
    "Pairs",
    "check_embedder_name",
    "class_names",
    "create_embedder",
    "HARD_KINDS",
    "degrade",
    "embed",
    "harden",
    "heldout_data",
    "kfold_accuracy",
    "make_pairs",
    "occlude",
    "roc_points",
    "tar_at_far",
    "to_input",
    "train_data",
    "verification_metrics",
]

# Classes of Fashion-MNIST that play the training identities, and the held-out
# ones that play the unseen people of a verification benchmark.
TRAIN_CLASSES: tuple[int, ...] = (0, 3, 4, 5, 6, 9)
HELDOUT_CLASSES: tuple[int, ...] = (1, 2, 7, 8)
_INFO = DATASETS["fashion-mnist"]


# --- data ------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _split(train: bool) -> TensorData:
    return load("fashion-mnist", train=train)


def _classes(data: TensorData, classes: Sequence[int]) -> TensorData:
    keep = torch.isin(data.labels, torch.tensor(classes))
    return TensorData(data.images[keep], data.labels[keep], data.name)


def train_data(n: int | None = None, seed: int = 0) -> TensorData:
    """Training-split images of :data:`TRAIN_CLASSES`, labelled by their
    position in it (0..5, the ArcFace classes): ``n`` of them (a fixed,
    class-stratified draw of ``n // 6`` per class, set by ``seed``), or all
    36000."""
    data = _classes(_split(True), TRAIN_CLASSES)
    lookup = torch.full((10,), -1, dtype=torch.long)
    lookup[list(TRAIN_CLASSES)] = torch.arange(len(TRAIN_CLASSES))
    data = TensorData(data.images, lookup[data.labels], data.name)
    return _stratified(data, range(len(TRAIN_CLASSES)), n, seed)


def heldout_data(n: int | None = None, seed: int = 0) -> TensorData:
    """Test-split images of :data:`HELDOUT_CLASSES` (their Fashion-MNIST
    labels): ``n`` of them (a fixed, class-stratified draw of ``n // 4`` per
    class, set by ``seed``), or all 4000."""
    return _stratified(
        _classes(_split(False), HELDOUT_CLASSES), HELDOUT_CLASSES, n, seed
    )


def _stratified(
    data: TensorData, classes: Sequence[int], n: int | None, seed: int
) -> TensorData:
    """``n // len(classes)`` images of each of ``classes`` (labels as in
    ``data``), drawn with ``seed``, in their original order; all if ``n`` is
    None."""
    if n is None:
        return data
    k = len(classes)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 * k:
        raise ValueError(
            f"n must be None or an integer >= {2 * k} (two images per class), got {n!r}"
        )
    g = torch.Generator().manual_seed(seed)
    idx = []
    for c in classes:
        cls = (data.labels == c).nonzero().squeeze(1)
        idx.append(cls[torch.randperm(len(cls), generator=g)[: n // k]])
    idx = torch.cat(idx).sort().values
    return TensorData(data.images[idx], data.labels[idx], data.name)


def to_input(images: Tensor) -> Tensor:
    """uint8 ``(B, 1, 28, 28)`` -> the networks' standardised float input."""
    return normalize(images, _INFO)


def degrade(x: Tensor, low_res: int) -> Tensor:
    """The hard copy of a batch: area-downsampled to ``low_res`` x ``low_res``,
    then bilinearly upsampled back to the input's size. ``(B, C, H, W)`` ->
    same shape. Both steps are linear and keep constants, so it commutes with
    :func:`to_input`'s standardisation."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    size = x.shape[-1]
    if (
        isinstance(low_res, bool)
        or not isinstance(low_res, int)
        or not 1 <= low_res <= size
    ):
        raise ValueError(f"low_res must be an integer in [1, {size}], got {low_res!r}")
    small = F.interpolate(x, size=(low_res, low_res), mode="area")
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def occlude(x: Tensor, rows: int) -> Tensor:
    """The masked copy of a standardised batch: its lowest ``rows`` rows set
    to the background (the standardised value of a black pixel), as a face
    mask hides the lower face. ``(B, C, H, W)`` -> same shape."""
    if x.dim() != 4:
        raise ValueError(f"x must be (B, C, H, W), got shape {tuple(x.shape)}")
    h = x.shape[-2]
    if isinstance(rows, bool) or not isinstance(rows, int) or not 1 <= rows < h:
        raise ValueError(f"rows must be an integer in [1, {h - 1}], got {rows!r}")
    background = (0.0 - _INFO.mean[0]) / _INFO.std[0]
    out = x.clone()
    out[..., h - rows :, :] = background
    return out


HARD_KINDS = ("lowres", "mask")


def harden(x: Tensor, kind: str, size: int) -> Tensor:
    """The hard copy of a standardised batch: ``"lowres"`` is
    :func:`degrade` to ``size`` pixels a side, ``"mask"`` is :func:`occlude`
    of the lowest ``size`` rows."""
    if kind == "lowres":
        return degrade(x, size)
    if kind == "mask":
        return occlude(x, size)
    raise ValueError(f"hard must be one of {HARD_KINDS}, got {kind!r}")


# --- networks --------------------------------------------------------------------

_CNN = re.compile(r"cnn_w(\d+)-(\d+)-(\d+)(?:_c(\d+))?")


def check_embedder_name(name: str) -> tuple[tuple[int, int, int], int]:
    """``"cnn_w8-16-32"`` -> ((8, 16, 32), 1); ``"cnn_w32-64-128_c2"`` -> (.., 2)."""
    m = _CNN.fullmatch(name) if isinstance(name, str) else None
    if m is None or min(int(g) for g in m.groups()[:3]) < 1 or (m.group(4) == "0"):
        raise ValueError(
            f"unknown embedding network {name!r}: use 'cnn_w<a>-<b>-<c>' (three "
            "stage widths, e.g. 'cnn_w8-16-32') with an optional '_c<n>' for n "
            "convolutions per stage"
        )
    widths = tuple(int(g) for g in m.groups()[:3])
    return widths, int(m.group(4) or 1)


class EmbeddingNet(nn.Module):
    """A small CNN whose output is the embedding, ``(B, 1, 28, 28) -> (B, D)``.

    Three stages of ``convs`` x (3x3 convolution, batch norm, ReLU), each
    followed by 2x2 max-pooling (28 -> 14 -> 7 -> 3), then the face networks'
    embedding head: flatten, a linear layer to ``emb_dim`` and batch norm
    (the "BN-FC-BN" output layer of ArcFace's networks, without its dropout).
    ``features(x)`` gives the last stage's map ``(B, widths[2], 3, 3)``.
    """

    def __init__(
        self, widths: Sequence[int] = (8, 16, 32), convs: int = 1, emb_dim: int = 64
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 1
        for w in widths:
            for _ in range(convs):
                layers += [
                    nn.Conv2d(c, w, 3, padding=1, bias=False),
                    nn.BatchNorm2d(w),
                    nn.ReLU(inplace=True),
                ]
                c = w
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(c * 9, emb_dim), nn.BatchNorm1d(emb_dim)
        )
        self.emb_dim = emb_dim
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def create_embedder(name: str, emb_dim: int = 64) -> EmbeddingNet:
    """The embedding network called ``name`` (see :func:`check_embedder_name`)."""
    widths, convs = check_embedder_name(name)
    if isinstance(emb_dim, bool) or not isinstance(emb_dim, int) or emb_dim < 2:
        raise ValueError(f"emb_dim must be an integer >= 2, got {emb_dim!r}")
    return EmbeddingNet(widths, convs, emb_dim)


class ArcFaceHead(nn.Module):
    """The class-centre matrix ``W`` of a margin softmax, ``(D, C)``, initialised
    as TFace's ``ArcFace`` head does (normal, std 0.01). It holds only the
    parameter; :func:`kdutils.losses.arcface_loss` computes the loss."""

    def __init__(self, emb_dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(emb_dim, num_classes))
        nn.init.normal_(self.weight, std=0.01)


@torch.inference_mode()
def embed(
    model: nn.Module,
    images: Tensor,
    hard: tuple[str, int] | None = None,
    batch: int = 1000,
) -> Tensor:
    """L2-normalised embeddings ``(N, D)`` of uint8 ``images``, clean or (with
    ``hard = (kind, size)``) their :func:`harden` copies, the model in eval
    mode."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch):
        x = to_input(images[i : i + batch].to(device))
        if hard is not None:
            x = harden(x, *hard)
        out.append(F.normalize(model(x).float(), dim=1).cpu())
    model.train(was)
    return torch.cat(out)


# --- pairs and metrics -------------------------------------------------------------


@dataclass(frozen=True)
class Pairs:
    """Verification pairs: indices ``a``, ``b`` into an image set and ``same``
    (bool), all ``(P,)``."""

    a: Tensor
    b: Tensor
    same: Tensor

    def __len__(self) -> int:
        return len(self.same)

    def scores(self, emb: Tensor) -> Tensor:
        """Cosine similarity of each pair, from L2-normalised ``emb``."""
        return (emb[self.a] * emb[self.b]).sum(1)


def make_pairs(labels: Tensor, n_pairs: int, seed: int = 0) -> Pairs:
    """A fixed, balanced set of ``n_pairs`` pairs over ``labels``.

    Half are positive (``a`` uniform over the images, ``b`` uniform over the
    other images of its class), half negative (``a`` uniform, ``b`` uniform
    over the images of the other classes); drawn with ``seed``, then shuffled
    so that every fold of :func:`kfold_accuracy` holds both kinds. Images may
    recur across pairs (as in LFW), never within one.
    """
    if (
        isinstance(n_pairs, bool)
        or not isinstance(n_pairs, int)
        or n_pairs < 20
        or n_pairs % 2
    ):
        raise ValueError(
            f"n_pairs must be an even integer >= 20 (ten folds of both kinds), got {n_pairs!r}"
        )
    labels = labels.long()
    counts = torch.bincount(labels)
    if len(counts.nonzero()) < 2 or counts[counts > 0].min() < 2:
        raise ValueError("labels need at least two classes of at least two images each")
    g = torch.Generator().manual_seed(seed)
    half = n_pairs // 2
    n = len(labels)
    order = torch.argsort(labels, stable=True)  # images grouped by class
    start = torch.cumsum(counts, 0) - counts
    # positives: b is another image of a's class
    a_pos = torch.randint(n, (half,), generator=g)
    c = labels[a_pos]
    rank = torch.argsort(order)[a_pos] - start[c]  # a's position in its class
    step = 1 + (torch.rand(half, generator=g) * (counts[c] - 1)).long()
    b_pos = order[start[c] + (rank + step) % counts[c]]
    # negatives: b uniform over the images of the other classes
    a_neg = torch.randint(n, (half,), generator=g)
    c = labels[a_neg]
    r = (torch.rand(half, generator=g) * (n - counts[c])).long()
    # skip over a's class block in the class-sorted order
    r = torch.where(r >= start[c], r + counts[c], r)
    b_neg = order[r]
    a = torch.cat([a_pos, a_neg])
    b = torch.cat([b_pos, b_neg])
    same = torch.cat(
        [torch.ones(half, dtype=torch.bool), torch.zeros(half, dtype=torch.bool)]
    )
    perm = torch.randperm(n_pairs, generator=g)
    return Pairs(a[perm], b[perm], same[perm])


def _check_scores(scores: Tensor, same: Tensor) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(torch.as_tensor(scores).detach().cpu().double())
    y = np.asarray(torch.as_tensor(same).detach().cpu()).astype(bool)
    if s.ndim != 1 or s.shape != y.shape:
        raise ValueError(
            f"scores and same must be 1-D of one length, got {s.shape} and {y.shape}"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if y.all() or not y.any():
        raise ValueError("the pairs must hold both same and different pairs")
    return s, y


def _best_threshold(s: np.ndarray, y: np.ndarray) -> float:
    """The threshold ``t`` maximising the accuracy of "same iff s > t" on
    (s, y): among the midpoints between consecutive distinct scores and the
    two ends; the smallest on ties."""
    u = np.unique(s)
    cand = np.concatenate([[u[0] - 1.0], (u[:-1] + u[1:]) / 2, [u[-1] + 1.0]])
    # correct(t) = #pos above t + #neg at or below t, for every candidate at once
    pos = np.sort(s[y])
    neg = np.sort(s[~y])
    correct = (len(pos) - np.searchsorted(pos, cand, side="right")) + np.searchsorted(
        neg, cand, side="right"
    )
    return float(cand[int(np.argmax(correct))])


def kfold_accuracy(scores: Tensor, same: Tensor, folds: int = 10) -> dict[str, float]:
    """LFW's protocol: split the pairs, in order, into ``folds`` folds; for each,
    choose the best threshold on the other folds (:func:`_best_threshold`)
    and measure the accuracy of "same iff score > threshold" on it. Returns
    the mean and standard deviation over the folds and the mean threshold.
    (The protocol of insightface's ``calculate_roc``, with every midpoint
    between scores as a candidate instead of a fixed grid.)"""
    s, y = _check_scores(scores, same)
    if (
        isinstance(folds, bool)
        or not isinstance(folds, int)
        or not 2 <= folds <= len(s)
    ):
        raise ValueError(f"folds must be an integer in [2, {len(s)}], got {folds!r}")
    bounds = np.linspace(0, len(s), folds + 1).round().astype(int)
    accs, ths = [], []
    for k in range(folds):
        test = np.zeros(len(s), dtype=bool)
        test[bounds[k] : bounds[k + 1]] = True
        t = _best_threshold(s[~test], y[~test])
        accs.append(float(((s[test] > t) == y[test]).mean()))
        ths.append(t)
    return {
        "acc": float(np.mean(accs)),
        "acc_std": float(np.std(accs)),
        "threshold": float(np.mean(ths)),
    }


def tar_at_far(scores: Tensor, same: Tensor, far: float) -> float:
    """True-accept rate at false-accept rate ``far``: the threshold is the
    ``(k+1)``-th largest score of the different pairs, ``k = floor(far * N_neg)``,
    so that at most ``k`` of them score above it; the TAR is the share of same
    pairs scoring above it. Needs ``far * N_neg >= 1`` to mean anything: with
    3000 different pairs, FAR 1e-3 rests on the 3 highest of them."""
    s, y = _check_scores(scores, same)
    neg = np.sort(s[~y])[::-1]
    if not isinstance(far, (int, float)) or isinstance(far, bool) or not 0 < far < 1:
        raise ValueError(f"far must be a number in (0, 1), got {far!r}")
    k = math.floor(far * len(neg))
    if k < 1:
        raise ValueError(
            f"far={far} needs at least {math.ceil(1 / far)} different pairs; "
            f"there are {len(neg)}"
        )
    t = neg[k]
    return float((s[y] > t).mean())


def roc_points(scores: Tensor, same: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve: false-accept and true-accept rates of "same iff score >= t"
    for every distinct score ``t``, from (0, 0) to (1, 1), for plotting."""
    s, y = _check_scores(scores, same)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.diff(s) != 0, True]  # the last of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    fpr = np.r_[0.0, fp / (~y).sum()]
    tpr = np.r_[0.0, tp / y.sum()]
    return fpr, tpr


def verification_metrics(
    scores: Tensor, same: Tensor, fars: Sequence[float] = (1e-2, 1e-3)
) -> dict[str, float]:
    """``acc`` (10-fold), ``acc_std``, ``threshold`` and ``tar@<far>`` for each
    far (e.g. ``tar@0.01``)."""
    out = kfold_accuracy(scores, same)
    for far in fars:
        out[f"tar@{far:g}"] = tar_at_far(scores, same, far)
    return out


def class_names(classes: Sequence[int]) -> list[str]:
    """The Fashion-MNIST names of ``classes``."""
    return [CLASS_NAMES["fashion-mnist"][c] for c in classes]
