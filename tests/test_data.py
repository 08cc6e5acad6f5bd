"""Datasets (IDX, CIFAR pickles, digits), the look-up order, the loader and augmentation."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets

import kdutils as kd
from kdutils import data as kdata
from kdutils.models import build_model

# Writers of the on-disk formats, independent of kdutils.


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte IDX file (the MNIST format), gzipped if ``path`` ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    raw = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def write_fashion(folder: Path, n_train: int, n_test: int, seed: int = 0):
    """Tiny Fashion-MNIST in Debian's layout (/usr/share/datasets/fashion-mnist)."""
    rng = np.random.default_rng(seed)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y)
        out[prefix] = (x, y)
    return out


class _Py2Pickler(pickle._Pickler):
    """Pickles ``bytes`` as Python 2 ``str`` (BINSTRING), as CIFAR's files were written.

    The real ``cifar-10-batches-py`` files are Python 2 cPickle output: their
    keys are Python 2 strings, which load as ``b"data"`` under
    ``encoding="bytes"`` and as ``"data"`` under ``encoding="latin1"`` (what
    torchvision uses); the arrays reference ``numpy.core.multiarray``.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def _save_py2_str(self, obj: bytes) -> None:
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def write_py2_pickle(path: Path, obj) -> None:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def write_cifar10(root: Path, per_batch: int = 16, n_test: int = 8, seed: int = 0):
    """Tiny CIFAR-10 in torchvision's on-disk format; returns (train, test) arrays."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    splits = {"train": ([], []), "test": ([], [])}
    files = [(f"data_batch_{i}", "train", per_batch) for i in range(1, 6)]
    files.append(("test_batch", "test", n_test))
    for fname, split, n in files:
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 10, n)]
        write_py2_pickle(
            folder / fname,
            {
                b"batch_label": fname.encode(),
                b"labels": y,
                b"data": x,
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
            },
        )
        splits[split][0].append(x)
        splits[split][1].extend(y)
    return {k: (np.concatenate(xs), np.array(ys)) for k, (xs, ys) in splits.items()}


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 6, seed: int = 1):
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        coarse = [f // 5 for f in fine]
        write_py2_pickle(
            root / "cifar-100-python" / split,
            {
                b"filenames": [f"img_{i}.png".encode() for i in range(n)],
                b"batch_label": split.encode(),
                b"fine_labels": fine,
                b"coarse_labels": coarse,
                b"data": x,
            },
        )
        out[split] = (x, np.array(fine))
    return out


class _Offline:
    """Stands in for torchvision's dataset classes when there is no network."""

    def __init__(self, *args, **kwargs):
        raise urllib.error.URLError("no network (test)")


@pytest.fixture
def offline(monkeypatch):
    for name in ("CIFAR10", "CIFAR100", "FashionMNIST"):
        monkeypatch.setattr(torchvision.datasets, name, _Offline)


# IDX and Fashion-MNIST


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 4, 5), dtype=np.uint8)
    labels = rng.integers(0, 10, 3, dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    write_idx(tmp_path / f"lab{suffix}", labels)
    np.testing.assert_array_equal(kdata._read_idx(tmp_path / f"img{suffix}"), images)
    np.testing.assert_array_equal(kdata._read_idx(tmp_path / f"lab{suffix}"), labels)


def test_read_idx_rejects_a_non_idx_file(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 2) + b"ab")
    with pytest.raises(ValueError, match="IDX"):
        kdata._read_idx(bad)


def test_load_fashion_from_explicit_root(tmp_path):
    ref = write_fashion(tmp_path / "fm", n_train=12, n_test=5)
    for train, prefix in ((True, "train"), (False, "t10k")):
        d = kdata.load("fashion-mnist", train=train, root=tmp_path / "fm")
        x, y = ref[prefix]
        assert d.images.shape == (len(y), 1, 28, 28)
        assert d.images.dtype == torch.uint8 and d.labels.dtype == torch.int64
        np.testing.assert_array_equal(d.images[:, 0].numpy(), x)
        np.testing.assert_array_equal(d.labels.numpy(), y)
        assert d.name == "fashion-mnist" and d.info.classes == 10


def test_load_fashion_from_KD_DATA_DIR(tmp_path, monkeypatch):
    ref = write_fashion(tmp_path / "fm", n_train=7, n_test=3)
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "fm"))
    d = kdata.load("fashion-mnist", train=True)
    assert len(d) == 7
    np.testing.assert_array_equal(d.images[:, 0].numpy(), ref["train"][0])


def test_explicit_root_comes_before_KD_DATA_DIR(tmp_path, monkeypatch):
    write_fashion(tmp_path / "env", n_train=7, n_test=3, seed=1)
    ref = write_fashion(tmp_path / "explicit", n_train=4, n_test=2, seed=2)
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "env"))
    d = kdata.load("fashion-mnist", train=False, root=tmp_path / "explicit")
    np.testing.assert_array_equal(d.labels.numpy(), ref["t10k"][1])


def test_load_fashion_offline_is_a_clear_error(tmp_path, monkeypatch, offline):
    monkeypatch.setattr(kdata, "SYSTEM_DIRS", {"fashion-mnist": tmp_path / "absent"})
    with pytest.raises(kdata.DataUnavailable, match="KD_DATA_DIR"):
        kdata.load("fashion-mnist")


@pytest.mark.skipif(
    not (kdata.SYSTEM_DIRS["fashion-mnist"] / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_the_system_path():
    train = kdata.load("fashion-mnist", train=True)
    test = kdata.load("fashion-mnist", train=False)
    assert train.images.shape == (60000, 1, 28, 28)
    assert test.images.shape == (10000, 1, 28, 28)
    assert train.images.dtype == torch.uint8
    assert sorted(train.labels.unique().tolist()) == list(range(10))
    assert torch.bincount(test.labels).tolist() == [1000] * 10


# CIFAR


def test_fixture_writes_cifar_in_the_real_python2_format(tmp_path):
    """The fixture's files decode like the real ones: bytes keys under 'bytes'."""
    write_cifar10(tmp_path, per_batch=2, n_test=2)
    raw = (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes()
    assert raw[:2] == b"\x80\x02"  # protocol 2
    as_bytes = pickle.loads(raw, encoding="bytes")
    assert set(as_bytes) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert as_bytes[b"data"].dtype == np.uint8 and as_bytes[b"data"].shape == (2, 3072)


def test_load_cifar10_from_KD_DATA_DIR(tmp_path, monkeypatch, offline):
    ref = write_cifar10(tmp_path / "data")
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "data"))
    for split, train in (("train", True), ("test", False)):
        d = kdata.load("cifar10", train=train)
        x, y = ref[split]
        assert d.images.shape == (len(y), 3, 32, 32) and d.images.dtype == torch.uint8
        # Each row is 1024 red, 1024 green, 1024 blue values, row-major.
        np.testing.assert_array_equal(d.images.reshape(len(y), -1).numpy(), x)
        np.testing.assert_array_equal(
            d.images[0, 1, 0, :].numpy(), x[0, 1024 : 1024 + 32]
        )
        np.testing.assert_array_equal(d.labels.numpy(), y)
        assert d.labels.dtype == torch.int64
    assert len(kdata.load("cifar10", train=True)) == 5 * 16


def test_load_cifar10_from_explicit_root(tmp_path, offline):
    ref = write_cifar10(tmp_path / "data", per_batch=3, n_test=4)
    d = kdata.load("cifar10", train=False, root=tmp_path / "data")
    np.testing.assert_array_equal(d.labels.numpy(), ref["test"][1])


def test_load_cifar100_uses_the_fine_labels(tmp_path, monkeypatch, offline):
    ref = write_cifar100(tmp_path / "data")
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "data"))
    for split, train in (("train", True), ("test", False)):
        d = kdata.load("cifar100", train=train)
        x, fine = ref[split]
        assert d.images.shape == (len(fine), 3, 32, 32)
        np.testing.assert_array_equal(d.images.reshape(len(fine), -1).numpy(), x)
        np.testing.assert_array_equal(d.labels.numpy(), fine)
        assert d.info.classes == 100


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_offline_is_a_clear_error(name, offline):
    with pytest.raises(kdata.DataUnavailable) as info:
        kdata.load(name)
    message = str(info.value)
    assert "fashion-mnist" in message
    assert "KD_DATA_DIR" in message
    assert kdata._CIFAR_DIRS[name] in message  # says which folder to provide


def test_a_partial_cifar_folder_is_not_used(tmp_path, monkeypatch, offline):
    write_cifar10(tmp_path / "data", per_batch=2, n_test=2)
    (tmp_path / "data" / "cifar-10-batches-py" / "data_batch_3").unlink()
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "data"))
    assert len(kdata.load("cifar10", train=False)) == 2
    with pytest.raises(kdata.DataUnavailable):
        kdata.load("cifar10", train=True)


def test_one_training_step_of_the_paper_profile_on_cifar_files(
    tmp_path, monkeypatch, offline
):
    """ResNet56 -> ResNet20 KD on 3x32x32 CIFAR-10 files: one augmented SGD step."""
    write_cifar10(tmp_path / "data", per_batch=16, n_test=4)
    monkeypatch.setenv("KD_DATA_DIR", str(tmp_path / "data"))
    cfg = kd.make_config("paper", method="kd")
    assert (cfg.dataset, cfg.teacher, cfg.student) == (
        "cifar10",
        "resnet56",
        "resnet20",
    )
    train = kdata.load(cfg.dataset, train=True)
    torch.manual_seed(0)
    teacher = build_model(cfg.teacher, cfg.dataset)
    student = build_model(cfg.student, cfg.dataset)
    distiller = kd.build(cfg.method, student, teacher, **cfg.method_args)
    loader = kdata.Loader(train, cfg.batch_size, augment=cfg.augment, seed=cfg.seed)
    assert cfg.augment
    x, y, idx = next(iter(loader))
    assert x.shape == (cfg.batch_size, 3, 32, 32) and x.dtype == torch.float32
    params = [p for p in distiller.parameters() if p.requires_grad]
    opt = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    before_s = [p.detach().clone() for p in student.parameters()]
    before_t = [p.detach().clone() for p in teacher.parameters()]
    distiller.train()
    logits, terms = distiller(x, y)
    loss = sum(terms.values())
    assert logits.shape == (cfg.batch_size, 10)
    assert set(terms) == {"ce", "kd"} and torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert any(
        not torch.equal(a, b)
        for a, b in zip(before_s, student.parameters(), strict=True)
    )
    assert all(
        torch.equal(a, b) for a, b in zip(before_t, teacher.parameters(), strict=True)
    )


# digits, names, subsets


def test_digits_split_is_fixed():
    train, test = kdata.load("digits", train=True), kdata.load("digits", train=False)
    assert len(train) + len(test) == 1797
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == torch.uint8
    assert int(train.images.max()) == 255
    again = kdata.load("digits", train=True)
    assert torch.equal(train.images, again.images) and torch.equal(
        train.labels, again.labels
    )


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError) as info:
        kdata.load("mnist")
    for name in kdata.DATASETS:
        assert name in str(info.value)


def test_subset_is_fixed_sorted_and_of_the_right_size():
    d = kdata.load("digits")
    a, b = d.subset(100), d.subset(100)
    assert (
        len(a) == 100
        and torch.equal(a.labels, b.labels)
        and torch.equal(a.images, b.images)
    )
    assert d.subset(None) is d and d.subset(10**6) is d
    # The subset's images are real rows of the dataset.
    rows = {tuple(img.flatten().tolist()) for img in d.images}
    assert all(tuple(img.flatten().tolist()) in rows for img in a.images)


# Loader


def _toy(n: int = 23, name: str = "digits") -> kdata.TensorData:
    info = kdata.DATASETS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(
        0, 256, (n, info.channels, info.size, info.size), generator=g, dtype=torch.uint8
    )
    y = torch.arange(n) % info.classes
    return kdata.TensorData(x, y, name)


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_loader_covers_every_sample_once_per_epoch():
    d = _toy(23)
    loader = kdata.Loader(d, batch_size=5, seed=3)
    assert len(loader) == 5
    for epoch in range(3):
        batches = _epoch(loader, epoch)
        assert [len(b[2]) for b in batches] == [5, 5, 5, 5, 3]
        idx = torch.cat([b[2] for b in batches])
        assert sorted(idx.tolist()) == list(range(23))


def test_loader_drop_last():
    loader = kdata.Loader(_toy(23), batch_size=5, drop_last=True)
    assert len(loader) == 4
    assert [len(b[2]) for b in loader] == [5] * 4


def test_loader_order_depends_only_on_seed_and_epoch():
    d = _toy(40)

    def order(seed, epoch):
        return torch.cat(
            [b[2] for b in _epoch(kdata.Loader(d, 8, seed=seed), epoch)]
        ).tolist()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2)
    assert order(0, 1) != order(1, 1)
    # Going back to an epoch reproduces it (what resuming relies on).
    loader = kdata.Loader(d, 8, seed=0)
    first = [b[2].tolist() for b in _epoch(loader, 1)]
    _epoch(loader, 2)
    assert [b[2].tolist() for b in _epoch(loader, 1)] == first


def test_loader_augmentation_is_deterministic_per_seed_and_epoch():
    d = _toy(30, "fashion-mnist")
    a = _epoch(kdata.Loader(d, 10, augment=True, seed=5), 2)
    b = _epoch(kdata.Loader(d, 10, augment=True, seed=5), 2)
    c = _epoch(kdata.Loader(d, 10, augment=True, seed=5), 3)
    assert all(torch.equal(u[0], v[0]) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(u[0], v[0]) for u, v in zip(a, c, strict=True))


def test_loader_without_augmentation_yields_normalised_samples_with_their_labels():
    d = _toy(12)
    info = d.info
    for x, y, idx in kdata.Loader(d, 5, seed=1):
        expected = (d.images[idx].double() / 255 - info.mean[0]) / info.std[0]
        torch.testing.assert_close(x.double(), expected, rtol=1e-5, atol=1e-5)
        assert x.dtype == torch.float32
        assert torch.equal(y, d.labels[idx])


def test_loader_unshuffled_is_in_dataset_order():
    idx = torch.cat([b[2] for b in kdata.Loader(_toy(11), 4, shuffle=False)])
    assert idx.tolist() == list(range(11))


# Augmentation


def _matches(out: torch.Tensor, img: torch.Tensor, p: int):
    """All (dy, dx, flipped) such that ``out`` is that crop of the zero-padded ``img``."""
    _, h, w = img.shape
    padded = torch.zeros(img.shape[0], h + 2 * p, w + 2 * p, dtype=img.dtype)
    padded[:, p : p + h, p : p + w] = img
    found = []
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            if torch.equal(out, crop):
                found.append((dy, dx, False))
            if torch.equal(out, crop.flip(-1)):
                found.append((dy, dx, True))
    return found


@pytest.mark.parametrize("p, flip", [(2, True), (4, False), (1, True), (0, True)])
def test_augment_batch_is_a_padded_crop_and_maybe_a_flip(p, flip):
    info = kdata.DatasetInfo(3, 12, 10, (0.5,) * 3, (0.5,) * 3, p, flip)
    g0 = torch.Generator().manual_seed(0)
    # Values >= 1, so a zero-padded border can never be mistaken for image content.
    images = torch.randint(1, 256, (64, 3, 12, 10), generator=g0, dtype=torch.uint8)
    out = kdata.augment_batch(images, info, torch.Generator().manual_seed(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    matches = [_matches(o, i, p) for o, i in zip(out, images, strict=True)]
    assert all(len(m) == 1 for m in matches)  # random images: exactly one explanation
    offsets = {m[0][:2] for m in matches}
    flips = {m[0][2] for m in matches}
    if p == 0:
        assert offsets == {(0, 0)}
    else:
        assert len(offsets) > 1  # the crop position really varies
    assert flips == ({False, True} if flip else {False})


def test_loader_augments_only_when_asked():
    d = _toy(16, "fashion-mnist")
    plain = next(iter(kdata.Loader(d, 16, shuffle=False)))[0]
    augmented = next(iter(kdata.Loader(d, 16, shuffle=False, augment=True)))[0]
    assert plain.shape == augmented.shape and augmented.dtype == torch.float32
    assert not torch.equal(plain, augmented)


def test_normalize_standardises_per_channel():
    info = kdata.DATASETS["cifar10"]
    images = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    x = kdata.normalize(images, info)
    for c in range(3):
        torch.testing.assert_close(
            x[:, c], torch.full((2, 4, 4), (1.0 - info.mean[c]) / info.std[c])
        )
