"""scripts/chapter_times.py: the order `make book` starts the chapters in."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import chapter_times  # noqa: E402


def test_longest_first_and_unmeasured_before_all(tmp_path):
    f = tmp_path / "times.json"
    f.write_text(
        json.dumps({"quick": {"seconds": {"01_a": 100.0, "02_b": 900.0, "03_c": 50.0}}})
    )
    nbs = [
        "x/01_a.ipynb",
        "x/02_b.ipynb",
        "x/03_c.ipynb",
        "x/04_d.ipynb",
        "x/05_e.ipynb",
    ]
    assert chapter_times.order(f, "quick", nbs) == [
        "x/04_d.ipynb",
        "x/05_e.ipynb",
        "x/02_b.ipynb",
        "x/01_a.ipynb",
        "x/03_c.ipynb",
    ]
    # No record of the profile, or no file: the order given.
    assert chapter_times.order(f, "smoke", nbs) == nbs
    assert chapter_times.order(tmp_path / "none.json", "quick", nbs) == nbs
