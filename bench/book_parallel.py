"""The book's runs one at a time with all cores, or several at once with one core each.

``make book`` executes ``JOBS`` notebooks at once (one per core by default),
each training with ``THREADS=1``. This script measures what that buys on this
machine, on a sample of the book's ``quick`` runs whose teachers are already
cached (build the book first, or point ``KD_CACHE_DIR`` at its cache):

* **serial**: the sample trained one run after another, each with every core
  (``OMP_NUM_THREADS`` = the core count);
* **parallel**: the same runs trained by as many worker processes as cores,
  each with one thread, taking the runs in order from a shared queue;
* **alone**: one run of the sample trained again with one thread and nothing
  beside it.

Every run trains from a scratch cache that links every cached run but itself,
so teachers are loaded, not trained. It prints the two wall-clock times and
their ratio, and checks that a run's result does not depend on what trains
beside it: the parallel copy of the ``alone`` run must have bit-identical
weights (a SHA-256 of the saved ``model.pt`` tensors) and the same per-epoch
losses. A run's result does depend on its own thread count (the reductions
are split differently), so serial and parallel results are compared only for
their accuracy. ``--save`` writes the figures with provenance.

    .venv/bin/python bench/book_parallel.py --save results/bench/book-parallel-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from book_factor import book_runs, pick  # noqa: E402

# (method, student) of seed-0 `quick` runs of the book: a baseline, a logit
# method, two feature methods (chapters 1 to 4).
SAMPLE = [
    ("ce", "resnet8"),
    ("kd", "resnet8"),
    ("fitnet", "resnet8"),
    ("at", "resnet8"),
]

_TRAIN = r"""
import hashlib, json, sys, time
import torch
import kdutils as kd
cfg = kd.Config.from_dict(json.loads(sys.argv[1]))
t0 = time.perf_counter()
res = kd.run(cfg, progress=False)
seconds = time.perf_counter() - t0
state = torch.load(f"{res.path}/model.pt", map_location="cpu", weights_only=True)
h = hashlib.sha256()
for k in sorted(state):
    h.update(k.encode())
    h.update(state[k].detach().contiguous().numpy().tobytes())
print("RESULT " + json.dumps({
    "seconds": seconds, "test_acc": res.test_acc, "weights_sha256": h.hexdigest(),
    "history": [{k: v for k, v in e.items() if k != "seconds"} for e in res.history],
    "threads": res.provenance.get("threads"),
}))
"""


def scratch(cache: Path, leave_out: set[str]) -> Path:
    """A cache linking every cached run except ``leave_out`` (trained anew)."""
    d = Path(tempfile.mkdtemp(prefix="kd-parallel-"))
    (d / "runs").mkdir()
    for run in (cache / "runs").iterdir():
        if run.name not in leave_out:
            (d / "runs" / run.name).symlink_to(run.resolve())
    return d


def train(config: dict, cache: Path, threads: int) -> dict:
    env = dict(
        os.environ,
        KD_CACHE_DIR=str(cache),
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    out = subprocess.run(
        [sys.executable, "-c", _TRAIN, json.dumps(config)],
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(f"training failed:\n{out.stderr[-3000:]}")
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--save", type=Path, default=None)
    p.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()

    import torch

    import kdutils as kd
    from kdutils.provenance import machine_provenance

    cache = Path(os.environ.get("KD_CACHE_DIR") or kd.runs.cache_dir())
    runs = book_runs(cache)
    sample = [pick(runs, m, s) for m, s in SAMPLE]
    names = {r["folder"] for r in sample}
    print(f"sample: {', '.join(sorted(names))}; {args.cores} cores")

    t0 = time.perf_counter()
    serial = [train(r["config"], scratch(cache, names), args.cores) for r in sample]
    serial_wall = time.perf_counter() - t0
    print(f"serial, 1 x {args.cores} threads: {serial_wall:.1f} s")

    par_cache = scratch(
        cache, names
    )  # one cache: the workers share it, as in make book
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.cores) as pool:
        parallel = list(pool.map(lambda r: train(r["config"], par_cache, 1), sample))
    parallel_wall = time.perf_counter() - t0
    print(f"parallel, {args.cores} x 1 thread: {parallel_wall:.1f} s")

    alone = train(sample[0]["config"], scratch(cache, names), 1)
    same = (
        alone["weights_sha256"] == parallel[0]["weights_sha256"]
        and alone["history"] == parallel[0]["history"]
    )
    print(
        f"speed-up of parallel over serial: {serial_wall / parallel_wall:.2f}x; "
        f"{sample[0]['folder']} alone vs beside others (1 thread each): "
        + ("bit-identical weights and epoch records" if same else "DIFFERENT")
    )
    for r, s, q in zip(sample, serial, parallel, strict=True):
        print(
            f"  {r['folder']}: serial {s['seconds']:.1f} s ({100 * s['test_acc']:.2f}%), "
            f"parallel {q['seconds']:.1f} s ({100 * q['test_acc']:.2f}%)"
        )
    if args.save:
        record = {
            "what": "a sample of the quick book's runs: one after another with "
            f"{args.cores} threads, against {args.cores} at once with 1 thread each",
            "cores": args.cores,
            "serial_wall_s": serial_wall,
            "parallel_wall_s": parallel_wall,
            "speedup": serial_wall / parallel_wall,
            "alone_equals_parallel": same,
            "runs": [
                {"run": r["folder"], "serial": s, "parallel": q}
                for r, s, q in zip(sample, serial, parallel, strict=True)
            ],
            "alone": {"run": sample[0]["folder"], **alone},
            "provenance": machine_provenance(torch.device("cpu")),
        }
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(record, indent=1) + "\n")
        print(f"saved {args.save}")


if __name__ == "__main__":
    main()
