"""The `paper` profile's code path on a GPU, end to end, on CIFAR-shaped data.

    python bench/device_check.py [--device cuda] [--epochs 1]

Writes a synthetic CIFAR-10 folder in torchvision's on-disk format (random
pixels: the accuracy is meaningless, the shapes and the code path are real),
then runs the `paper` profile's KD experiment (ResNet56 teacher trained first,
then ResNet20 with KD, augmentation on, batch 64) for ``--epochs`` epochs each,
and prints the measured seconds per epoch and what a full 240-epoch run of
each would take at that speed.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from pathlib import Path

import numpy as np


def write_fake_cifar10(root: Path, n_train: int = 50_000, n_test: int = 10_000) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per = n_train // 5
    for name, n in [(f"data_batch_{i}", per) for i in range(1, 6)] + [
        ("test_batch", n_test)
    ]:
        entry = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, n).tolist(),
        }
        with open(d / name, "wb") as f:
            pickle.dump(entry, f, protocol=2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=1)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="kd-device-check-"))
    write_fake_cifar10(tmp / "data")
    os.environ["KD_DATA_DIR"] = str(tmp / "data")
    os.environ["KD_CACHE_DIR"] = str(tmp / "cache")
    import torch

    import kdutils as kd

    cfg = kd.make_config(
        "paper", method="kd", epochs=args.epochs, teacher_epochs=args.epochs
    )
    t0 = time.perf_counter()
    res = kd.run(cfg, device=args.device, progress=False)
    wall = time.perf_counter() - t0
    teacher = kd.Result.load(kd.runs.run_dir(kd.teacher_config(cfg)) / "result.json")
    print(f"device: {res.provenance['device']}, torch {torch.__version__}")
    for label, r in (
        ("teacher ce resnet56", teacher),
        ("student kd resnet56->resnet20", res),
    ):
        s_epoch = np.mean([h["seconds"] for h in r.history])
        print(
            f"{label:<30} paper recipe: {s_epoch:6.1f} s/epoch "
            f"-> {240 * s_epoch / 3600:.2f} h for 240 epochs"
        )
    print(f"whole call (teacher + student, {args.epochs} epoch(s) each): {wall:.1f} s")


if __name__ == "__main__":
    main()
