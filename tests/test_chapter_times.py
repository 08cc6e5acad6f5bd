"""scripts/chapter_times.py: the order `make book` starts the chapters in."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

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


def _notebook(path, *lines):
    out = {
        "output_type": "stream",
        "name": "stdout",
        "text": [ln + "\n" for ln in lines],
    }
    cell = {"cell_type": "code", "source": [], "outputs": [out]}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}}))
    return str(path)


def _record(cache, kind, folder, record):
    d = cache / kind / folder
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(record))


def test_runs_counts_each_shared_run_once_in_the_first_chapter(tmp_path):
    cache = tmp_path / "cache"
    _record(cache, "runs", "ce-a-s0-0123456789ab", {"final": {"train_seconds": 100.0}})
    _record(cache, "runs", "ce-a-s1-0123456789ab", {"final": {"train_seconds": 7.0}})
    # a name that only starts with another run's name is another run
    _record(cache, "runs", "ce-a-s10-0123456789ab", {"final": {"train_seconds": 1e6}})
    _record(cache, "face", "face-none-s0-abcdef012345", {"seconds": 30.0})
    one = _notebook(
        tmp_path / "01_a.ipynb",
        "[train] ce-a-s0: 8 epochs on 100 images (cpu)",
        "[done] ce-a-s0: test acc 80.00% in 100.0 s",
        "[cache] ce-a-s0: logits on the training set (loaded)",
    )
    two = _notebook(
        tmp_path / "02_b.ipynb",
        "[cache] ce-a-s0: test acc 80.00% (loaded, not trained)",
        "[wait] ce-a-s1 is being trained by process 1 on vm; waiting for it",
        "[cache] face-none-s0: clean acc 80% (loaded, not trained)",
        "[train] ce-missing-s0: 8 epochs",
    )
    text, per = chapter_times.runs(cache, [one, two])
    assert per["01_a"] == dict(used=1, first=1, seconds=100.0, repeats=0.0, missing=[])
    # ce-a-s1 repeats ce-a-s0 with another seed: its 7 s are repeat seeds
    assert per["02_b"] == dict(
        used=4, first=3, seconds=37.0, repeats=7.0, missing=["ce-missing-s0"]
    )
    assert "| all | 4 distinct | | 2 min | 7 s | |" in text
    # the order of the notebooks decides which chapter a shared run counts in
    _, per = chapter_times.runs(cache, [two, one])
    assert per["02_b"]["seconds"] == 137.0 and per["01_a"]["seconds"] == 0.0


def test_record_with_cache_stores_the_training_from_nothing_and_the_table_shows_it(
    tmp_path,
):
    cache = tmp_path / "cache"
    _record(cache, "runs", "ce-a-s0-0123456789ab", {"final": {"train_seconds": 100.0}})
    _record(cache, "runs", "ce-b-s0-0123456789ab", {"final": {"train_seconds": 10.0}})
    _record(cache, "runs", "ce-b-s1-0123456789ab", {"final": {"train_seconds": 8.0}})
    stems = chapter_times.chapters()[:2]
    nbs = []
    for stem, lines in zip(
        stems,
        (
            ["[train] ce-a-s0: 8 epochs"],
            ["[cache] ce-a-s0: x", "[train] ce-b-s0: y", "[train] ce-b-s1: y"],
        ),
        strict=True,
    ):
        f = Path(_notebook(tmp_path / f"{stem}.ipynb", *lines))
        nb = json.loads(f.read_text())
        nb["metadata"]["papermill"] = {
            "duration": 90.0,
            "parameters": {"profile": "quick"},
        }
        f.write_text(json.dumps(nb))
        nbs.append(str(f))
    out = tmp_path / "times.json"
    # given out of the book's order: the first chapter still owns the shared run
    chapter_times.record(out, nbs[::-1], "side by side", cache)
    d = json.loads(out.read_text())["quick"]
    assert d["training"] == {
        stems[0]: {"seconds": 100.0, "runs": 1, "repeats": 0.0},
        stems[1]: {"seconds": 18.0, "runs": 2, "repeats": 8.0},
    }
    text = chapter_times.table(out)
    assert "training from an empty cache" in text
    assert f"| {stems[0]} | not measured yet | 90 s | 100 s (1) |" in text
    assert "| all chapters measured |  |  | 118 s (3) |" in text
    # the budget line: 118 s over two workers, far inside 2 h, and says what is
    # missing and how much of the training repeats a seed
    left = len(chapter_times.chapters()) - 2
    assert (
        "`quick` from an empty cache: 118 s of recorded training at one thread "
        f"(chapters measured so far; {left} not yet), so at least 59 s of wall clock "
        "with 2 workers on 2 cores, before the notebooks' own work: the budget of "
        "2 h is judged when every chapter is measured. Of the training, 8 s (7%) "
        "are repeat seeds (the runs after seed 0 of each setting)." in text
    )


def test_budget_line_says_by_how_much_the_book_is_over(tmp_path):
    stems = chapter_times.chapters()
    out = tmp_path / "times.json"
    training = {s: {"seconds": 1800.0, "runs": 3} for s in stems}
    out.write_text(
        json.dumps(
            {
                "quick": {
                    "cpu": "c",
                    "date": "d",
                    "commit": "x",
                    "cache": "h",
                    "seconds": {},
                    "training": training,
                }
            }
        )
    )
    text = chapter_times.table(out)
    total = 1800.0 * len(stems)
    want_over = total / 2 - 7200
    assert f"by at least {chapter_times.fmt(want_over)}." in text
    assert "not yet" not in text
    # every chapter measured and inside: the verdict says so
    for t in training.values():
        t["seconds"] = 60.0
    d = json.loads(out.read_text())
    d["quick"]["training"] = training
    out.write_text(json.dumps(d))
    assert "within the budget of 2 h on training alone." in chapter_times.table(out)


def test_a_name_trained_under_two_keys_counts_both_only_from_an_empty_cache(tmp_path):
    # a teacher trained again for fewer epochs in an exercise keeps its name
    cache = tmp_path / "cache"
    _record(cache, "runs", "ce-t-s0-0123456789ab", {"final": {"train_seconds": 300.0}})
    _record(cache, "runs", "ce-t-s0-ba9876543210", {"final": {"train_seconds": 100.0}})
    newest = cache / "runs" / "ce-t-s0-ba9876543210" / "result.json"
    os.utime(newest, (2e9, 2e9))
    assert chapter_times.recorded_seconds(cache, "ce-t-s0") == 100.0
    assert chapter_times.recorded_seconds(cache, "ce-t-s0", every_key=True) == 400.0
    nb = _notebook(tmp_path / "01_a.ipynb", "[train] ce-t-s0: 8 epochs")
    assert chapter_times.runs(cache, [nb])[1]["01_a"]["seconds"] == 100.0
    assert (
        chapter_times.runs(cache, [nb], every_key=True)[1]["01_a"]["seconds"] == 400.0
    )


def test_weeks_sum_wall_clock_and_bound_a_week_missing_one_from_its_training(
    tmp_path,
):
    stems = chapter_times.chapters()[:3]
    course = tmp_path / "course.md"
    course.write_text(
        "# Course\n\n## Week 1: one\n\n[a](../notebooks/{}.ipynb)\n\n"
        "## Week 2: two\n\n[b](../notebooks/{}.ipynb), [c](../notebooks/{}.ipynb)\n"
        "\n## Chapter times\n".format(*stems)
    )
    out = tmp_path / "times.json"
    quick = {
        "seconds": {stems[0]: 600.0, stems[1]: 300.0},
        "training": {stems[2]: {"seconds": 1200.0, "runs": 4}},
    }
    out.write_text(json.dumps({"smoke": {"seconds": {}}, "quick": quick}))
    text = chapter_times.weeks(out, course)
    n = [s[:2].lstrip("0") for s in stems]
    assert f"| Week 1 | {n[0]} | not measured yet | 10 min |" in text
    # 300 s of wall clock + 1200 s of training: a bound, and labelled one
    assert (
        f"| Week 2 | {n[1]}, {n[2]} | not measured yet | at least 25 min "
        f"(chapter {n[2]}: training only) |" in text
    )
    # Without the training record either, nothing is claimed.
    del quick["training"]
    out.write_text(json.dumps({"quick": quick}))
    assert f"| Week 2 | {n[1]}, {n[2]} | not measured yet | not measured yet |" in (
        chapter_times.weeks(out, course)
    )


def test_add_keeps_the_profile_and_notes_the_chapter_measured_apart(tmp_path):
    stems = chapter_times.chapters()[:2]
    out = tmp_path / "times.json"
    out.write_text(
        json.dumps(
            {
                "quick": {
                    "cpu": "cpu A",
                    "date": "d",
                    "commit": "x",
                    "cache": "from nothing",
                    "seconds": {stems[0]: 600.0},
                    "training": {stems[0]: {"seconds": 500.0, "runs": 2}},
                }
            }
        )
    )
    f = Path(_notebook(tmp_path / f"{stems[1]}.ipynb", "[cache] ce-a-s0: x"))
    nb = json.loads(f.read_text())
    nb["metadata"]["papermill"] = {"duration": 42.0, "parameters": {"profile": "quick"}}
    f.write_text(json.dumps(nb))
    chapter_times.record(out, [str(f)], "replaying committed runs", add=True)
    d = json.loads(out.read_text())["quick"]
    # the first chapter's wall clock, training and provenance are kept
    assert d["seconds"] == {stems[0]: 600.0, stems[1]: 42.0}
    assert d["training"] == {stems[0]: {"seconds": 500.0, "runs": 2}}
    assert d["cpu"] == "cpu A" and d["cache"] == "from nothing"
    assert d["apart"][stems[1]]["cache"] == "replaying committed runs"
    text = chapter_times.table(out)
    assert "`quick` (the chapters not listed below): measured on cpu A" in text
    assert f"`quick`, {stems[1]}: measured apart on " in text
    assert "replaying committed runs." in text
    # with a cache that started empty for it, the chapter's training too
    cache = tmp_path / "cache"
    _record(cache, "runs", "ce-a-s0-0123456789ab", {"final": {"train_seconds": 7.0}})
    chapter_times.record(out, [str(f)], "replaying", cache=cache, add=True)
    d = json.loads(out.read_text())["quick"]
    assert d["training"][stems[1]] == {"seconds": 7.0, "runs": 1, "repeats": 0.0}
    assert d["training"][stems[0]] == {"seconds": 500.0, "runs": 2}
    # --add needs an entry to add to
    with pytest.raises(SystemExit):
        chapter_times.record(tmp_path / "none.json", [str(f)], "h", add=True)
