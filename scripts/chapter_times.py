"""Each chapter's measured execution time, recorded with where it was measured.

    python scripts/chapter_times.py record FILE.json [--how TEXT] [--cache DIR] [--add] EXECUTED.ipynb ...
        store papermill's duration of each executed notebook under its profile
        (read from the notebook's metadata), with the CPU, the date, the commit
        and how they were executed (TEXT; default: one at a time, empty cache);
        with --cache, also each chapter's training time from an empty cache
        (see `runs`; the chapters taken in the book's order; every key of a run
        name counts, since the cache started empty)
    python scripts/chapter_times.py table FILE.json
        the table of chapter times (Markdown): one row per chapter of _toc.yml
    python scripts/chapter_times.py order FILE.json PROFILE NOTEBOOK ...
        the notebooks, longest recorded time in PROFILE first (those never
        measured first of all, in the order given): `make book` starts them
        in this order, so with JOBS at once the longest do not start last
    python scripts/chapter_times.py weeks FILE.json book/course.md
        the course map's weekly times: each "## Week N" section of the course
        map lists its chapters as links to ../notebooks/<stem>.ipynb
    python scripts/chapter_times.py runs CACHE EXECUTED.ipynb ...
        what each executed chapter would cost from an empty cache, whatever
        was cached when it ran: the runs it used (its "[train]", "[cache]",
        "[wait]" and "[done]" lines), and the training time recorded in the
        run cache CACHE for those it is the first of the notebooks given to
        use (give them in the book's order), so a run shared by chapters
        counts once; of that, how much is repeat seeds (runs named -s1, -s2,
        ..., which repeat a -s0 run for the mean and spread)

The book includes these tables, so the times it shows are the last ones
recorded, never typed by hand.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ("smoke", "quick")
# The wall-clock budget of building the book from nothing on a 2-core machine
# (two workers of one thread each, `make book`'s default there).
BUDGET = {"quick": dict(hours=2.0, workers=2)}


def cpu() -> str:
    """The CPU's model and its widest vector extension (AVX-512 or AVX2).

    A light twin of :func:`kdutils.provenance.cpu_name`: ``make`` calls this
    script (``order``) while it reads the Makefile, and importing kdutils would
    import torch there."""
    model, flags = platform.processor() or platform.machine(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", info)[1].strip()
        flags = re.search(r"flags\s*:\s*(.*)", info)[1].split()
    except (OSError, TypeError):
        pass
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{model}, {isa}, {os.cpu_count()} cores"


def commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "unknown"


HOW = "empty at the start (every run trained), one chapter at a time"


def record(
    path: Path,
    notebooks: list[str],
    how: str = HOW,
    cache: Path | None = None,
    add: bool = False,
) -> None:
    data = json.loads(path.read_text()) if path.exists() else {}
    by_profile: dict[str, dict[str, float]] = {}
    nb_of: dict[str, list[str]] = {}
    for nb in notebooks:
        meta = json.loads(Path(nb).read_text())["metadata"].get("papermill", {})
        profile = meta.get("parameters", {}).get("profile")
        if profile not in PROFILES or not meta.get("duration"):
            sys.exit(f"{nb}: no papermill duration for a profile in {PROFILES}")
        by_profile.setdefault(profile, {})[Path(nb).stem] = round(meta["duration"], 1)
        nb_of.setdefault(profile, []).append(nb)
    for profile, seconds in by_profile.items():
        if add:
            if profile not in data:
                sys.exit(f"--add: {path} has no {profile} entry to add to")
            entry = data[profile]
            entry["seconds"] = dict(sorted({**entry["seconds"], **seconds}.items()))
            apart = {**entry.get("apart", {}), **dict.fromkeys(seconds, where(how))}
            entry["apart"] = dict(sorted(apart.items()))
            if cache is not None and "training" in entry:
                # these chapters' runs, from a cache that started empty for them
                training = {**entry["training"], **_training(cache, nb_of[profile])}
                entry["training"] = dict(sorted(training.items()))
            continue
        data[profile] = {**where(how), "seconds": dict(sorted(seconds.items()))}
        if cache is not None:
            data[profile]["training"] = _training(cache, nb_of[profile])
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"recorded {sum(map(len, by_profile.values()))} chapter times in {path}")


def where(how: str) -> dict[str, str]:
    """Where and how a time is measured now: the CPU, the date, the commit and
    ``how`` (stored under ``cache``)."""
    return {
        "cpu": cpu(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "commit": commit(),
        "cache": how,
    }


def _training(cache: Path, notebooks: list[str]) -> dict[str, dict]:
    """Each chapter's runs and their training from ``cache``, which started
    empty for these notebooks (taken in the book's order, so a shared run
    counts for the first chapter that uses it)."""
    book = {stem: i for i, stem in enumerate(chapters())}
    ordered = sorted(notebooks, key=lambda nb: book.get(Path(nb).stem, 999))
    # the cache started empty: every key of a name was trained once
    per = runs(cache, ordered, every_key=True)[1]
    missing = {stem: d["missing"] for stem, d in per.items() if d["missing"]}
    if missing:
        sys.exit(f"runs not in the cache {cache}: {missing}")
    return {
        stem: dict(seconds=d["seconds"], runs=d["first"], repeats=d["repeats"])
        for stem, d in sorted(per.items())
    }


def chapters() -> list[str]:
    toc = (ROOT / "_toc.yml").read_text()
    return [Path(p).name for p in re.findall(r"^ *- file: notebooks/(\S+)", toc, re.M)]


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "not measured yet"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def budget_line(
    profile: str, total: float, left: int, repeats: float | None = None
) -> str:
    """The book's training from an empty cache (``total`` seconds at one
    thread, ``left`` chapters not yet measured, ``repeats`` of those seconds
    spent on repeat seeds where known) against ``BUDGET[profile]``."""
    b = BUDGET[profile]
    floor = total / b["workers"]
    over = floor - 3600 * b["hours"]
    if over > 0:  # missing chapters only add: an "over" verdict stands
        verdict = f"over the budget of {b['hours']:g} h by at least {fmt(over)}."
    elif left:
        verdict = (
            f"the budget of {b['hours']:g} h is judged when every chapter is measured."
        )
    else:
        verdict = f"within the budget of {b['hours']:g} h on training alone."
    so_far = f" (chapters measured so far; {left} not yet)" if left else ""
    line = (
        f"`{profile}` from an empty cache: {fmt(total)} of recorded training at one "
        f"thread{so_far}, so at least {fmt(floor)} of wall clock with "
        f"{b['workers']} workers on {b['workers']} cores, before the notebooks' own "
        f"work: {verdict}"
    )
    if repeats:
        line += (
            f" Of the training, {fmt(repeats)} ({100 * repeats / total:.0f}%) are "
            "repeat seeds (the runs after seed 0 of each setting)."
        )
    return line


def table(path: Path) -> str:
    data = json.loads(path.read_text()) if path.exists() else {}
    trained = [p for p in PROFILES if "training" in data.get(p, {})]
    head = ["chapter", *(f"`{p}`" for p in PROFILES)]
    head += [f"`{p}` training from an empty cache (runs)" for p in trained]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for stem in chapters():
        cells = [fmt(data.get(p, {}).get("seconds", {}).get(stem)) for p in PROFILES]
        for p in trained:
            t = data[p]["training"].get(stem)
            cells.append(
                f"{fmt(t['seconds'])} ({t['runs']})" if t else "not measured yet"
            )
        rows.append(f"| {stem} | " + " | ".join(cells) + " |")
    notes = []
    for p in trained:
        total = sum(t["seconds"] for t in data[p]["training"].values())
        n = sum(t["runs"] for t in data[p]["training"].values())
        cells = [""] * len(PROFILES)
        cells += [f"{fmt(total)} ({n})" if q == p else "" for q in trained]
        rows.append("| all chapters measured | " + " | ".join(cells) + " |")
        if p in BUDGET:
            left = [s for s in chapters() if s not in data[p]["training"]]
            repeats = [t.get("repeats") for t in data[p]["training"].values()]
            known = None if None in repeats else sum(repeats)
            notes.append(budget_line(p, total, len(left), known))
    for p in PROFILES:
        if p in data:
            d = data[p]
            apart = d.get("apart", {})
            others = " (the chapters not listed below)" if apart else ""
            notes.append(
                f"`{p}`{others}: measured on {d['cpu']}, {d['date']}, "
                f"commit {d['commit']}, {d['cache']}."
            )
            for stem, a in apart.items():
                notes.append(
                    f"`{p}`, {stem}: measured apart on {a['cpu']}, {a['date']}, "
                    f"commit {a['commit']}, {a['cache']}."
                )
        else:
            notes.append(f"`{p}`: not measured yet for this version of the book.")
    return "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def weeks(path: Path, course: Path) -> str:
    """Per week of the course map: its chapters and their summed times."""
    data = json.loads(path.read_text()) if path.exists() else {}
    sections = re.split(r"^## ", course.read_text(), flags=re.M)[1:]
    rows = ["| week | chapters | `smoke` | `quick` |", "|---|---|---|---|"]
    for section in sections:
        title = section.split("\n", 1)[0].strip()
        if not title.startswith("Week"):
            continue
        stems = list(dict.fromkeys(re.findall(r"\.\./notebooks/(\w+)\.ipynb", section)))
        if not stems:
            sys.exit(f"{course}: section {title!r} links no chapter")
        unknown = sorted(set(stems) - set(chapters()))
        if unknown:
            sys.exit(f"{course}: section {title!r} links unknown chapters {unknown}")
        cells = []
        for p in PROFILES:
            times = [data.get(p, {}).get("seconds", {}).get(s) for s in stems]
            training = data.get(p, {}).get("training", {})
            missing = [s for s, t in zip(stems, times, strict=True) if t is None]
            if not missing:
                cells.append(fmt(sum(times)))
            elif all(s in training for s in missing):
                # No wall clock for some chapter, but its runs' training is
                # recorded: a lower bound, labelled as one.
                low = sum(t for t in times if t is not None)
                low += sum(training[s]["seconds"] for s in missing)
                which = ", ".join(s[:2].lstrip("0") for s in missing)
                cells.append(f"at least {fmt(low)} (chapter {which}: training only)")
            else:
                cells.append(fmt(None))
        numbers = ", ".join(s[:2].lstrip("0") for s in stems)
        rows.append(f"| {title.split(':')[0]} | {numbers} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows) + "\n"


def order(path: Path, profile: str, notebooks: list[str]) -> list[str]:
    data = json.loads(path.read_text()) if path.exists() else {}
    seconds = data.get(profile, {}).get("seconds", {})
    # Unmeasured first (inf), then by time, longest first; stable.
    return sorted(notebooks, key=lambda nb: -seconds.get(Path(nb).stem, float("inf")))


_RUN_LINE = re.compile(r"^\[(?:train|cache|wait|done)\] ([^\s:]+)", re.M)
# A run's name ends in its seed: -s0 is the first, -s1, -s2, ... repeat it.
_REPEAT_SEED = re.compile(r"-s[1-9][0-9]*$")


def run_names(notebook: str | Path) -> list[str]:
    """The runs an executed notebook used, in order of first mention, from the
    lines the run cache prints (its stream outputs)."""
    nb = json.loads(Path(notebook).read_text())
    text = "".join(
        "".join(o.get("text", ""))
        for c in nb["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "stream"
    )
    return list(dict.fromkeys(_RUN_LINE.findall(text)))


def recorded_seconds(cache: Path, name: str, every_key: bool = False) -> float | None:
    """The training time recorded by the run ``name`` in the run cache (a
    classification run's ``final.train_seconds``, another kind's ``seconds``);
    None if no finished run of that name is there. Runs of one name under
    several keys: the newest record, or with ``every_key`` their sum (right
    for a cache that started empty, where every key was trained once, e.g. a
    teacher trained again for fewer epochs in an exercise: its name does not
    say so)."""
    pattern = re.compile(re.escape(name) + r"-[0-9a-f]{6,}")
    found = [
        d / "result.json"
        for d in cache.glob(f"*/{glob_escape(name)}-*")
        if pattern.fullmatch(d.name) and (d / "result.json").is_file()
    ]
    if not found:
        return None

    def seconds(f: Path) -> float:
        rec = json.loads(f.read_text())
        return float(
            (rec.get("final") or {}).get("train_seconds") or rec.get("seconds") or 0
        )

    if every_key:
        return sum(seconds(f) for f in found)
    return seconds(max(found, key=lambda f: f.stat().st_mtime))


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def runs(
    cache: Path, notebooks: list[str], every_key: bool = False
) -> tuple[str, dict]:
    """Per chapter: the runs used, those it is the first to use, and their
    recorded training time (``every_key``: see :func:`recorded_seconds`); a
    Markdown table and the same as a dict."""
    seen: set[str] = set()
    out: dict[str, dict] = {}
    rows = [
        "| chapter | runs used | first used here | their recorded training | "
        "of which repeat seeds | not in the cache |",
        "|---|---|---|---|---|---|",
    ]
    for nb in notebooks:
        names = run_names(nb)
        first = [n for n in names if n not in seen]
        seen.update(names)
        secs = {n: recorded_seconds(cache, n, every_key) for n in first}
        missing = sorted(n for n, s in secs.items() if s is None)
        total = sum(s for s in secs.values() if s is not None)
        repeats = sum(
            s for n, s in secs.items() if s is not None and _REPEAT_SEED.search(n)
        )
        out[Path(nb).stem] = dict(
            used=len(names),
            first=len(first),
            seconds=round(total, 1),
            repeats=round(repeats, 1),
            missing=missing,
        )
        rows.append(
            f"| {Path(nb).stem} | {len(names)} | {len(first)} | {fmt(total)} | "
            f"{fmt(repeats)} | {len(missing) or ''} |"
        )
    total = sum(d["seconds"] for d in out.values())
    repeats = sum(d["repeats"] for d in out.values())
    rows.append(f"| all | {len(seen)} distinct | | {fmt(total)} | {fmt(repeats)} | |")
    return "\n".join(rows) + "\n", out


def main(argv: list[str]) -> None:
    if len(argv) >= 2 and argv[0] == "record":
        opts, rest = {}, argv[2:]
        add = False
        while rest and rest[0] in ("--how", "--cache", "--add"):
            if rest[0] == "--add":
                add, rest = True, rest[1:]
                continue
            if len(rest) < 2:
                sys.exit(__doc__)
            opts[rest[0][2:]] = rest[1]
            rest = rest[2:]
        cache = Path(opts["cache"]) if "cache" in opts else None
        record(Path(argv[1]), rest, opts.get("how", HOW), cache, add)
    elif len(argv) == 2 and argv[0] == "table":
        print(table(Path(argv[1])), end="")
    elif len(argv) >= 3 and argv[0] == "order":
        print(" ".join(order(Path(argv[1]), argv[2], argv[3:])))
    elif len(argv) == 3 and argv[0] == "weeks":
        print(weeks(Path(argv[1]), Path(argv[2])), end="")
    elif len(argv) >= 3 and argv[0] == "runs":
        print(runs(Path(argv[1]), argv[2:])[0], end="")
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
