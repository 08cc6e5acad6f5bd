"""bench/book_factor.py: its usual loop feeds the book's samples, and trains."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

import kdutils as kd
from kdutils import data as kdata

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

book_factor = pytest.importorskip("book_factor")
reference_loop = pytest.importorskip("reference_loop")

pytestmark = pytest.mark.skipif(
    not reference_loop.FASHION_DIR.exists(), reason="Debian's Fashion-MNIST files"
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return reference_loop.fashion_root(tmp_path_factory.mktemp("fm"))


def _usual(root, n=200, batch=64, seed=0):
    ds = reference_loop.reference_dataset("fashion-mnist", root, True, False)
    ds = Subset(ds, reference_loop.subset_indices(len(ds), n))
    return book_factor.UsualLoader(ds, batch, seed, workers=0)


def test_the_usual_loader_yields_kdutils_samples_normalised_with_their_index(root):
    loader = _usual(root)
    ours = kdata.load("fashion-mnist", train=True).subset(200)
    want_x = kdata.normalize(ours.images, ours.info)
    seen = []
    loader.set_epoch(0)
    for x, y, idx in loader:
        assert x.shape[1:] == (1, 28, 28) and x.dtype == torch.float32
        torch.testing.assert_close(x, want_x[idx], atol=1e-5, rtol=1e-5)
        assert torch.equal(y, ours.labels[idx])
        seen += idx.tolist()
    assert sorted(seen) == list(range(200)) and len(loader) == 4


def test_the_usual_loader_reshuffles_by_epoch_and_repeats_an_epoch(root):
    loader = _usual(root)

    def order(epoch):
        loader.set_epoch(epoch)
        return torch.cat([i for _, _, i in loader]).tolist()

    assert order(0) == order(0)
    assert order(0) != order(1)


def test_the_usual_loop_trains_a_distiller_to_a_finite_accuracy(
    root, tmp_path, monkeypatch
):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    cfg = kd.make_config(
        "smoke",
        method="kd",
        dataset="fashion-mnist",
        train_subset=256,
        test_subset=128,
        epochs=1,
        student="resnet8",
        teacher="resnet8",
    )
    kd.run(kd.teacher_config(cfg), progress=False)
    acc, seconds = book_factor.time_usual(cfg, tmp_path, root, workers=0)
    assert 0.0 <= acc <= 1.0 and seconds > 0
