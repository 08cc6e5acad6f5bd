"""The README's Table 1 figures are typed prose: they must match the
committed results they describe."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE1 = ROOT / "results" / "table1"


def _readme() -> str:
    # one line per paragraph, so a figure split by a line break still matches
    return re.sub(r"\s+", " ", (ROOT / "README.md").read_text())


def test_the_default_table_cost_is_the_committed_one():
    prov = json.loads((TABLE1 / "quick" / "conclusions.json").read_text())["provenance"]
    text = _readme()
    assert f"needed {prov['runs_with_stages']} runs with the pipelines' stages" in text
    assert f"{prov['train_seconds'] / 3600:.2f} h of recorded training" in text


def test_the_tuned_table_cost_is_the_committed_one():
    search = json.loads((TABLE1 / "quick-tuned" / "tuning.json").read_text())
    text = _readme()
    assert (
        f"a search of {search['search_runs']} runs of its own and "
        f"{search['train_seconds'] / 3600:.2f} h" in text
    )
    # the tuned rows' own runs: those that recorded their CPU (the reused
    # default runs predate that record)
    runs = [
        json.loads(p.read_text())
        for p in sorted((TABLE1 / "quick-tuned" / "runs").glob("*.json"))
    ]
    new = [r for r in runs if r["provenance"].get("machine")]
    hours = sum(r["final"]["train_seconds"] for r in new) / 3600
    assert f"then {len(new)} new runs and {hours:.2f} h" in text
    assert f"({len(runs) - len(new)} runs read from the untuned table)" in text
    total = search["train_seconds"] / 3600 + hours
    assert f"{total:.2f} h of recorded training on top of the defaults" in text
