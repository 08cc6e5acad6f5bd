"""kdutils' training loop against the usual CIFAR KD loop: images/s, ratio, memory.

    .venv/bin/python bench/bench_speed.py [--device cpu|cuda] [--steps 30]
        [--warmup 5] [--repeat 3] [--workers 2] [--cases kd-3x32 ...]
        [--profile] [--amp] [--no-compile]

For each case, the same models, batch size and number of steps run through
- ``reference``: ``bench/reference_loop.py``, the loop the common CIFAR KD code
  writes (torchvision dataset, per-sample PIL transforms in a ``DataLoader``
  with ``--workers`` worker processes, NCHW, teacher under ``no_grad`` on every
  batch, ``.item()`` every step);
- ``kdutils``: ``kdutils.loop.fit``, the loop ``kd.run`` uses (uint8 data held
  on the device, whole-batch augmentation, channels_last, one host sync per
  step; the teacher's logits precomputed once when there is no augmentation);
- ``kdutils+compile``: the same with the frozen teacher compiled, as
  ``kd.run(compile="auto")`` does for a run whose teacher runs on every batch
  (the compile time is printed, not counted in images/s);
- on CUDA (or with ``--amp``) also ``kdutils+bf16`` (``amp="bf16"``) and
  ``kdutils+compile+bf16``.

Cases: ``ce`` ResNet20 and ``kd`` ResNet56 -> ResNet20, on 3x32x32 (synthetic
CIFAR-10 in torchvision's format, augmentation on, batch 64, the ``paper``
recipe: the teacher runs on every batch in both loops) and on 1x28x28
(Fashion-MNIST, no augmentation, batch 128, the ``quick`` recipe: kdutils uses
its precomputed teacher logits, the reference runs the teacher every batch).
Each loop runs ``--repeat`` times, the loops alternated, and the fastest run
is kept: on a shared machine other work only ever slows a run down. Besides
wall-clock images/s, images per CPU-second (the training process's threads
plus its DataLoader workers) compares the work each loop does, which other
load changes less. Each measurement runs in a fresh process, so its peak
memory is its own: on CPU the training process's peak resident set size (and
how much of it came after the imports), plus the DataLoader workers'
proportional set size (PSS: pages shared with the parent counted once) at the
end of the timed steps; on CUDA ``torch.cuda.max_memory_allocated``.
``--profile`` adds where one kdutils KD step's time goes. The last lines
project the cost of the ``paper`` Table 1 (16 rows x 3 seeds x 240 epochs on
50k images) from the measured 3x32x32 KD rates. Numbers are printed, never asserted.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference_loop as ref  # noqa: E402

from kdutils.provenance import cpu_name  # noqa: E402

CASES = {
    # name: (method, dataset, augment, batch size)
    "ce-3x32": ("ce", "cifar10", True, 64),
    "kd-3x32": ("kd", "cifar10", True, 64),
    "ce-1x28": ("ce", "fashion-mnist", False, 128),
    "kd-1x28": ("kd", "fashion-mnist", False, 128),
}
TEACHER, STUDENT = "resnet56", "resnet20"
PAPER_TRAIN = 50_000  # CIFAR-10 training images
PAPER_TEST = 10_000
# Batches beyond the timed ones, so that DataLoader workers prefetching ahead
# spend the same CPU inside the timed window as outside it.
EXTRA = 4
# Resident memory once torch, torchvision and kdutils are imported (set in a child).
BASE_RSS_MB = float("nan")


def _root(dataset: str, roots: dict) -> Path:
    return Path(roots["cifar10" if dataset == "cifar10" else "fashion-mnist"])


def _models(method: str, channels: int, device):
    import kdutils as kd

    torch.manual_seed(0)
    student = kd.create_model(STUDENT, 10, channels).to(device)
    teacher = (
        kd.create_model(TEACHER, 10, channels).to(device) if method == "kd" else None
    )
    return student, teacher


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _pss_mb(pid: int | str = "self") -> float:
    """Proportional set size (shared pages split among their users), MiB."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return float("nan")
    kb = next(int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("Pss:"))
    return kb / 1024


def _cpu_s(workers=()) -> float:
    """CPU seconds used so far by this process (all threads) and ``workers``."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK")
    for w in workers:
        try:
            fields = Path(f"/proc/{w.pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _peak(device, workers=()) -> dict:
    """Peak RSS of this process (and the workers' PSS now, while they live)."""
    gc.collect()
    out = {
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "base_rss_mb": BASE_RSS_MB,
    }
    if workers:
        out["workers_pss_mb"] = sum(_pss_mb(w.pid) for w in workers)
    if torch.device(device).type == "cuda":
        out["cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure_kdutils(case: str, a: dict) -> dict:
    """Images/s of ``kdutils.loop.fit`` over ``steps`` steps after ``warmup``."""
    import kdutils as kd
    from kdutils import inference as kinference
    from kdutils import loop as kloop
    from kdutils import teachers as kteachers

    method, dataset, augment, bs = CASES[case]
    device = torch.device(a["device"])
    n = (a["warmup"] + a["steps"] + EXTRA) * bs
    data = kd.data.load(dataset, True, _root(dataset, a["roots"])).subset(n)
    test = kd.data.TensorData(data.images[:bs], data.labels[:bs], dataset)
    student, teacher = _models(method, data.info.channels, device)
    distiller = kd.build(method, student, teacher)
    distiller.setup(data)
    distiller = distiller.to(device, memory_format=torch.channels_last)
    cfg = kd.make_config(
        "paper", method=method, dataset=dataset, student=STUDENT, teacher=TEACHER,
        epochs=1, batch_size=bs, augment=augment,
    )  # fmt: skip
    out: dict = {}
    t_out = None
    if teacher is not None and not augment:
        t0 = time.perf_counter()
        t_out = {"logits": kinference.predict_logits(distiller.teacher, data)}
        out["precompute_s"] = time.perf_counter() - t0
        out["precompute_img_s"] = len(data) / out["precompute_s"]
    views = "views" in a["variant"]
    if views:
        # The teacher's logits on every view of every image, as
        # kd.run(teacher_views="float16") stores them once per teacher.
        # Timed on the first ``view_sample`` views (every view costs the same
        # forward pass); the others are copies of those, which changes the
        # targets the student reads, not the time a training step takes.
        n_views = kd.data.view_count(data.info)
        timed = min(n_views, a.get("view_sample") or n_views)
        t0 = time.perf_counter()
        stored = torch.empty(len(data), n_views, 10, dtype=torch.float16)
        for v in range(timed):
            one = kd.data.TensorData(
                kd.data.render_view(data.images, data.info, v), data.labels, dataset
            )
            stored[:, v] = kinference.predict_logits(distiller.teacher, one).half()
        out["views_precompute_s"] = time.perf_counter() - t0
        out["views_timed"] = timed
        out["views_precompute_img_s"] = len(data) * timed / out["views_precompute_s"]
        for v in range(timed, n_views):
            stored[:, v] = stored[:, v % timed]
        t_out = {"logits": stored}
    stamps: list[tuple[float, float]] = []

    class TimedLoader(kd.data.Loader):
        def __iter__(self):
            for batch in super().__iter__():
                _sync(device)
                stamps.append((time.perf_counter(), time.process_time()))
                yield batch

    loader = TimedLoader(
        data, bs, shuffle=True, augment=augment, seed=0, device=device,
        channels_last=True, views=views,
    )  # fmt: skip
    if "compile" in a["variant"] and teacher is not None:
        t0 = time.perf_counter()
        out["compiled"] = kteachers.compile_teacher(distiller, loader, True, 10**9)
        out["compile_s"] = time.perf_counter() - t0
    amp = "bf16" if "bf16" in a["variant"] else None
    kloop.fit(distiller, loader, test, cfg, teacher_out=t_out, progress=False, amp=amp)
    (w0, c0), (w1, c1) = stamps[a["warmup"]], stamps[a["warmup"] + a["steps"]]
    images = a["steps"] * bs
    return {
        **out,
        "img_s": images / (w1 - w0),
        "img_cpu_s": images / (c1 - c0),
        **_peak(device),
    }


def measure_reference(case: str, a: dict) -> dict:
    """Images/s of the usual loop over the same steps; and its time in data waits."""
    method, dataset, augment, bs = CASES[case]
    device = a["device"]
    n = (a["warmup"] + a["steps"] + EXTRA) * bs
    train = ref.reference_dataset(dataset, _root(dataset, a["roots"]), True, augment)
    keep = ref.subset_indices(len(train), n)
    if keep is not None:
        train = ref.Subset(train, keep)
    student, teacher = _models(method, 3 if dataset == "cifar10" else 1, device)
    step = ref.ReferenceStep(method, student, teacher)
    loader = ref.reference_loader(train, bs, a["workers"], 0, device)
    wait = 0.0
    it = iter(loader)
    for i in range(a["warmup"] + a["steps"]):
        if i == a["warmup"]:
            _sync(device)
            t0, wait = time.perf_counter(), 0.0
            cpu0 = _cpu_s(it._workers if a["workers"] else ())
        tw = time.perf_counter()
        x, y = next(it)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        wait += time.perf_counter() - tw
        step(x, y)
    _sync(device)
    seconds = time.perf_counter() - t0
    cpu = _cpu_s(it._workers if a["workers"] else ()) - cpu0
    return {
        "img_s": a["steps"] * bs / seconds,
        "img_cpu_s": a["steps"] * bs / cpu,
        "data_wait_frac": wait / seconds,
        **_peak(device, getattr(it, "_workers", ())),
    }


def profile_kd(a: dict) -> dict:
    """Where one kdutils KD step (3x32x32, augmented, teacher every batch) spends time."""
    import kdutils as kd
    from kdutils import loop as kloop
    from kdutils import teachers as kteachers

    method, dataset, augment, bs = CASES["kd-3x32"]
    device = torch.device(a["device"])
    n = (a["warmup"] + a["steps"]) * bs
    data = kd.data.load(dataset, True, _root(dataset, a["roots"])).subset(n)
    student, teacher = _models(method, 3, device)
    distiller = kd.build(method, student, teacher).to(
        device, memory_format=torch.channels_last
    )
    cfg = kd.make_config("paper", method="kd", epochs=1, batch_size=bs)
    opt, _ = kloop.make_optimizer(distiller, cfg)
    loader = kd.data.Loader(
        data, bs, shuffle=True, augment=True, seed=0, device=device, channels_last=True
    )
    if "compile" in a["variant"]:
        kteachers.compile_teacher(distiller, loader, True, 10**9)
    parts = dict.fromkeys(
        ["data", "teacher forward", "student forward + loss", "backward", "optimizer"],
        0.0,
    )
    distiller.train()
    it = iter(loader)
    for i in range(a["warmup"] + a["steps"]):
        if i == a["warmup"]:
            parts = dict.fromkeys(parts, 0.0)
        marks = [time.perf_counter()]
        x, y, idx = next(it)
        for name in parts:
            if name == "data":
                pass
            elif name == "teacher forward":
                t_out = distiller.teacher_outputs(x)
            elif name == "student forward + loss":
                _, terms = distiller(x, y, teacher_out=t_out, idx=idx)
                loss = sum(terms.values())
                bool(torch.isfinite(loss))
            elif name == "backward":
                opt.zero_grad(set_to_none=True)
                loss.backward()
            else:
                opt.step()
            _sync(device)
            marks.append(time.perf_counter())
            parts[name] += marks[-1] - marks[-2]
    total = sum(parts.values())
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + (
        [ProfilerActivity.CUDA] if device.type == "cuda" else []
    )
    it = iter(loader)
    with profile(activities=acts) as prof:
        for x, y, idx in itertools.islice(it, 5):
            _, terms = distiller(x, y, idx=idx)
            loss = sum(terms.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(
        sort_by=key, row_limit=10, max_name_column_width=40
    )
    return {
        "parts": {k: v / total for k, v in parts.items()},
        "ms_per_step": 1000 * total / a["steps"],
        "table": table,
    }


def _child(spec: str) -> None:
    global BASE_RSS_MB
    import kdutils  # noqa: F401 - imported before the baseline is read

    BASE_RSS_MB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    a = json.loads(spec)
    if a["loop"] == "reference":
        out = measure_reference(a["case"], a)
    elif a["loop"] == "profile":
        out = profile_kd(a)
    else:
        out = measure_kdutils(a["case"], a)
    print("RESULT " + json.dumps(out), flush=True)


def _spawn(a: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(a)],
        capture_output=True,
        text=True,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": " | ".join(tail)}
    return json.loads(lines[-1][len("RESULT ") :])


def _best(runs: list[dict]) -> dict:
    """The fastest of repeated runs (wall clock), with the best CPU rate too."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    best = dict(max(ok, key=lambda r: r["img_s"]))
    best["img_cpu_s"] = max(r["img_cpu_s"] for r in ok)
    best["runs"] = len(ok)
    return best


def _mem(r: dict) -> str:
    if "cuda_mb" in r:
        return f"{r['cuda_mb']:6.0f} GPU"
    workers = f" + workers {r['workers_pss_mb']:.0f}" if "workers_pss_mb" in r else ""
    return (
        f"{r['rss_mb']:6.0f} (+{r['rss_mb'] - r['base_rss_mb']:.0f} "
        f"over imports){workers}"
    )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument(
        "--workers", type=int, default=2, help="reference DataLoader workers"
    )
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per loop, alternated; best kept"
    )
    p.add_argument("--no-compile", action="store_true", help="skip kdutils+compile")
    p.add_argument("--profile", action="store_true", help="profile a kdutils KD step")
    p.add_argument(
        "--amp", action="store_true", help="add kdutils+bf16 on CPU (always on CUDA)"
    )
    p.add_argument(
        "--save",
        metavar="PATH",
        help="also write the figures, with their provenance, as JSON to PATH",
    )
    p.add_argument(
        "--view-sample",
        type=int,
        default=18,
        help="kdutils+views: time the teacher on this many of the 162 views and "
        "reuse them for the rest (0: all; the rate per image-view is what counts)",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child)
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    tmp = Path(tempfile.mkdtemp(prefix="kd-bench-"))
    try:
        _bench(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _bench(args, tmp: Path) -> None:
    n_cifar = (args.warmup + args.steps + EXTRA) * max(bs for *_, bs in CASES.values())
    roots = {
        "cifar10": str(ref.write_fake_cifar10(tmp / "cifar", n_cifar, 256)),
        "fashion-mnist": str(ref.fashion_root(tmp / "fmnist")),
    }
    where = (
        torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"{cpu_name()}, {os.cpu_count()} cores"
    )
    print(
        f"device {args.device} ({where}); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; {args.warmup} warm-up + {args.steps} "
        f"timed steps per measurement, best of {args.repeat} alternated runs; "
        f"reference DataLoader workers: {args.workers}; load average now "
        f"{os.getloadavg()[0]:.1f}"
    )
    print(
        "img/s: wall clock; img/CPU-s: images per CPU-second of the training "
        "process and its workers (robust to other load on a shared machine)"
    )
    variants = ["plain"] + ([] if args.no_compile else ["compile"]) + ["views"]
    if args.device == "cuda" or args.amp:
        variants += ["bf16"] + ([] if args.no_compile else ["compile+bf16"])
    results: dict = {}
    header = (
        f"{'case':<9} {'loop':<17} {'img/s':>8} {'vs ref':>7} "
        f"{'img/CPU-s':>9} {'vs ref':>7}  peak memory, MiB"
    )
    print(header)
    print("-" * (len(header) + 24))
    for case in args.cases:
        method, dataset, augment, bs = CASES[case]
        base = dict(
            case=case, device=args.device, steps=args.steps, warmup=args.warmup,
            workers=args.workers, roots=roots, variant="plain",
            view_sample=args.view_sample,
        )  # fmt: skip
        jobs = [("reference", {**base, "loop": "reference"})]
        for v in variants:
            if v in ("compile", "views") and (method != "kd" or not augment):
                # no teacher, or its logits are precomputed: nothing to compile
                # or to store per view
                continue
            label = "kdutils" if v == "plain" else f"kdutils+{v}"
            jobs.append((label, {**base, "loop": "kdutils", "variant": v}))
        runs: dict[str, list[dict]] = {label: [] for label, _ in jobs}
        for _ in range(args.repeat):
            for label, job in jobs:  # alternated, so slow spells hit every loop
                runs[label].append(_spawn(job))
        rows = [(label, _best(rs)) for label, rs in runs.items()]
        results[case] = dict(rows)
        ref_rate = rows[0][1].get("img_s")
        ref_cpu = rows[0][1].get("img_cpu_s")
        for label, r in rows:
            if "error" in r:
                print(f"{case:<9} {label:<17} failed: {r['error']}")
                continue
            ratio = f"{r['img_s'] / ref_rate:6.2f}x" if ref_rate else "      -"
            cpu_ratio = f"{r['img_cpu_s'] / ref_cpu:6.2f}x" if ref_cpu else "      -"
            extra = []
            if "data_wait_frac" in r:
                extra.append(
                    f"{100 * r['data_wait_frac']:.0f}% of time waiting for data"
                )
            if "compile_s" in r:
                extra.append(f"compile {r['compile_s']:.0f} s ({r['compiled']})")
            if "views_precompute_s" in r:
                extra.append(
                    "teacher logits on every view stored once: "
                    f"{r['views_precompute_img_s']:.0f} image-views/s "
                    f"(timed on {r.get('views_timed', 162)} views)"
                )
            if "precompute_s" in r:
                extra.append(
                    f"teacher logits precomputed once: {r['precompute_img_s']:.0f} img/s"
                )
            print(
                f"{case:<9} {label:<17} {r['img_s']:8.0f} {ratio:>7} "
                f"{r['img_cpu_s']:9.0f} {cpu_ratio:>7}  {_mem(r)}"
                + (f"  [{'; '.join(extra)}]" if extra else "")
            )
    print(
        "3x32 cases: synthetic CIFAR-10, augmentation on (the teacher runs on every "
        "batch in both loops); 1x28 cases: Fashion-MNIST, no augmentation (kdutils "
        "reads precomputed teacher logits)."
    )
    if "kd-3x32" in results:
        unit = "GPU-hours" if args.device == "cuda" else "CPU-hours on this machine"
        runs = 16 * 3 + 1  # Table 1's rows x seeds, plus the shared ResNet56 teacher
        results["projected_paper_table1_hours"] = {
            label: runs * 240 * PAPER_TRAIN / r["img_s"] / 3600
            for label, r in results["kd-3x32"].items()
            if "img_s" in r
        }
        print(
            f"projected paper Table 1 ({runs} runs x 240 epochs x {PAPER_TRAIN} images, "
            "each at the measured 3x32x32 KD rate; evaluation and feature methods' "
            "extra cost not included):"
        )
        for label, r in results["kd-3x32"].items():
            if "img_s" in r:
                hours = runs * 240 * PAPER_TRAIN / r["img_s"] / 3600
                print(f"  {label:<17} {hours:10.1f} {unit}")
    if "kdutils+views" in results.get("kd-3x32", {}):
        _amortized(results, args.device)
    if args.profile:
        for v in variants:
            if "bf16" in v or v == "views":
                # The profiled step runs the teacher on every batch (its timers
                # split the forward passes); a stored-views step is that step
                # without the teacher forward, measured above in img/s.
                continue
            prof = _spawn(dict(
                loop="profile", device=args.device, steps=args.steps,
                warmup=args.warmup, roots=roots, variant=v,
            ))  # fmt: skip
            if "error" in prof:
                print(f"profile ({v}) failed: {prof['error']}")
                continue
            label = "kdutils" if v == "plain" else f"kdutils+{v}"
            results.setdefault("profile", {})[label] = {
                k: prof[k] for k in ("ms_per_step", "parts")
            }
            print(
                f"\nwhere a {label} KD step goes (kd-3x32, batch 64, "
                f"{prof['ms_per_step']:.0f} ms/step, synchronised timers):"
            )
            for k, f in prof["parts"].items():
                print(f"  {k:<24} {100 * f:5.1f}%")
            if v == "plain":
                print("top operators (torch.profiler, 5 steps):")
                print(prof["table"])
    if args.save:
        _save(args, results, where)


def _view_students() -> list[str]:
    """Table 1's student methods that can read stored per-view outputs (one
    frozen teacher, of which they read only the logits and pooled embedding)."""
    import kdutils as kd
    from kdutils.distillers import Distiller
    from kdutils.reproduce.rows import table1_rows
    from kdutils.train import stored_views_apply

    names = []
    for row in table1_rows():
        method = row.method
        if row.pipeline or method == "ce" or method in names:
            continue
        torch.manual_seed(0)
        student = kd.create_model(STUDENT, 10, 3)
        teacher = kd.create_model(TEACHER, 10, 3)
        d = kd.build(method, student, teacher)
        # A method with a stage of its own before training (FSP's 30 epochs
        # of matching feature maps) runs its teacher there: not counted.
        own_stage = type(d).prepare is not Distiller.prepare
        if stored_views_apply(d) and not own_stage:
            names.append(method)
    return names


def _amortized(results: dict, device: str) -> None:
    """The cost per student when a teacher's outputs on every view are stored
    once and read by all its students, for the ``paper`` recipe."""
    rows = results["kd-3x32"]
    views, ref_r = rows["kdutils+views"], rows["reference"]
    if "img_s" not in views or "img_s" not in ref_r:
        return
    unit = "GPU-h" if device == "cuda" else "CPU-h"
    n_views = 162
    pre_h = n_views * PAPER_TRAIN / views["views_precompute_img_s"] / 3600
    train_h = 240 * PAPER_TRAIN / views["img_s"] / 3600
    ref_h = 240 * PAPER_TRAIN / ref_r["img_s"] / 3600
    online = rows.get("kdutils+compile", rows.get("kdutils", {}))
    online_h = 240 * PAPER_TRAIN / online["img_s"] / 3600 if "img_s" in online else None
    print(
        f"\nstored views (float16), paper recipe: 240 epochs x {PAPER_TRAIN} CIFAR-10 "
        f"images; the teacher's logits on all {n_views} views of every image computed "
        f"once per teacher ({pre_h:.1f} {unit}; {PAPER_TRAIN * n_views * 10 * 2 / 1e6:.0f} MB "
        f"on disk for CIFAR-10, {PAPER_TRAIN * n_views * 100 * 2 / 1e9:.2f} GB for "
        f"CIFAR-100, {PAPER_TRAIN * n_views * 64 * 2 / 1e9:.2f} GB more with "
        "ResNet56's pooled embedding). Cost per student of one teacher:"
    )
    print(f"  {'students':>8} {unit + ' each':>10} {'vs usual loop':>14}")
    print(f"  {'usual':>8} {ref_h:10.2f} {1:13.2f}x")
    if online_h:
        print(
            f"  {'online':>8} {online_h:10.2f} {ref_h / online_h:13.2f}x  (kdutils, teacher on every batch)"
        )
    amort = {}
    for k in (1, 3, 42):
        per = train_h + pre_h / k
        amort[k] = per
        print(f"  {k:>8} {per:10.2f} {ref_h / per:13.2f}x")
    results["stored_views"] = {
        "precompute_hours": pre_h,
        "per_student_hours": {str(k): v for k, v in amort.items()},
        "usual_loop_hours": ref_h,
    }
    eligible = _view_students()
    students = _table1_students()
    n_elig = sum(1 for m, pipe in students if m in eligible and not pipe)
    other_h = online_h or ref_h
    total = (n_elig * train_h + pre_h) + (len(students) - n_elig) * other_h
    total_ref = len(students) * ref_h
    results["stored_views"]["table1"] = {
        "students": len(students),
        "reading_stored_views": n_elig,
        "methods": eligible,
        "hours": total,
        "usual_loop_hours": total_ref,
    }
    print(
        f"  Table 1's {len(students)} student runs (14 rows x 3 seeds): {n_elig} "
        f"({', '.join(eligible)}; TAKD's chain not counted) read stored views, the "
        f"others run the teacher: {total:.0f} {unit} against {total_ref:.0f} with "
        f"the usual loop ({total_ref / total:.2f}x), each run at the measured KD rates"
    )


def _table1_students() -> list[tuple[str, str]]:
    """Table 1's student runs as ``(method, pipeline)``, one per run (rows x 3
    seeds); a pipeline row counts its final student only."""
    from kdutils.reproduce.rows import table1_rows

    rows = [r for r in table1_rows() if r.method != "ce"]
    return [(r.method, r.pipeline) for r in rows for _ in range(3)]


def _save(args, results: dict, where: str) -> None:
    """Write the figures and their provenance (commit, machine, date) as JSON."""
    from kdutils.provenance import provenance
    from kdutils.results import atomic_write_bytes

    prov = provenance(torch.device(args.device))
    prov.pop("code_hash")
    prov["machine"] = where
    prov["load_average_at_end"] = os.getloadavg()[0]
    record = {
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "save")},
        "provenance": prov,
        "results": results,
    }
    path = Path(args.save)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(record, indent=1) + "\n").encode())
    print(f"figures written to {path}")


if __name__ == "__main__":
    main()
