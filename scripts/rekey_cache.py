"""Carry cached runs over a code change that does not change what a run computes.

A run's cache key hashes its config and the sources it was trained with (see
``kdutils.train.run_key``), so any edit of ``train.py`` retires every cached
run, even an edit that only adds a hook the old runs never used. When such an
edit is *verified* not to change any run (re-train a few runs with the new
code and compare their histories and weights bit for bit), this script moves
the old runs to their new keys instead of training them again:

    python scripts/rekey_cache.py --from <commit> --same FILE [FILE ...] [--apply]

``--from`` is the commit the runs were trained with; ``--same`` lists the
changed files whose change is verified to leave every run as it was. A run is
moved only if

* its key is reproduced exactly from its config and the ``--from`` sources
  (so it really is a run of that commit), and
* every other source file of its method is identical at ``--from`` and now.

Each moved run keeps its result and weights; its ``result.json`` gets the new
key and a ``rekeyed`` record (old key, old code hash, commit, date, the files
named by ``--same``), next to the untouched provenance of its training.
Dependent runs (``teacher_runs`` naming moved folders) are rewritten to the
new names, and every run's ``teacher`` record (the key of the run that taught
it) that names a moved run's old key is pointed at its new key, the old one
kept as ``key_before_rekey``. Without ``--apply`` it only prints what it would
do. ``--relink-only`` does that last step alone, from the ``rekeyed`` records
already in the cache (for runs moved before the step existed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from kdutils import train as ktrain
from kdutils.config import Config
from kdutils.distillers import METHODS
from kdutils.results import atomic_write_bytes


def _git_show(commit: str, rel: str) -> bytes | None:
    out = subprocess.run(
        ["git", "show", f"{commit}:kdutils/{rel}"],
        capture_output=True,
        cwd=Path(ktrain.__file__).resolve().parents[1],
    )
    return out.stdout if out.returncode == 0 else None


def _old_code_hash(commit: str, method: str, cache: dict) -> str | None:
    files = sorted({*ktrain._CORE_SOURCES, *ktrain.method_sources(method)})
    h = hashlib.sha256()
    for rel in files:
        if rel not in cache:
            cache[rel] = _git_show(commit, rel)
        if cache[rel] is None:
            return None
        h.update(rel.encode())
        h.update(cache[rel])
    return h.hexdigest()[:16]


def _key(cfg_json: str, code: str, channels_last: bool, amp: str | None) -> str:
    text = (
        cfg_json
        + code
        + ("nhwc" if channels_last else "nchw")
        + ("" if amp is None else f"amp-{amp}")
    )
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _write(folder: Path, d: dict) -> None:
    text = json.dumps(d, indent=1, sort_keys=True)
    atomic_write_bytes(folder / "result.json", text.encode())


def relink_teachers(runs: Path, apply: bool) -> int:
    """Point ``teacher`` records at the new keys of moved runs; the count."""
    folders = [p for p in runs.iterdir() if (p / "result.json").exists()]
    docs = {p: json.loads((p / "result.json").read_text()) for p in folders}
    new_key = {
        d["rekeyed"]["from_key"]: d["key"] for d in docs.values() if d.get("rekeyed")
    }
    n = 0
    for folder, d in docs.items():
        t = d.get("teacher")
        records = t if isinstance(t, list) else [t] if isinstance(t, dict) else []
        stale = [r for r in records if r.get("key") in new_key]
        if not stale:
            continue
        for r in stale:
            print(
                f"[relink] {folder.name}: teacher {r['name']} {r['key']} -> "
                f"{new_key[r['key']]}"
            )
            r["key_before_rekey"], r["key"] = r["key"], new_key[r["key"]]
        n += 1
        if apply:
            _write(folder, d)
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--from", dest="commit")
    ap.add_argument("--same", nargs="+", metavar="FILE")
    ap.add_argument("--apply", action="store_true")
    ap.add_argument("--relink-only", action="store_true")
    args = ap.parse_args(argv)
    runs = ktrain.cache_dir() / "runs"
    if args.relink_only:
        n = relink_teachers(runs, args.apply)
        print(f"{n} runs {'relinked' if args.apply else 'to relink'}")
        return 0
    if not args.commit or not args.same:
        ap.error("--from and --same are required (or give --relink-only)")
    same = {str(Path(f).as_posix()).removeprefix("kdutils/") for f in args.same}
    old_src: dict[str, bytes | None] = {}
    renamed: dict[str, str] = {}
    moved = skipped = 0
    # Runs without teacher_runs first, so their dependants see the new names.
    folders = sorted(
        (p for p in runs.iterdir() if (p / "result.json").exists()),
        key=lambda p: bool(
            json.loads((p / "result.json").read_text())["config"].get("teacher_runs")
        ),
    )
    for folder in folders:
        d = json.loads((folder / "result.json").read_text())
        method = d["config"]["method"]
        if method not in METHODS:
            skipped += 1
            continue
        old_cfg = Config.from_dict(d["config"])
        prov = d["provenance"]
        cl, amp = prov.get("channels_last", True), prov.get("amp")
        old_code = _old_code_hash(args.commit, method, old_src)
        if old_code is None or _key(old_cfg.key_json(), old_code, cl, amp) != d["key"]:
            skipped += 1  # trained with other code than --from: leave it
            continue
        changed = [
            rel
            for rel in sorted({*ktrain._CORE_SOURCES, *ktrain.method_sources(method)})
            if rel not in same and old_src[rel] != (ktrain._PKG / rel).read_bytes()
        ]
        if changed:
            print(f"[keep] {folder.name}: {', '.join(changed)} changed")
            skipped += 1
            continue
        runs_map = tuple(
            renamed.get(r.partition("@e")[0], r.partition("@e")[0])
            + r.partition("@e")[1]
            + r.partition("@e")[2]
            for r in old_cfg.teacher_runs
        )
        new_cfg = old_cfg.replace(teacher_runs=runs_map)
        new_key = ktrain.run_key(new_cfg, cl, amp)
        new_folder = runs / f"{new_cfg.name}-{new_key}"
        if new_folder.exists():
            print(f"[exists] {new_folder.name}: already there, {folder.name} left")
            skipped += 1
            continue
        print(f"[move] {folder.name} -> {new_folder.name}")
        renamed[folder.name] = new_folder.name
        moved += 1
        if not args.apply:
            continue
        d["rekeyed"] = {
            "from_key": d["key"],
            "from_code_hash": prov.get("code_hash"),
            "from_commit": args.commit,
            "files_verified_unchanged_in_effect": sorted(same),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        d["key"] = new_key
        d["config"] = new_cfg.to_dict()
        d["name"] = new_cfg.name
        _write(folder, d)
        folder.rename(new_folder)
    print(f"{moved} runs {'moved' if args.apply else 'to move'}, {skipped} left")
    if args.apply:
        print(f"{relink_teachers(runs, True)} runs' teacher records relinked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
