"""The usual CIFAR knowledge-distillation training loop, as a yardstick for kdutils.

Written the way the common CIFAR KD code is (RepDistiller's ``train_distill``,
the torchvision examples): a ``torchvision.datasets`` dataset whose samples go
one by one through PIL transforms (``RandomCrop(32, 4)``,
``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``) inside a ``DataLoader``
with worker processes; the student in the default NCHW layout; the teacher in
eval mode under ``torch.no_grad()`` on every batch (no cached outputs);
``loss.item()`` and the accuracy read back every step. The models, the KD loss
(Hinton et al., T=4, weights 0.1 CE + 0.9 KD, as kdutils' ``kd``), the
optimizer and the schedule are the same as kdutils', so only the loop differs.

``bench/bench_speed.py`` times it against kdutils; run this file to compare
the accuracy both reach on the ``quick`` profile's KD run:

    flock /tmp/kd-cpu.lock .venv/bin/python bench/reference_loop.py [--seeds 0]
"""

from __future__ import annotations

import argparse
import gzip
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, transforms

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
MEANS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}


def write_fake_cifar10(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random-pixel CIFAR-10 in torchvision's on-disk format (five train batches)."""
    d = Path(root) / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    per = -(-n_train // 5)
    sizes = [min(per, max(0, n_train - i * per)) for i in range(5)]
    for name, n in [(f"data_batch_{i + 1}", sizes[i]) for i in range(5)] + [
        ("test_batch", n_test)
    ]:
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        with open(d / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)
    return Path(root)


def fashion_root(root: Path) -> Path:
    """A folder in torchvision's FashionMNIST layout, from the Debian files."""
    raw = Path(root) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for gz in FASHION_DIR.glob("*-ubyte.gz"):
        out = raw / gz.name[:-3]
        if not out.exists():
            with gzip.open(gz, "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    return Path(root)


class _CIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR10, less its md5 check (the files here are synthetic)."""

    def _check_integrity(self) -> bool:
        return True

    def _load_meta(self) -> None:
        from kdutils.data import CLASS_NAMES

        self.classes = list(CLASS_NAMES["cifar10"])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def reference_dataset(name: str, root: Path, train: bool, augment: bool):
    """A torchvision dataset with the usual per-sample transform pipeline."""
    mean, std = MEANS[name]
    pad = 4 if name == "cifar10" else 2
    size = 32 if name == "cifar10" else 28
    steps = (
        [transforms.RandomCrop(size, padding=pad), transforms.RandomHorizontalFlip()]
        if augment
        else []
    )
    tf = transforms.Compose(
        [*steps, transforms.ToTensor(), transforms.Normalize(mean, std)]
    )
    if name == "cifar10":
        return _CIFAR10(str(root), train=train, transform=tf, download=False)
    return datasets.FashionMNIST(str(root), train=train, transform=tf, download=False)


def subset_indices(n_total: int, n: int | None, seed: int = 0) -> list[int] | None:
    """The samples kdutils' ``TensorData.subset(n)`` keeps (same permutation)."""
    if n is None or n >= n_total:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values.tolist()


def reference_loader(
    dataset, batch_size: int, workers: int, seed: int, device: str, shuffle=True
):
    g = torch.Generator().manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=workers,
        pin_memory=device == "cuda",
        generator=g,
        persistent_workers=workers > 0,
    )


def distill_kl(logit_s, logit_t, T: float):
    """RepDistiller's DistillKL: KL(p_t || p_s) at temperature T, times T^2 / batch."""
    p_s = F.log_softmax(logit_s / T, dim=1)
    p_t = F.softmax(logit_t / T, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * T**2 / logit_s.shape[0]


class ReferenceStep:
    """One optimisation step of the usual loop (``ce`` or ``kd``)."""

    def __init__(self, method, student, teacher, lr=0.05, momentum=0.9, wd=5e-4):
        self.method, self.student, self.teacher = method, student, teacher
        self.opt = torch.optim.SGD(
            student.parameters(), lr=lr, momentum=momentum, weight_decay=wd
        )
        self.T, self.gamma, self.alpha = 4.0, 0.1, 0.9
        if teacher is not None:
            teacher.eval()

    def __call__(self, x, y) -> tuple[float, float]:
        self.student.train()
        logit_s = self.student(x)
        if self.method == "kd":
            with torch.no_grad():
                logit_t = self.teacher(x)
            loss = self.gamma * F.cross_entropy(logit_s, y) + self.alpha * distill_kl(
                logit_s, logit_t, self.T
            )
        else:
            loss = F.cross_entropy(logit_s, y)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        acc = (logit_s.argmax(1) == y).float().mean().item()
        return loss.item(), acc


@torch.no_grad()
def reference_accuracy(model: nn.Module, loader, device) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / total


def train_reference(
    cfg, teacher: nn.Module | None, root: Path, device="cpu", workers=2
):
    """Train ``cfg``'s student with the usual loop; return (test acc, seconds)."""
    import kdutils as kd

    torch.manual_seed(cfg.seed)
    train = reference_dataset(cfg.dataset, root, True, cfg.augment)
    test = reference_dataset(cfg.dataset, root, False, False)
    keep = subset_indices(len(train), cfg.train_subset)
    if keep is not None:
        train = Subset(train, keep)
    keep = subset_indices(len(test), cfg.test_subset)
    if keep is not None:
        test = Subset(test, keep)
    info = kd.data.DATASETS[cfg.dataset]
    student = kd.create_model(cfg.student, info.classes, info.channels).to(device)
    if teacher is not None:
        teacher = teacher.to(device, memory_format=torch.contiguous_format)
    step = ReferenceStep(
        cfg.method, student, teacher, cfg.lr, cfg.momentum, cfg.weight_decay
    )
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(step.opt, T_max=cfg.epochs)
        if cfg.schedule == "cosine"
        else torch.optim.lr_scheduler.MultiStepLR(
            step.opt, list(cfg.milestones), cfg.gamma
        )
    )
    loader = reference_loader(train, cfg.batch_size, workers, cfg.seed, device)
    test_loader = reference_loader(test, 256, workers, 0, device, shuffle=False)
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        for x, y in loader:
            step(x.to(device), y.to(device))
        sched.step()
        acc = reference_accuracy(student, test_loader, device)
    return acc, time.perf_counter() - t0


def main() -> None:
    import tempfile

    import kdutils as kd

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    root = fashion_root(Path(tempfile.mkdtemp(prefix="kd-ref-")))
    rows = []
    for seed in args.seeds:
        cfg = kd.make_config("quick", method="kd", seed=seed)
        t0 = time.perf_counter()
        res = kd.run(cfg, progress=False)
        fast_wall = res.provenance["wall_seconds"]
        t_res = kd.run(kd.teacher_config(cfg), progress=False)
        teacher = t_res.load_model("cpu")
        acc, secs = train_reference(cfg, teacher, root, workers=args.workers)
        rows.append((seed, res.test_acc, fast_wall, acc, secs))
        print(
            f"seed {seed}: kdutils {100 * res.test_acc:.2f}% "
            f"({'cached, trained in ' if res.from_cache else ''}{fast_wall:.0f} s); "
            f"reference loop {100 * acc:.2f}% ({secs:.0f} s); "
            f"this call {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    a = np.array([r[1] for r in rows]) * 100
    b = np.array([r[3] for r in rows]) * 100
    print(
        f"quick kd resnet32->resnet8, {len(rows)} seed(s): kdutils {a.mean():.2f}% "
        f"vs reference loop {b.mean():.2f}% (difference {a.mean() - b.mean():+.2f} points)"
    )


if __name__ == "__main__":
    main()
