"""Table-1 reproduction: rows, resuming, the aggregated table, the conclusions, Ray."""

from __future__ import annotations

import json
import math

import pytest

import kdutils as kd
from kdutils import reproduce as rep
from kdutils import train as ktrain
from kdutils.cli import main

# Tiny runs: scikit-learn's digits, resnet8 teacher and student, 2 epochs.
DIGITS = dict(
    dataset="digits",
    epochs=2,
    train_subset=300,
    test_subset=200,
    teacher="resnet8",
    student="resnet8",
)


def test_table1_rows_follow_the_survey_file():
    rows = rep.table1_rows()
    assert [r.row for r in rows] == [r["row"] for r in kd.survey_table1()]
    assert len(rows) == 16
    assert {"ce", "kd"} <= {r.method for r in rows if r.available}


def test_the_teacher_row_seed0_is_the_run_that_teaches_students():
    rows = {r.row: r for r in rep.table1_rows()}
    teacher_row = rows["ResNet56"].config("quick", 0)
    student = rows["KD"].config("quick", 0)
    assert teacher_row == kd.teacher_config(student)
    assert rows["ResNet56"].config("quick", 2).seed == 2
    assert rows["ResNet20"].config("quick", 1).method == "ce"


def test_reproduce_writes_runs_table_and_conclusions(tmp_path, capsys):
    out = rep.reproduce(
        "smoke",
        [0, 1],
        out=tmp_path / "t1",
        rows=["ResNet56", "ResNet20", "KD"],
        overrides=DIGITS,
    )
    printed = capsys.readouterr().out
    runs = sorted(p.name for p in (tmp_path / "t1" / "runs").iterdir())
    assert runs == [
        "kd-s0.json",
        "kd-s1.json",
        "resnet20-s0.json",
        "resnet20-s1.json",
        "resnet56-s0.json",
        "resnet56-s1.json",
    ]
    # One progress line per finished run, with an ETA while runs remain.
    assert printed.count("[") >= 6 and "ETA" in printed and "[6/6] KD s1" in printed
    table = {t["row"]: t for t in out["table"]}
    assert len(table["KD"]["accs"]) == 2
    saved = json.loads((tmp_path / "t1" / "runs" / "kd-s1.json").read_text())
    assert (
        saved["provenance"]["git_commit"] is not None or "date" in saved["provenance"]
    )
    assert saved["config"]["seed"] == 1
    assert table["KD"]["mean"] == pytest.approx(
        (table["KD"]["accs"][0] + table["KD"]["accs"][1]) / 2
    )
    md = (tmp_path / "t1" / "table.md").read_text()
    assert "| traditional | KD | resnet8 |" in md and "92.43" in md
    assert "every KD method beats the student alone" in md
    c = json.loads((tmp_path / "t1" / "conclusions.json").read_text())
    assert c["every_method_beats_student"]["holds"] in (True, False)
    assert c["online_best"]["holds"] is None  # no online rows were run


def test_reproduce_resumes_without_training_again(tmp_path, capsys, monkeypatch):
    args = dict(out=tmp_path / "t1", rows=["ResNet20", "KD"], overrides=DIGITS)
    calls = {"n": 0}
    real_run = ktrain.run

    def interrupted_run(cfg, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second run
        return real_run(cfg, **kw)

    monkeypatch.setattr(ktrain, "run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        rep.reproduce("smoke", [0, 1], **args)
    assert [p.name for p in (tmp_path / "t1" / "runs").iterdir()] == [
        "resnet20-s0.json"
    ]
    monkeypatch.setattr(ktrain, "run", real_run)
    capsys.readouterr()
    first = rep.reproduce("smoke", [0, 1], **args)
    printed = capsys.readouterr().out
    assert "[resume] 1 of 4 runs already done" in printed
    # The finished run is loaded, not repeated: numbering goes on from 2.
    assert "[1/4]" not in printed and "[2/4] ResNet20 s1" in printed
    capsys.readouterr()
    again = rep.reproduce("smoke", [0, 1], **args)
    assert "[resume] 4 of 4 runs already done" in capsys.readouterr().out
    assert again["table"] == first["table"]


def test_rows_whose_method_is_missing_are_listed_not_filled(tmp_path, monkeypatch):
    monkeypatch.delitem(kd.METHODS, "kd")
    out = rep.reproduce(
        "smoke", [0], out=tmp_path / "t1", rows=["ResNet20", "KD"], overrides=DIGITS
    )
    assert out["missing"] == ["KD"]
    kd_row = next(t for t in out["table"] if t["row"] == "KD")
    assert kd_row["accs"] == [] and math.isnan(kd_row["mean"])
    assert "Rows not in this version of kdutils: KD." in (
        (tmp_path / "t1" / "table.md").read_text()
    )


def test_bad_rows_and_executors_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown Table-1 row"):
        rep.reproduce("smoke", [0], out=tmp_path, rows=["ResNet21"])
    with pytest.raises(ValueError, match="unknown executor"):
        rep.reproduce("smoke", [0], out=tmp_path, executor="slurm")
    with pytest.raises(ValueError, match="at least one seed"):
        rep.reproduce("smoke", [], out=tmp_path)


def test_cli_reproduce_rejects_bad_input_in_one_line(capsys):
    assert main(["reproduce", "--rows", "ResNet21", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown Table-1 row" in err
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--executor", "slurm"])
    assert info.value.code == 2


# The conclusions, on tables with known answers


def _row(family, row, accs):
    return {"family": family, "row": row, "accs": accs, "mean": sum(accs) / len(accs)}


def test_conclusions_hold_on_a_table_that_has_them():
    table = [
        _row("direct training", "ResNet56", [95.0, 95.1, 94.9]),
        _row("direct training", "ResNet20", [90.0, 90.1, 89.9]),
        _row("knowledge from feature maps", "AT", [91.0, 91.1, 90.9]),
        _row("structural", "RKD", [92.0, 92.1, 91.9]),
        _row("online", "DML", [93.0, 93.1, 92.9]),
    ]
    c = rep.check_conclusions(table)
    assert c["every_method_beats_student"]["holds"] is True
    assert c["online_best"]["holds"] is True and c["online_best"]["best_row"] == "DML"
    assert c["structural_beats_feature"]["holds"] is True


def test_conclusions_fail_when_the_data_say_otherwise():
    table = [
        _row("direct training", "ResNet56", [91.5, 91.6, 91.4]),
        _row("direct training", "ResNet20", [90.0, 90.5, 89.5]),
        _row("knowledge from feature maps", "AT", [92.0, 92.1, 91.9]),  # > teacher
        _row("structural", "RKD", [90.1, 90.6, 89.6]),  # not above the student
        _row("online", "DML", [90.2, 90.3, 90.1]),
    ]
    c = rep.check_conclusions(table)
    assert c["every_method_beats_student"]["holds"] is False
    assert c["every_method_beats_student"]["reach_teacher"] == ["AT"]
    assert c["online_best"]["holds"] is False
    assert c["structural_beats_feature"]["holds"] is False


def test_welch_p_value_matches_scipy_formula():
    import numpy as np
    from scipy import stats

    a, b = [1.0, 2.0, 3.5], [0.5, 0.7, 1.9, 1.1]
    # Welch's t and its Welch-Satterthwaite degrees of freedom, by hand.
    va, vb = np.var(a, ddof=1) / 3, np.var(b, ddof=1) / 4
    t = (np.mean(a) - np.mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)
    assert rep._welch_greater(a, b) == pytest.approx(stats.t.sf(t, df))
    assert math.isnan(rep._welch_greater([1.0], [2.0, 3.0]))


# Ray: a local instance on the CPU, workers with their own cache


def test_ray_executor_gives_the_local_results(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    rows = ["ResNet20", "KD"]
    local = rep.reproduce(
        "smoke", [0], out=tmp_path / "local", rows=rows, overrides=DIGITS
    )
    worker_cache = tmp_path / "worker-cache"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"KD_CACHE_DIR": str(worker_cache)}},
    )
    try:
        # A driver cache with nothing in it: everything must come from the workers.
        monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "driver-cache"))
        remote = rep.reproduce(
            "smoke",
            [0],
            out=tmp_path / "ray",
            rows=rows,
            overrides=DIGITS,
            executor="ray",
        )
    finally:
        ray.shutdown()
    assert [t["accs"] for t in remote["table"]] == [t["accs"] for t in local["table"]]
    assert (worker_cache / "runs").is_dir()
    assert not (tmp_path / "driver-cache").exists()
    assert sorted(p.name for p in (tmp_path / "ray" / "runs").iterdir()) == [
        "kd-s0.json",
        "resnet20-s0.json",
    ]


def test_online_rows_train_without_a_teacher_and_with_three_students():
    rows = {r.row: r for r in rep.table1_rows()}
    for name in ("DML", "ONE", "OKDDip"):
        cfg = rows[name].config("smoke", 0)
        assert cfg.teacher is None, name
        args = cfg.method_args
        assert args.get("num_peers", args.get("num_branches")) == 3, (name, args)
    assert rows["KD"].config("smoke", 0).teacher is not None
