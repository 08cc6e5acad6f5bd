"""How much faster the `quick` book's runs are with kdutils' fast paths than without.

The book's runs are cached (``$KD_CACHE_DIR``, filled by ``make book``). For a
sample of them, one per family of methods the book teaches, this script trains
each run twice, one after the other on the same machine:

* **kdutils**: ``kd.run`` exactly as the book calls it (its accuracy is checked
  against the cached run's: the fast run is the book's run), in a scratch cache that links
  every other cached run (the teachers are loaded, not retrained);
* **usual loop**: the same Distiller, teacher(s), optimiser, schedule and
  number of steps through :func:`kdutils.loop.fit` (its evaluation included),
  but fed the way the common CIFAR KD code feeds it: a ``torchvision`` dataset
  whose samples go one by one through ``ToTensor`` and ``Normalize`` in a
  ``DataLoader`` with worker processes, the default NCHW layout, and the
  teacher run under ``no_grad`` on every batch (no precomputed teacher outputs, no compiled teacher).

Each side is timed from the start of the call to the end of training,
teacher loading and data preparation included. It prints both times, their
ratio and both accuracies per run, then the sample's total ratio, and the
book's whole recorded training time re-weighted by the measured ratio of each
run's family (an estimate, labelled so). ``--save`` writes the figures with
provenance; a saved file is resumed (runs already measured are kept).

    flock /tmp/kd-cpu.lock .venv/bin/python bench/book_factor.py \
        --save results/bench/book-factor-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_loop import fashion_root, reference_dataset, subset_indices  # noqa: E402

# The sample: (family, method, student) of a seed-0 `quick` run of the book.
SAMPLE = [
    ("teacher", "ce", "resnet32"),
    ("baseline", "ce", "resnet8"),
    ("response", "kd", "resnet8"),
    ("feature", "fitnet", "resnet8"),
    ("feature", "at", "resnet8"),
    ("relation", "rkd", "resnet8"),
    ("relation", "crd", "resnet8"),
    ("online", "dml", "resnet8"),
    ("self", "byot", "resnet8"),
    ("multi-teacher", "avgkd", "resnet8"),
    ("progressive", "rco", "resnet8"),
    ("adversarial", "advlogit", "resnet8"),
]

# Every method of the book, by the family whose measured ratio stands for it.
FAMILY = {
    "ce": "baseline",
    "kd": "response",
    "cskd": "response",
    "eskd": "response",
    "dgkd": "response",
    "cts": "response",
    "dtd": "response",
    "pad": "response",
    "sskd": "response",
    "fitnet": "feature",
    "at": "feature",
    "fsp": "feature",
    "ab": "feature",
    "ft": "feature",
    "nst": "feature",
    "vid": "feature",
    "afd": "feature",
    "reviewkd": "feature",
    "unix": "feature",
    "rkd": "relation",
    "crd": "relation",
    "irg": "relation",
    "sp": "relation",
    "cc": "relation",
    "pkt": "relation",
    "triplet": "relation",
    "afm": "relation",
    "dml": "online",
    "one": "online",
    "okddip": "online",
    "ffl": "online",
    "byot": "self",
    "bake": "self",
    "avgkd": "multi-teacher",
    "amtmlkd": "multi-teacher",
    "snapshot": "progressive",
    "rco": "progressive",
    "advlogit": "adversarial",
    "advfeat": "adversarial",
}


class _Indexed(Dataset):
    """A dataset's ``(x, y)`` samples with their position, as kdutils' batches carry."""

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        x, y = self.base[i]
        return x, y, i


class UsualLoader:
    """A ``DataLoader`` over per-sample transforms, with kdutils' loader interface."""

    def __init__(self, dataset, batch_size: int, seed: int, workers: int):
        self.g = torch.Generator()
        self.seed = seed
        self.loader = DataLoader(
            _Indexed(dataset),
            batch_size=batch_size,
            shuffle=True,
            num_workers=workers,
            generator=self.g,
            persistent_workers=workers > 0,
        )

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.g.manual_seed(self.seed * 1000 + epoch)

    def __iter__(self):
        for x, y, i in self.loader:
            yield x, y, torch.as_tensor(i)


def book_runs(cache: Path, profile: str = "quick") -> list[dict]:
    """The cached float32 runs of ``profile`` that this code would load.

    Runs left in the cache by older code (their key no longer matches) are
    not the book's and are skipped.
    """
    import kdutils as kd
    from kdutils.runs import run_key

    out = []
    for f in sorted((cache / "runs").glob("*/result.json")):
        r = json.loads(f.read_text())
        if r["config"].get("profile") != profile or r["provenance"].get("amp"):
            continue
        cfg = kd.Config.from_dict(r["config"])
        if run_key(cfg, r["provenance"].get("channels_last", True)) == r["key"]:
            out.append({**r, "folder": f.parent.name})
    return out


def pick(runs: list[dict], method: str, student: str) -> dict:
    """The seed-0 run of ``method`` with ``student``, the chapter's default if several."""
    import kdutils as kd

    hits = [
        r
        for r in runs
        if r["config"]["method"] == method
        and r["config"]["student"] == student
        and r["config"]["seed"] == 0
    ]
    if not hits:
        raise SystemExit(
            f"no cached seed-0 quick run of {method} ({student}): build the book "
            "first (make book), or point KD_CACHE_DIR at its cache"
        )
    default = kd.make_config("quick", method=method, student=student, seed=0)
    for r in hits:
        if kd.Config.from_dict(r["config"]) == default:
            return r
    return min(hits, key=lambda r: len(json.dumps(r["config"])))


def scratch_cache(cache: Path, leave_out: str) -> Path:
    """A cache linking every cached run but ``leave_out`` (so that one is trained)."""
    d = Path(tempfile.mkdtemp(prefix="kd-factor-"))
    (d / "runs").mkdir()
    for run in (cache / "runs").iterdir():
        if run.name != leave_out:
            (d / "runs" / run.name).symlink_to(run.resolve())
    return d


def time_kdutils(cfg, cache: Path, folder: str) -> tuple[float, float]:
    import kdutils as kd

    os.environ["KD_CACHE_DIR"] = str(scratch_cache(cache, folder))
    t0 = time.perf_counter()
    res = kd.run(cfg, progress=False)
    return res.test_acc, time.perf_counter() - t0


def time_usual(cfg, cache: Path, root: Path, workers: int) -> tuple[float, float]:
    from kdutils.distillers import build
    from kdutils.loop import fit, load_split, seed_everything
    from kdutils.models import build_model
    from kdutils.train import _load_teachers

    os.environ["KD_CACHE_DIR"] = str(cache)
    device = torch.device("cpu")
    t0 = time.perf_counter()
    teacher, _, _ = _load_teachers(
        cfg, device, progress=False, channels_last=True, amp=None, compile=False
    )
    if teacher is not None:
        teacher = teacher.to(memory_format=torch.contiguous_format)
    train_t, test_t = load_split(cfg, True), load_split(cfg, False)
    dataset = reference_dataset(cfg.dataset, root, True, cfg.augment)
    keep = subset_indices(len(dataset), cfg.train_subset)
    if keep is not None:
        dataset = Subset(dataset, keep)
    seed_everything(cfg.seed)
    student = build_model(cfg.student, cfg.dataset)
    distiller = build(cfg.method, student, teacher, **cfg.method_args)
    distiller.setup(train_t)
    loader = UsualLoader(dataset, cfg.batch_size, cfg.seed, workers)
    history = fit(distiller, loader, test_t, cfg, progress=False)
    return history[-1]["test_acc"], time.perf_counter() - t0


def main() -> None:
    import kdutils as kd
    from kdutils.runs import cache_dir

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--methods", nargs="+", help="only these sample methods")
    p.add_argument("--save", type=Path, help="write (and resume) the figures here")
    p.add_argument(
        "--redo",
        nargs="+",
        default=[],
        metavar="METHOD[/STUDENT]",
        help="measure these saved runs again (e.g. ones timed on a busy machine)",
    )
    args = p.parse_args()
    cache = cache_dir()
    runs = book_runs(cache)
    if not runs:
        raise SystemExit(f"no cached quick runs under {cache}: run `make book` first")
    saved = (
        json.loads(args.save.read_text()) if args.save and args.save.exists() else {}
    )
    measured = {
        (m["method"], m["student"]): m
        for m in saved.get("runs", [])
        if m["method"] not in args.redo
        and f"{m['method']}/{m['student']}" not in args.redo
    }
    root = fashion_root(Path(tempfile.mkdtemp(prefix="kd-ref-")))
    sample = [s for s in SAMPLE if not args.methods or s[1] in args.methods]
    for family, method, student in sample:
        if (method, student) in measured:
            m = measured[(method, student)]
        else:
            r = pick(runs, method, student)
            cfg = kd.Config.from_dict(r["config"])
            acc_f, sec_f = time_kdutils(cfg, cache, r["folder"])
            same = acc_f == r["final"]["test_acc"]
            if not same:
                print(
                    f"warning: {cfg.name} retrained to {100 * acc_f:.2f}%, the cached "
                    f"run has {100 * r['final']['test_acc']:.2f}%",
                    flush=True,
                )
            acc_u, sec_u = time_usual(cfg, cache, root, args.workers)
            m = measured[(method, student)] = {
                "family": family,
                "method": method,
                "student": student,
                "name": cfg.name,
                "kdutils_seconds": sec_f,
                "usual_seconds": sec_u,
                "kdutils_acc": acc_f,
                "usual_acc": acc_u,
                "kdutils_equals_cached_run": same,
                "cached_train_seconds": r["final"]["train_seconds"],
                "provenance": _provenance(),
            }
            if args.save:
                _save(args.save, measured, args)
        print(
            f"{m['family']:>13} {m['method']:>8} {m['student']:>8}: kdutils "
            f"{m['kdutils_seconds']:6.0f} s {100 * m['kdutils_acc']:.2f}% | usual "
            f"{m['usual_seconds']:6.0f} s {100 * m['usual_acc']:.2f}% | "
            f"{m['usual_seconds'] / m['kdutils_seconds']:.2f}x",
            flush=True,
        )
    done = [measured[(m, s)] for _, m, s in sample if (m, s) in measured]
    fast = sum(m["kdutils_seconds"] for m in done)
    usual = sum(m["usual_seconds"] for m in done)
    print(
        f"sample of {len(done)} runs: kdutils {fast:.0f} s, usual loop {usual:.0f} s: "
        f"{usual / fast:.2f}x"
    )
    by_family = defaultdict(list)
    for m in done:
        by_family[m["family"]].append(m["usual_seconds"] / m["kdutils_seconds"])
    ratio = {f: float(np.mean(v)) for f, v in by_family.items()}
    ratio["teacher"] = ratio.get("teacher", ratio.get("baseline", 1.0))
    book = usual_book = 0.0
    counted = 0
    unknown = set()
    for r in runs:
        c = r["config"]
        fam = (
            "teacher"
            if c["method"] == "ce" and c["student"] == "resnet32"
            else (FAMILY.get(c["method"]))
        )
        if fam not in ratio:
            unknown.add(c["method"])
            continue
        counted += 1
        book += r["final"]["train_seconds"]
        usual_book += r["final"]["train_seconds"] * ratio[fam]
    print(
        f"estimate for the {counted} cached quick runs ({book / 3600:.2f} h of "
        f"recorded training, each scaled by its family's measured ratio): "
        f"{usual_book / 3600:.2f} h with the usual loop, {usual_book / book:.2f}x"
        + (f" (no ratio for: {', '.join(sorted(unknown))})" if unknown else "")
    )
    if args.save and len(done) == len(SAMPLE):
        _save(
            args.save,
            measured,
            args,
            book={
                "runs": counted,
                "recorded_train_seconds": round(book, 1),
                "usual_loop_seconds_estimate": round(usual_book, 1),
                "ratio_estimate": round(usual_book / book, 3),
                "sample_kdutils_seconds": round(fast, 1),
                "sample_usual_seconds": round(usual, 1),
                "family_ratios": {k: round(v, 3) for k, v in ratio.items()},
            },
        )


def _provenance() -> dict:
    """kdutils' run provenance, with the machine and its load when measured."""
    import platform

    from kdutils.provenance import provenance

    return {
        **provenance(torch.device("cpu")),
        "machine": f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores",
        "load_average": os.getloadavg()[0],
    }


def _save(path: Path, measured: dict, args, book: dict | None = None) -> None:
    from kdutils.results import atomic_write_bytes

    body = {
        "what": "quick book runs: kdutils (kd.run) against the usual data path "
        "and teacher handling, same Distiller and schedule",
        "args": {"workers": args.workers},
        # Each run's own provenance: the machine and code it was timed on.
        "runs": sorted(
            measured.values(),
            key=lambda m: [(s[1], s[2]) for s in SAMPLE].index(
                (m["method"], m["student"])
            ),
        ),
        "provenance": _provenance(),
        **({"book": book} if book else {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(body, indent=1) + "\n").encode())


if __name__ == "__main__":
    main()
