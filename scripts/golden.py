"""Write or check the golden fingerprints (``tests/golden_fingerprints.json``).

    python scripts/golden.py             # check every method, print what moved
    python scripts/golden.py --write     # rewrite every method's fingerprint
    python scripts/golden.py --write kd  # rewrite one (after bumping KD.version)

See ``kdutils/fingerprint.py`` for what a fingerprint is and why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import kdutils as kd
from kdutils.fingerprint import compare, fingerprint

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden_fingerprints.json"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="store the fingerprints")
    p.add_argument("methods", nargs="*", help="default: every registered method")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    unknown = [m for m in args.methods if m not in kd.METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}")
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    bad = 0
    for m in args.methods or sorted(kd.METHODS):
        now = fingerprint(m)
        if args.write:
            stored[m] = now
            print(f"{m}: written (core {now['core']}, version {now['version']})")
        elif m not in stored:
            print(f"{m}: no stored fingerprint")
            bad += 1
        elif (why := compare(m, stored[m], now)) is not None:
            print(why)
            bad += 1
        else:
            print(f"{m}: as stored")
    if args.write:
        text = json.dumps(dict(sorted(stored.items())), indent=1, sort_keys=True)
        GOLDEN.write_text(text + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
