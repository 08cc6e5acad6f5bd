"""Datasets held in memory as uint8 tensors, and a batch loader.

Every dataset here is small enough to live in memory (CIFAR-10: 150 MB as
uint8), so the loader indexes whole batches out of one tensor and augments the
batch at once: no per-sample Python, no worker processes.

Look-up order for files: explicit ``root``, then ``$KD_DATA_DIR``, then the
system path (Debian's ``dataset-fashion-mnist``), then the user cache, where
torchvision downloads when the network allows.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pickle
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import EnvironmentProblem

__all__ = [
    "DATASETS",
    "CLASS_NAMES",
    "DataUnavailable",
    "TensorData",
    "Loader",
    "augment_batch",
    "load",
    "normalize",
    "render_view",
    "view_count",
    "check_dataset_name",
]

SYSTEM_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}


class DataUnavailable(EnvironmentProblem):
    """The dataset's files are not on this machine (or are corrupt) and cannot
    be downloaded."""


@dataclass(frozen=True)
class DatasetInfo:
    channels: int
    size: int
    classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # standard augmentation: random crop with this padding
    flip: bool  # ... and a random horizontal flip


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(1, 28, 10, (0.2860,), (0.3530,), 2, True),
    "cifar10": DatasetInfo(
        3, 32, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 4, True
    ),
    "cifar100": DatasetInfo(
        3, 32, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 4, True
    ),
    # scikit-learn's 8x8 digits, values 0..16 rescaled to 0..255; for unit tests.
    "digits": DatasetInfo(1, 8, 10, (0.305,), (0.376,), 1, False),
}


CLASS_NAMES: dict[str, list[str]] = {
    "fashion-mnist": [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ],
    "cifar10": [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ],
    "digits": [str(i) for i in range(10)],
}


def check_dataset_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; choose from: {', '.join(DATASETS)}"
        )


@dataclass
class TensorData:
    """Images ``(N, C, H, W)`` uint8 and labels ``(N,)`` int64."""

    images: Tensor
    labels: Tensor
    name: str

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def info(self) -> DatasetInfo:
        return DATASETS[self.name]

    def subset(self, n: int | None, seed: int = 0) -> TensorData:
        """The first ``n`` samples of a fixed permutation (the same for every run)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return TensorData(self.images[idx], self.labels[idx], self.name)

    def split_off(
        self, fraction: float, seed: int = 0
    ) -> tuple[TensorData, TensorData]:
        """``(kept, held_out)``: a stratified, fixed part of the samples held out.

        Of each class, ``round(fraction * count)`` samples, chosen by a
        permutation that depends only on ``seed`` (the same for every run),
        are held out; both parts keep the dataset's order.
        """
        if not 0 < fraction < 1:
            raise ValueError(f"fraction must be in (0, 1), got {fraction}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        held = torch.zeros(len(self), dtype=torch.bool)
        for c in self.labels.unique(sorted=True):
            members = perm[self.labels[perm] == c]
            held[members[: round(fraction * len(members))]] = True
        keep = (~held).nonzero().squeeze(1)
        out = held.nonzero().squeeze(1)
        return (
            TensorData(self.images[keep], self.labels[keep], self.name),
            TensorData(self.images[out], self.labels[out], self.name),
        )


def _candidate_roots(name: str, root: str | os.PathLike | None) -> list[Path]:
    roots = []
    if root is not None:
        roots.append(Path(root))
    if os.environ.get("KD_DATA_DIR"):
        roots.append(Path(os.environ["KD_DATA_DIR"]))
    if name in SYSTEM_DIRS:
        roots.append(SYSTEM_DIRS[name])
    roots.append(cache_root())
    return roots


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kdutils" / "data"


@contextlib.contextmanager
def _readable(*paths: Path) -> Iterator[None]:
    """Turn any failure to parse a dataset file into one line naming it."""
    try:
        yield
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        AttributeError,
        struct.error,
        OSError,
    ) as e:
        names = " or ".join(str(p) for p in paths)
        raise DataUnavailable(
            f"{names} is truncated or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'}); "
            "replace it with an intact copy, or move it away to use another copy"
        ) from None


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    zero, dtype_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for sub in (folder, folder / "FashionMNIST" / "raw"):
        for suffix in ("", ".gz"):
            p = sub / f"{stem}{suffix}"
            if p.exists():
                return p
    return None


def _load_fashion(train: bool, root) -> TensorData:
    prefix = "train" if train else "t10k"
    for folder in _candidate_roots("fashion-mnist", root):
        img = _find_idx(folder, f"{prefix}-images-idx3-ubyte")
        lab = _find_idx(folder, f"{prefix}-labels-idx1-ubyte")
        if img and lab:
            with _readable(img, lab):
                x = torch.from_numpy(_read_idx(img).copy()).unsqueeze(1)
                y = torch.from_numpy(_read_idx(lab).astype(np.int64))
                if x.ndim != 4 or len(x) != len(y):
                    raise ValueError(f"{len(x)} images but {len(y)} labels")
            return TensorData(x, y, "fashion-mnist")
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(cache_root()), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any download failure means "offline"
        raise DataUnavailable(
            "Fashion-MNIST was not found (looked in root, $KD_DATA_DIR, "
            f"{SYSTEM_DIRS['fashion-mnist']}, {cache_root()}) and could not be "
            f"downloaded ({type(e).__name__}). On Debian: apt-get install "
            "dataset-fashion-mnist; or set KD_DATA_DIR to a folder with the IDX files."
        ) from None
    return _load_fashion(train, cache_root())


_CIFAR_DIRS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _cifar_files(name: str, train: bool) -> list[str]:
    if name == "cifar10":
        return [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    return ["train"] if train else ["test"]


def _load_cifar(name: str, train: bool, root) -> TensorData:
    """Read torchvision's on-disk CIFAR format (pickled python batches)."""
    for folder in _candidate_roots(name, root):
        d = folder / _CIFAR_DIRS[name]
        files = [d / f for f in _cifar_files(name, train)]
        if all(f.exists() for f in files):
            xs, ys = [], []
            for f in files:
                with _readable(f):
                    with open(f, "rb") as fh:
                        entry = pickle.load(fh, encoding="latin1")
                    xs.append(
                        np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                    )
                    ys.append(np.asarray(entry.get("labels", entry.get("fine_labels"))))
                    if ys[-1].ndim != 1 or len(ys[-1]) != len(xs[-1]):
                        raise ValueError("its images and labels do not match")
            x = torch.from_numpy(np.concatenate(xs))
            y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
            return TensorData(x, y, name)
    try:
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if name == "cifar10" else CIFAR100
        cls(str(cache_root()), train=train, download=True)
    except Exception as e:  # noqa: BLE001 - any download failure means "offline"
        raise DataUnavailable(
            f"{name} is not on this machine and could not be downloaded "
            f"({type(e).__name__}: no network?). Put torchvision's "
            f"'{_CIFAR_DIRS[name]}' folder under a directory and set KD_DATA_DIR "
            "to it, or use the offline dataset: --dataset fashion-mnist "
            "(profiles smoke and quick use it)."
        ) from None
    return _load_cifar(name, train, cache_root())


def _load_digits(train: bool) -> TensorData:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(
        (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    ).unsqueeze(1)
    y = torch.from_numpy(d.target.astype(np.int64))
    # A fixed 80/20 split.
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(y))
    idx = perm[:cut] if train else perm[cut:]
    idx = idx.sort().values
    return TensorData(x[idx], y[idx], "digits")


def load(
    name: str, train: bool = True, root: str | os.PathLike | None = None
) -> TensorData:
    """Load a whole split into memory as uint8 tensors."""
    check_dataset_name(name)
    if name == "fashion-mnist":
        return _load_fashion(train, root)
    if name in _CIFAR_DIRS:
        return _load_cifar(name, train, root)
    return _load_digits(train)


def normalize(images: Tensor, info: DatasetInfo) -> Tensor:
    """uint8 ``(B, C, H, W)`` -> float, standardised per channel."""
    x = images.float().div_(255.0)
    mean = torch.tensor(info.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(info.std, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def view_count(info: DatasetInfo) -> int:
    """How many distinct images the standard augmentation can make of one
    image: every crop offset in each axis times the flip (CIFAR: 9 x 9 x 2 =
    162). A frozen teacher has one output per view, so its outputs on every
    view of every training image can be stored once (see
    :func:`kdutils.teachers.teacher_view_logits`)."""
    side = 2 * info.crop_padding + 1
    return side * side * (2 if info.flip else 1)


def augment_batch(
    images: Tensor, info: DatasetInfo, g: torch.Generator, views: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Random crop with zero padding and random horizontal flip, per sample.

    Works on the whole uint8 batch, on whatever device it lives: pad once, then
    gather each sample's window with one advanced-indexing call. The random
    draws come from the CPU generator ``g`` whatever the device, so a batch is
    augmented the same way on a CPU and on a GPU.

    ``views=True`` also returns each sample's view index (CPU int64), the
    number of the crop and flip it got: ``(dy * side + dx) * flips + flip``
    with ``side = 2 * padding + 1`` (see :func:`render_view`). The draws, and
    so the images, are the same either way.
    """
    b, _, h, w = images.shape
    dev = images.device
    p = info.crop_padding
    out = images
    view = torch.zeros(b, dtype=torch.int64)
    if p > 0:
        padded = F.pad(images, (p, p, p, p))
        dy_cpu = torch.randint(0, 2 * p + 1, (b,), generator=g)
        dx_cpu = torch.randint(0, 2 * p + 1, (b,), generator=g)
        view = dy_cpu * (2 * p + 1) + dx_cpu
        dy, dx = dy_cpu.to(dev), dx_cpu.to(dev)
        rows = (dy.view(b, 1) + torch.arange(h, device=dev).view(1, h)).view(b, 1, h, 1)
        cols = (dx.view(b, 1) + torch.arange(w, device=dev).view(1, w)).view(b, 1, 1, w)
        bidx = torch.arange(b, device=dev).view(b, 1, 1, 1)
        cidx = torch.arange(images.shape[1], device=dev).view(1, -1, 1, 1)
        out = padded[bidx, cidx, rows, cols]
    if info.flip:
        flip_cpu = torch.rand(b, generator=g) < 0.5
        view = view * 2 + flip_cpu.long()
        flip = flip_cpu.to(dev)
        out = torch.where(flip.view(b, 1, 1, 1), out.flip(3), out)
    return (out, view) if views else out


def render_view(images: Tensor, info: DatasetInfo, view: int) -> Tensor:
    """Every image of the uint8 batch ``images`` in one view (the index
    :func:`augment_batch` reports): the same pixels augment_batch gives a
    sample that drew that view."""
    n = view_count(info)
    if not 0 <= view < n:
        raise ValueError(f"view must be in 0..{n - 1} for this dataset, got {view}")
    p = info.crop_padding
    flip = bool(view % 2) if info.flip else False
    offset = view // 2 if info.flip else view
    dy, dx = divmod(offset, 2 * p + 1)
    h, w = images.shape[-2:]
    out = F.pad(images, (p, p, p, p))[..., dy : dy + h, dx : dx + w] if p else images
    return out.flip(3) if flip else out.clone()


class Loader:
    """Shuffled mini-batches ``(x, y, idx)`` from a :class:`TensorData`.

    The order and the augmentation of epoch ``e`` depend only on ``(seed, e)``,
    so a run resumed at epoch ``e`` sees exactly the batches it would have seen.
    ``idx`` are the samples' positions in the dataset (for cached teacher outputs).
    ``views=True`` (with ``augment``) also keeps, in ``loader.view``, the
    augmentation view of each sample of the batch just yielded
    (:func:`augment_batch`): the column of a teacher's stored per-view
    outputs. The batches are the same; what is yielded stays ``(x, y, idx)``,
    so every consumer of a loader reads it unchanged.
    The uint8 images and the labels are copied to ``device`` once, when the
    loader is made: on a GPU a batch is indexed, augmented and normalised
    there, and only the batch's indices cross from the host.
    """

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        shuffle: bool = True,
        augment: bool = False,
        seed: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
        channels_last: bool = False,
        views: bool = False,
    ) -> None:
        if views and not augment:
            raise ValueError(
                "views=True needs augment=True: without it every view is 0"
            )
        self.data = data
        self.views = views
        self.view: Tensor | None = None  # the last batch's views (views=True)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.memory_format = (
            torch.channels_last if channels_last else torch.contiguous_format
        )
        self.epoch = 0
        # One copy on the device for the loader's life (a no-op on the CPU).
        self._images = data.images.to(self.device)
        self._labels = data.labels.to(self.device)

    def __len__(self) -> int:
        n = len(self.data)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        info = self.data.info
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            rows = idx.to(self.device, non_blocking=True)
            images = self._images[rows]
            if self.augment and self.views:
                images, self.view = augment_batch(images, info, g, views=True)
            elif self.augment:
                images = augment_batch(images, info, g)
            x = normalize(images, info).contiguous(memory_format=self.memory_format)
            yield x, self._labels[rows], idx
