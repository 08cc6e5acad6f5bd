"""Training throughput of kdutils: images/s for a CE step and a KD step.

    python bench/bench_train.py [--device cpu|cuda] [--steps 20] [--batch-size 128]

Measures, on synthetic batches of the two shapes the book uses (1x28x28,
Fashion-MNIST; 3x32x32, CIFAR), one optimisation step of
- ``ce``: ResNet20 trained alone,
- ``kd``: ResNet20 distilled from a frozen ResNet56 (the teacher's forward
  included, as when augmentation prevents caching its logits),
in the default NCHW layout and in channels_last. This is the baseline for the
speed work; numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import kdutils as kd


def step_rate(
    method: str, shape: tuple[int, int, int], args, channels_last: bool
) -> float:
    """Images per second of ``args.steps`` timed steps after ``args.warmup``."""
    torch.manual_seed(0)
    device = torch.device(args.device)
    c = shape[0]
    student = kd.create_model("resnet20", 10, c)
    teacher = kd.create_model("resnet56", 10, c) if method == "kd" else None
    distiller = kd.build(method, student, teacher).to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    distiller = distiller.to(memory_format=fmt).train()
    opt = torch.optim.SGD(
        [p for p in distiller.parameters() if p.requires_grad],
        lr=0.05,
        momentum=0.9,
        weight_decay=5e-4,
    )
    x = torch.randn(args.batch_size, *shape, device=device).contiguous(
        memory_format=fmt
    )
    y = torch.randint(0, 10, (args.batch_size,), device=device)

    def one_step():
        _, terms = distiller(x, y)
        loss = sum(terms.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else platform.processor() or platform.machine()
    )
    print(
        f"kdutils training throughput: {args.device} ({where}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch_size}, {args.steps} timed steps"
    )
    print(f"{'step':<28} {'input':<8} {'NCHW img/s':>11} {'NHWC img/s':>11}")
    for method, label in (("ce", "ce resnet20"), ("kd", "kd resnet56 -> resnet20")):
        for shape in ((1, 28, 28), (3, 32, 32)):
            rates = [step_rate(method, shape, args, cl) for cl in (False, True)]
            print(
                f"{label:<28} {'x'.join(map(str, shape)):<8} {rates[0]:>11.0f} {rates[1]:>11.0f}"
            )


if __name__ == "__main__":
    main()
