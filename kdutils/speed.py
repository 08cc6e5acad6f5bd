"""The measured speed of kdutils' training loop, as Markdown for the book.

Reads the files that ``bench/`` writes with ``--save`` (``results/bench``):
``book-factor-*.json`` (the quick book's runs with and without kdutils' fast
paths, ``bench/book_factor.py``), ``book-parallel-*.json`` (the book's runs
one at a time with every core or one per core at once,
``bench/book_parallel.py``) and the ``bench/bench_speed.py`` files (one
KD step at the survey's shape against the usual loop). Every number in the
text comes from those files, with their provenance; nothing is measured here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# The loops of bench_speed.py, in the order and words of the book's table.
_LOOPS = {
    "reference": "the usual loop (DataLoader, 2 workers, per-sample transforms)",
    "kdutils": "kdutils",
    "kdutils+compile": "kdutils, teacher compiled",
    "kdutils+bf16": 'kdutils, `amp="bf16"`',
    "kdutils+compile+bf16": "kdutils, teacher compiled, bf16",
    "kdutils+views": "kdutils, the teacher's logits stored once per view",
}


def default_bench_dir() -> Path:
    """``results/bench`` of the source checkout that holds this package."""
    return Path(__file__).resolve().parents[1] / "results" / "bench"


def _where(prov: dict) -> str:
    commit = (prov.get("git_commit") or "unknown")[:10]
    return (
        f"{prov.get('machine') or prov.get('device', 'unknown machine')}, "
        f"{prov.get('threads', '?')} threads, torch {prov.get('torch', '?')}, "
        f"{str(prov.get('date', ''))[:10]}, commit {commit}"
    )


def book_factor_markdown(path: Path) -> str:
    """The table of a ``bench/book_factor.py`` file, and its whole-book estimate."""
    d = json.loads(Path(path).read_text())
    runs = d["runs"]
    if not runs:
        raise ValueError(f"{path} holds no measured runs")
    lines = [
        f"Measured by `bench/book_factor.py` ({_where(d['provenance'])}; "
        f"`{Path(path).name}`). Each run of the `quick` book below was trained "
        "twice, back to back on the same machine: by `kd.run` as the chapter "
        "does, and through the same Distiller, optimiser and schedule fed the "
        "usual way (a torchvision dataset with per-sample transforms in a "
        f"`DataLoader` with {d['args']['workers']} workers, NCHW, the teacher "
        "run on every batch). Times are whole runs, data and teacher loading "
        "included; one seed, so the accuracies differ by the data order only.",
        "",
        "| family | method, student | kdutils (s) | usual loop (s) | speed-up "
        "| accuracy, kdutils / usual (%) |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['family']} | {r['method']}, {r['student']} "
            f"| {r['kdutils_seconds']:.0f} | {r['usual_seconds']:.0f} "
            f"| {r['usual_seconds'] / r['kdutils_seconds']:.2f}× "
            f"| {100 * r['kdutils_acc']:.2f} / {100 * r['usual_acc']:.2f} |"
        )
    fast = sum(r["kdutils_seconds"] for r in runs)
    usual = sum(r["usual_seconds"] for r in runs)
    lines.append(
        f"| **all {len(runs)}** | | **{fast:.0f}** | **{usual:.0f}** "
        f"| **{usual / fast:.2f}×** | |"
    )
    book = d.get("book")
    if book:
        lines += [
            "",
            f"Scaling each of the book's {book['runs']} cached `quick` runs "
            f"({book['recorded_train_seconds'] / 3600:.2f} h of recorded "
            "training) by its family's measured ratio gives an estimated "
            f"{book['usual_loop_seconds_estimate'] / 3600:.2f} h for the usual "
            f"loop: the book runs about {book['ratio_estimate']:.1f}× faster "
            "with kdutils (an estimate from the sample, not a second build).",
        ]
    return "\n".join(lines) + "\n"


def _short(run: str) -> str:
    """A run folder's name without its cache key."""
    return re.sub(r"-[0-9a-f]{12}$", "", run)


def book_parallel_markdown(path: Path) -> str:
    """A ``bench/book_parallel.py`` file: serial against parallel, and the check
    that a run does not depend on what trains beside it."""
    d = json.loads(Path(path).read_text())
    cores, runs = d["cores"], d["runs"]
    names = ", ".join(f"`{_short(r['run'])}`" for r in runs)
    same = (
        "had bit-identical weights and epoch records"
        if d["alone_equals_parallel"]
        else "did **not** reproduce bit for bit"
    )
    return (
        f"Measured by `bench/book_parallel.py` ({_where(d['provenance'])}; "
        f"`{Path(path).name}`). {len(runs)} runs of the `quick` book ({names}) "
        f"took {d['serial_wall_s']:.0f} s one after another with {cores} threads "
        f"each, and {d['parallel_wall_s']:.0f} s trained {cores} at a time with "
        f"one thread each, as `make book` runs them: {d['speedup']:.2f}× the "
        f"throughput. `{_short(d['alone']['run'])}`, trained alone with one thread and "
        f"beside the others, {same}.\n"
    )


def step_speed_markdown(path: Path, case: str = "kd-3x32") -> str:
    """The loops of a ``bench/bench_speed.py`` file for ``case``, in images/s."""
    d = json.loads(Path(path).read_text())
    res = d["results"][case]
    gpu = d["args"].get("device") == "cuda"
    ref = res["reference"]["img_s"]
    lines = [
        f"Measured by `bench/bench_speed.py` ({_where(d['provenance'])}; "
        f"`{Path(path).name}`): `kd` ResNet56 → ResNet20 on 3×32×32 images with "
        "augmentation, so that every loop runs the teacher on every batch; "
        f"{d['args']['steps']} steps after {d['args']['warmup']} of warm-up, "
        f"best of {d['args']['repeat']}.",
        "",
        "| loop | images/s | vs the usual loop | peak memory (MiB) |",
        "|---|---|---|---|",
    ]
    for key, label in _LOOPS.items():
        if key not in res:
            continue
        r = res[key]
        mem = f"{r['rss_mb']:.0f}"
        if r.get("workers_pss_mb"):
            mem += f" + {r['workers_pss_mb']:.0f} in workers"
        lines.append(
            f"| {label} | {r['img_s']:.0f} | {r['img_s'] / ref:.2f}× | {mem} |"
        )
    hours = d["results"].get("projected_paper_table1_hours", {})
    if "reference" in hours and len(hours) > 1:
        best = min((v, k) for k, v in hours.items())
        lines += [
            "",
            "At these rates the `paper` Table 1 (16 rows × 3 seeds × 240 epochs "
            f"of CIFAR-10) would take {hours['reference']:.0f} "
            f"{'GPU' if gpu else 'CPU'}-hours with the usual loop and "
            f"{best[0]:.0f} with {_LOOPS[best[1]]} on this machine"
            + ("." if gpu else ": it is a GPU's job."),
        ]
    views = d["results"].get("stored_views")
    if views:
        unit = "GPU" if gpu else "CPU"
        per = views["per_student_hours"]
        t1 = views["table1"]
        usual = views["usual_loop_hours"]
        lines += [
            "",
            "With the teacher's outputs stored once per view, a teacher's "
            f"precomputation ({views['precompute_hours']:.1f} {unit}-hours at "
            "the measured rate, for all 162 views of the 50,000 CIFAR-10 "
            "images) is shared by its students. Per student of the `paper` "
            f"recipe: {usual:.1f} {unit}-hours with the usual loop; with stored "
            f"views {per['1']:.1f} for one student ({usual / per['1']:.2f}×), "
            f"{per['3']:.1f} each for three ({usual / per['3']:.2f}×) and "
            f"{per['42']:.1f} each for 42 ({usual / per['42']:.2f}×). Of Table "
            f"1's {t1['students']} student runs, {t1['reading_stored_views']} "
            f"({', '.join(t1['methods'])}) read only the teacher's logits and "
            "pooled embedding and can use them; the rest run the teacher, so "
            f"the whole table is {t1['usual_loop_hours']:.0f} against "
            f"{t1['hours']:.0f} {unit}-hours "
            f"({t1['usual_loop_hours'] / t1['hours']:.2f}×).",
        ]
    return "\n".join(lines) + "\n"


def speed_markdown(bench_dir: Path | None = None) -> str:
    """The book's "how fast" section: every saved measurement in ``bench_dir``."""
    bench_dir = Path(bench_dir) if bench_dir is not None else default_bench_dir()
    factors = sorted(bench_dir.glob("book-factor-*.json"))
    parallel = sorted(bench_dir.glob("book-parallel-*.json"))
    # Per device (CPU, and CUDA if saved), the step measurements, newest first.
    steps: dict[str, list[tuple[str, Path, set[str]]]] = {}
    for p in sorted(bench_dir.glob("*.json")):
        if p.name.startswith(("book-factor-", "book-parallel-")):
            continue
        d = json.loads(p.read_text())
        loops = d.get("results", {}).get("kd-3x32")
        if loops:
            device = d["args"].get("device", "cpu")
            date = str(d.get("provenance", {}).get("date", ""))
            steps.setdefault(device, []).append((date, p, set(loops)))
    if not factors and not steps and not parallel:
        return (
            f"No measurement is saved in `{bench_dir}`: run "
            "`bench/book_factor.py --save ...` and `bench/bench_speed.py --save "
            "...` to add one.\n"
        )
    parts = []
    for p in factors:
        parts.append("**The `quick` book's runs, with and without kdutils.** ")
        parts.append(book_factor_markdown(p))
    for p in parallel:
        parts.append("\n**The `quick` book's runs, one per core at once.** ")
        parts.append(book_parallel_markdown(p))
    for device, files in sorted(steps.items()):
        where = "on a GPU" if device == "cuda" else "on the CPU"
        files = sorted(files, key=lambda f: (f[0], f[1]), reverse=True)
        parts.append(f"\n**One distillation step at the survey's shape, {where}.** ")
        parts.append(step_speed_markdown(files[0][1]))
        newest = files[0][2]
        for date, p, loops in files[1:]:
            if loops - newest:  # an older run measured loops the newest did not
                parts.append(
                    f"\n**An earlier measurement {where} ({date[:10]}), with "
                    "loops the newest one did not run.** "
                )
                parts.append(step_speed_markdown(p))
    return "".join(parts)


def book_factor_figure(bench_dir: Path | None = None):
    """Seconds per run with kdutils and the usual way, from the saved files.

    One pair of bars per run of every ``book-factor-*.json`` in ``bench_dir``,
    each labelled with its speed-up; a figure that says so when none is saved.
    """
    import matplotlib.pyplot as plt

    bench_dir = Path(bench_dir) if bench_dir is not None else default_bench_dir()
    runs = [
        r
        for p in sorted(bench_dir.glob("book-factor-*.json"))
        for r in json.loads(p.read_text())["runs"]
    ]
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * max(len(runs), 3) + 1.2))
    if not runs:
        ax.text(0.5, 0.5, "no book_factor measurement saved", ha="center")
        ax.set_axis_off()
        return fig
    y = list(range(len(runs)))[::-1]
    usual = [r["usual_seconds"] for r in runs]
    fast = [r["kdutils_seconds"] for r in runs]
    ax.barh([v + 0.2 for v in y], usual, 0.4, color="#b0b0b0", label="usual loop")
    ax.barh([v - 0.2 for v in y], fast, 0.4, color="#1f77b4", label="kdutils")
    for v, u, f in zip(y, usual, fast, strict=True):
        ax.text(u + 3, v + 0.2, f"{u / f:.2f}×", va="center", fontsize=8)
    ax.set_yticks(y, [f"{r['method']}, {r['student']} ({r['family']})" for r in runs])
    ax.set_xlabel("seconds per quick run (whole run, one seed)")
    ax.set_xlim(0, max(usual) * 1.15)
    total_f, total_u = sum(fast), sum(usual)
    ax.set_title(
        f"{len(runs)} runs of the quick book: {total_f:.0f} s with kdutils, "
        f"{total_u:.0f} s the usual way ({total_u / total_f:.2f}×)",
        fontsize=10,
    )
    ax.legend(loc="lower right", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig
