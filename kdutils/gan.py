"""DCGAN networks for Fashion-MNIST, the Fréchet distance, classifier features.

The pieces of chapter 18 (survey §5.4, image generation) that are not
losses or the training loop:

- :class:`Generator` and :class:`Discriminator`: DCGAN (Radford et al. 2016)
  scaled down to 1 × 28 × 28 images, with a width multiplier, so that a
  teacher and a thinner student differ only in their channel counts.
  Transposed convolutions with batch norm and ReLU in the generator, a tanh
  output in [-1, 1]; strided convolutions with leaky ReLU (slope 0.2) in the
  discriminator, batch norm on every block but the first; no pooling and no
  fully connected hidden layers, as the DCGAN guidelines ask (the 28 × 28
  sizes only need a linear projection of the noise to 7 × 7 maps).
- :func:`dcgan_init`: the DCGAN paper's initialisation.
- :func:`frechet_distance`: the Fréchet distance between two Gaussians fitted
  to two sets of features (Heusel et al. 2017). Computed here on the
  features of the book's own Fashion-MNIST classifier
  (:func:`classifier_features`), so it is *not* the Inception FID, whose
  numbers need Inception-v3's downloaded weights and are not comparable.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from .data import DATASETS
from .models import capture

__all__ = [
    "Discriminator",
    "Generator",
    "classifier_features",
    "dcgan_init",
    "fixed_noise",
    "frechet_distance",
    "from_uint8",
    "gaussian_stats",
    "to_classifier_input",
]

# Fashion-MNIST images, the one data set of the chapter.
_INFO = DATASETS["fashion-mnist"]


def _channels(base: int, width: float) -> int:
    if not isinstance(width, (int, float)) or isinstance(width, bool):
        raise ValueError(f"width must be a number > 0, got {width!r}")
    if not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a finite number > 0, got {width!r}")
    c = int(round(base * width))
    if c < 1:
        raise ValueError(
            f"width {width} leaves {base} x {width} < 1 channel; use a width of at "
            f"least {1 / base:g}"
        )
    return c


class Generator(nn.Module):
    """DCGAN generator, noise ``z`` (B, z_dim) -> image (B, 1, 28, 28) in [-1, 1].

    ``z -> Linear -> (4c, 7, 7) -> BN, ReLU -> ConvT 4x4/2 -> (2c, 14, 14)
    -> BN, ReLU -> ConvT 4x4/2 -> (1, 28, 28) -> tanh``, with ``c =
    round(64 * width)`` (DCGAN's ``ngf = 64`` at width 1).
    """

    def __init__(self, width: float = 1.0, z_dim: int = 100) -> None:
        super().__init__()
        if not isinstance(z_dim, int) or isinstance(z_dim, bool) or z_dim < 1:
            raise ValueError(f"z_dim must be an integer >= 1, got {z_dim!r}")
        c = _channels(64, width)
        self.width, self.z_dim, self.c = width, z_dim, c
        self.project = nn.Linear(z_dim, 4 * c * 7 * 7, bias=False)
        self.body = nn.Sequential(
            nn.BatchNorm2d(4 * c),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, 2, 1, bias=False),  # 7 -> 14
            nn.BatchNorm2d(2 * c),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * c, 1, 4, 2, 1, bias=False),  # 14 -> 28
            nn.Tanh(),
        )
        dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(
                f"the generator takes noise of shape (B, {self.z_dim}), got "
                f"{tuple(z.shape)}"
            )
        return self.body(self.project(z).view(-1, 4 * self.c, 7, 7))


class Discriminator(nn.Module):
    """DCGAN discriminator, image (B, 1, 28, 28) -> logit (B,).

    ``Conv 4x4/2 -> (c, 14, 14) -> LReLU -> Conv 4x4/2 -> (2c, 7, 7) -> BN,
    LReLU`` are its :meth:`features`, flattened to (B, 2c·49); a linear
    layer (DCGAN's last convolution over the whole 7 × 7 map) gives the
    logit. ``c = round(64 * width)`` (DCGAN's ``ndf``).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        c = _channels(64, width)
        self.width, self.c = width, c
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 4, 2, 1, bias=False),  # 28 -> 14
            nn.LeakyReLU(0.2, inplace=True),
            nn.Conv2d(c, 2 * c, 4, 2, 1, bias=False),  # 14 -> 7
            nn.BatchNorm2d(2 * c),
            nn.LeakyReLU(0.2, inplace=True),
            nn.Flatten(),
        )
        self.head = nn.Linear(2 * c * 7 * 7, 1)
        dcgan_init(self)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer, (B, 2c·49): what the chapter's perceptual
        and triplet terms compare."""
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(
                f"the discriminator takes images of shape (B, 1, 28, 28), got "
                f"{tuple(x.shape)}"
            )
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x)).squeeze(1)


def dcgan_init(module: nn.Module) -> nn.Module:
    """DCGAN's initialisation: every convolution and linear weight from
    N(0, 0.02²), batch-norm scales from N(1, 0.02²), biases zero
    (Radford et al. 2016, §4). Returns ``module``."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


def from_uint8(images: Tensor) -> Tensor:
    """uint8 images (N, 1, 28, 28) -> float in [-1, 1], the generator's range."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return images.float().div(127.5).sub(1.0)


def to_classifier_input(images: Tensor) -> Tensor:
    """Images in [-1, 1] -> the classifier's input: [0, 1], then standardised
    with Fashion-MNIST's mean and std (as :func:`kdutils.data.normalize`)."""
    x = (images + 1.0) / 2.0
    return (x - _INFO.mean[0]) / _INFO.std[0]


def fixed_noise(n: int, z_dim: int = 100, seed: int = 0) -> Tensor:
    """``n`` noise vectors (n, z_dim) from N(0, I) that depend only on ``seed``:
    every generator evaluated on them sees the same inputs."""
    return torch.randn(n, z_dim, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def classifier_features(
    classifier: nn.Module, images: Tensor, batch_size: int = 500, layer: str = "pool"
) -> np.ndarray:
    """The classifier's ``layer`` features (the pooled penultimate layer of the
    book's ResNets by default) of ``images`` in [-1, 1], as float64 (N, D)."""
    was = classifier.training
    classifier.eval()
    out = []
    with capture(classifier, [layer]) as feats:
        for i in range(0, len(images), batch_size):
            classifier(to_classifier_input(images[i : i + batch_size]))
            out.append(feats[layer].flatten(1).double().cpu())
    classifier.train(was)
    return torch.cat(out).numpy()


def gaussian_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D)."""
    feats = _check_feats(feats, "feats")
    return feats.mean(0), np.cov(feats, rowvar=False)


def _check_feats(feats, name: str) -> np.ndarray:
    a = np.asarray(feats, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or a.shape[1] < 1:
        raise ValueError(
            f"{name} must be a (N, D) array with N >= 2 samples, got shape {a.shape}"
        )
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return a


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix, by
    its eigen-decomposition (round-off negatives clipped to 0)."""
    vals, vecs = np.linalg.eigh((m + m.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets.

    ``d² = ‖μ_a − μ_b‖² + Tr(Σ_a) + Tr(Σ_b) − 2 Tr((Σ_a Σ_b)^{1/2})`` with the
    sample means and unbiased covariances of ``feats_a`` (N_a, D) and
    ``feats_b`` (N_b, D) (Heusel et al. 2017). ``Tr((Σ_a Σ_b)^{1/2})`` is
    computed as the sum of the square roots of the eigenvalues of the
    symmetric ``Σ_a^{1/2} Σ_b Σ_a^{1/2}``, which has the same eigenvalues as
    ``Σ_a Σ_b``: exact for singular covariances too (features that are zero
    for every image, as after a ReLU), where ``scipy.linalg.sqrtm`` of the
    product warns and needs the reference code's ``eps`` offset. In one
    dimension it is ``(μ_a − μ_b)² + (σ_a − σ_b)²``.
    """
    a = _check_feats(feats_a, "feats_a")
    b = _check_feats(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"the two feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}"
        )
    mu_a, cov_a = a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))
    mu_b, cov_b = b.mean(0), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(cov_a)
    inner = root_a @ cov_b @ root_a
    tr_covmean = np.sqrt(
        np.clip(np.linalg.eigvalsh((inner + inner.T) / 2), 0, None)
    ).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_covmean)
