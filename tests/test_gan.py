"""kdutils.gan: the DCGAN networks, their initialisation, the Fréchet distance
and the classifier features it is computed on."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

import kdutils as kd
from kdutils import gan


@pytest.mark.parametrize("width,c", [(1.0, 64), (0.5, 32), (0.125, 8)])
def test_generator_shapes_range_and_width(width, c):
    g = gan.Generator(width)
    assert g.c == c
    x = g(torch.randn(5, 100))
    assert x.shape == (5, 1, 28, 28)
    assert x.min() >= -1 and x.max() <= 1  # tanh
    # the width multiplier scales every hidden layer: parameters shrink with it
    assert kd.num_params(gan.Generator(width / 2)) < kd.num_params(g)


def test_discriminator_shapes_and_features():
    d = gan.Discriminator(0.25)
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert d(x).shape == (3,)
    f = d.features(x)
    assert f.shape == (3, 2 * 16 * 7 * 7)
    torch.testing.assert_close(d.head(f).squeeze(1), d(x))


def test_dcgan_init_statistics():
    torch.manual_seed(0)
    g = gan.Generator(1.0)
    w = g.project.weight
    assert abs(w.mean().item()) < 1e-3 and abs(w.std().item() - 0.02) < 1e-3
    bn = g.body[0]
    assert abs(bn.weight.mean().item() - 1) < 0.01
    assert abs(bn.weight.std().item() - 0.02) < 0.01 and torch.all(bn.bias == 0)
    d = gan.Discriminator(1.0)
    conv = d.body[2]
    assert abs(conv.weight.std().item() - 0.02) < 1e-3
    assert torch.all(d.head.bias == 0)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: gan.Generator(0), "width"),
        (lambda: gan.Generator(float("nan")), "width"),
        (lambda: gan.Generator(0.001), "at least"),
        (lambda: gan.Generator(1.0, z_dim=0), "z_dim"),
        (lambda: gan.Discriminator("wide"), "width"),
        (lambda: gan.Generator(0.125)(torch.randn(2, 99)), r"\(B, 100\)"),
        (lambda: gan.Discriminator(0.25)(torch.randn(2, 1, 32, 32)), "28, 28"),
        (lambda: gan.from_uint8(torch.zeros(2, 1, 28, 28)), "uint8"),
    ],
)
def test_bad_input_is_one_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _fd_reference(a: np.ndarray, b: np.ndarray) -> float:
    """The FID formula with scipy's general matrix square root of Σ_a Σ_b."""
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    return float(
        ((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(root)
    )


def test_frechet_distance_equals_the_formula_with_scipy_sqrtm():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(300, 6))
    b = rng.normal(0.5, 1.0, size=(200, 6)) @ rng.normal(size=(6, 6))
    assert gan.frechet_distance(a, b) == pytest.approx(_fd_reference(a, b), rel=1e-9)
    # symmetric, and zero (to round-off) for one set against itself
    assert gan.frechet_distance(b, a) == pytest.approx(gan.frechet_distance(a, b))
    assert abs(gan.frechet_distance(a, a)) < 1e-9


def test_frechet_distance_in_one_dimension_is_the_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 2.0, size=(500, 1)), rng.normal(-0.5, 0.5, size=(400, 1))
    sa, sb = a.std(ddof=1), b.std(ddof=1)
    expected = (a.mean() - b.mean()) ** 2 + (sa - sb) ** 2
    assert gan.frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_with_singular_covariances():
    # a feature that is 0 for every image (a dead ReLU) makes both covariances
    # singular; the distance is then that of the other features
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(100, 3)), rng.normal(1, 2, size=(120, 3))
    a0 = np.concatenate([a, np.zeros((100, 1))], 1)
    b0 = np.concatenate([b, np.zeros((120, 1))], 1)
    assert gan.frechet_distance(a0, b0) == pytest.approx(_fd_reference(a, b), rel=1e-6)


@pytest.mark.parametrize(
    "a,b,match",
    [
        (np.zeros((5, 3)), np.zeros((5, 4)), "dimension"),
        (np.zeros((1, 3)), np.zeros((5, 3)), "N >= 2"),
        (np.zeros(5), np.zeros(5), r"\(N, D\)"),
        (np.full((5, 2), np.nan), np.zeros((5, 2)), "NaN"),
    ],
)
def test_frechet_distance_bad_input(a, b, match):
    with pytest.raises(ValueError, match=match):
        gan.frechet_distance(a, b)


def test_classifier_input_matches_the_data_pipeline():
    images = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    info = kd.data.DATASETS["fashion-mnist"]
    x = gan.from_uint8(images)
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(
        gan.to_classifier_input(x), kd.data.normalize(images, info)
    )


def test_classifier_features_are_the_pooled_penultimate_layer():
    torch.manual_seed(0)
    model = kd.build_model("resnet8_w4-4-8-8", "fashion-mnist").eval()
    images = torch.rand(7, 1, 28, 28) * 2 - 1
    feats = gan.classifier_features(model, images, batch_size=3)
    assert feats.shape == (7, 8) and feats.dtype == np.float64
    with torch.no_grad():
        x = gan.to_classifier_input(images)
        body = model.layer3(model.layer2(model.layer1(model.stem(x))))
        expected = body.mean(dim=(2, 3))
    np.testing.assert_allclose(feats, expected.double().numpy(), rtol=1e-5, atol=1e-6)


def test_fixed_noise_depends_only_on_the_seed():
    torch.manual_seed(123)
    a = gan.fixed_noise(4, 100, seed=3)
    torch.manual_seed(456)
    assert torch.equal(a, gan.fixed_noise(4, 100, seed=3))
    assert not torch.equal(a, gan.fixed_noise(4, 100, seed=4))


def test_init_touches_only_weights_and_norms():
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Linear(3, 3))
    gan.dcgan_init(m)
    assert torch.all(m[0].bias == 0) and torch.all(m[2].bias == 0)
