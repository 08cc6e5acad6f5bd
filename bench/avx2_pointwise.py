"""The crashes of strided 1x1 convolutions, and what kdutils' workaround costs.

torch 2.14.1 (oneDNN 3.12): the backward pass of a 1x1 convolution with
stride 2, in channels_last, with few input channels, corrupts the heap or
spins: on a CPU limited to AVX2, under 8 channels (one thread: a crash; two:
it spins); on an AVX-512 AMD EPYC, under 16 channels with two threads and a
batch of 7 or 39 images. This script

1. runs that backward pass in a child process for several channel counts,
   plain (``nn.Conv2d``) and through ``kdutils.models.PointwiseDownsample``,
   with oneDNN limited to AVX2 (``ONEDNN_MAX_CPU_ISA=AVX2``, which imitates an
   AVX2-only CPU on an AVX-512 one), and then on this CPU's own instructions
   with two threads and a batch of 39, and prints which end well;
2. times a training step of a narrow planted ResNet8 with the workaround and,
   where the CPU allows the plain path (AVX-512), without it.

    .venv/bin/python bench/avx2_pointwise.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

CHILD = """
import sys, torch
from torch import nn
from kdutils.models import PointwiseDownsample
torch.set_num_threads(int(sys.argv[3]))
cin, kind, batch = int(sys.argv[1]), sys.argv[2], int(sys.argv[4])
cls = PointwiseDownsample if kind == "kdutils" else nn.Conv2d
conv = cls(cin, 2 * cin, 1, 2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(batch, cin, 28, 28).to(memory_format=torch.channels_last)
for _ in range(10):
    conv(x).square().sum().backward()
"""


def crash_table(threads: int, avx2: bool = True, batch: int = 64) -> None:
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"} if avx2 else dict(os.environ)
    isa = "AVX2 only" if avx2 else "this CPU's instructions"
    print(
        f"strided 1x1 backward, channels_last, {isa}, {threads} thread(s), "
        f"batch {batch}:"
    )
    for cin in (1, 2, 4, 7, 8, 12, 16):
        row = []
        for kind in ("nn.Conv2d", "kdutils"):
            try:
                rc = subprocess.run(
                    [
                        sys.executable,
                        "-c",
                        CHILD,
                        str(cin),
                        kind,
                        str(threads),
                        str(batch),
                    ],
                    env=env,
                    capture_output=True,
                    timeout=60,
                ).returncode
                row.append("ok" if rc == 0 else f"died ({rc})")
            except subprocess.TimeoutExpired:
                row.append("hung (>60 s)")
        print(f"  {cin:>2} input channels: nn.Conv2d {row[0]:<14} kdutils {row[1]}")


def step_time(model, x, y, steps: int = 30) -> float:
    import torch

    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for i in range(steps + 5):
        if i == 5:
            t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps * 1e3


def timing() -> None:
    import torch
    from torch import nn

    import kdutils as kd
    from kdutils.models import PointwiseDownsample

    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    avx512 = " avx512f" in flags
    torch.manual_seed(0)
    x = torch.randn(128, 1, 28, 28).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))
    print(
        f"\na training step of resnet8_w2-2-2-2 on 128x1x28x28, channels_last, "
        f"{torch.get_num_threads()} threads, {'AVX-512' if avx512 else 'AVX2'} CPU:"
    )
    model = kd.create_model("resnet8_w2-2-2-2", 10, 1).to(
        memory_format=torch.channels_last
    )
    print(f"  kdutils (subsample, then stride-1 1x1): {step_time(model, x, y):.2f} ms")
    if not avx512:
        print("  plain strided 1x1: not timed (it crashes on this CPU)")
        return
    for m in model.modules():
        if isinstance(m, PointwiseDownsample):
            m.forward = nn.Conv2d.forward.__get__(m)  # the plain strided path
    print(f"  plain strided 1x1 (AVX-512):           {step_time(model, x, y):.2f} ms")


if __name__ == "__main__":
    crash_table(1)
    crash_table(2)
    crash_table(2, avx2=False, batch=39)
    timing()
