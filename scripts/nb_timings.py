"""Print how long papermill took for each executed notebook.

Usage: python scripts/nb_timings.py EXECUTED.ipynb ...

Reads the `papermill` metadata that papermill stores in every notebook it runs,
so notebooks that were not re-executed this time still report their last run.
"""

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    if not paths:
        return
    rows = []
    for path in paths:
        meta = json.loads(Path(path).read_text())["metadata"].get("papermill", {})
        params = meta.get("parameters", {})
        rows.append(
            (
                Path(path).name,
                str(params.get("profile", "?")),
                f"{meta.get('duration') or 0.0:8.1f} s",
                str(meta.get("end_time") or "?")[:19],
            )
        )
    print(f"{'notebook':<40} {'profile':<8} {'duration':>10}  finished (UTC)")
    for name, profile, duration, end in rows:
        print(f"{name:<40} {profile:<8} {duration:>10}  {end}")


if __name__ == "__main__":
    main(sys.argv[1:])
