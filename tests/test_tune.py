"""reproduce --tune: each method's knob chosen on validation, never on test."""

from __future__ import annotations

import json
import math

import pytest
from tiny import DIGITS

import kdutils as kd
from kdutils import reproduce as rep
from kdutils.cli import main
from kdutils.reproduce import plan as rep_plan
from kdutils.reproduce import rows as rep_rows
from kdutils.reproduce import tune as rep_tune
from kdutils.results import Result


def test_knob_values_are_factors_of_the_default():
    k = rep_tune.Knob("w", ("w",))
    assert k.values({"w": 0.9}) == [{"w": 0.3}, {"w": 0.9}, {"w": 2.7}]
    two = rep_tune.Knob("edges", ("a", "b"), (0.5, 1.0, 2.0))
    assert two.values({"a": 0.005, "b": 0.01})[0] == {"a": 0.0025, "b": 0.005}
    ints = rep_tune.Knob("epochs", ("e",), (1.0, 2.0, 4.0), integer=True)
    assert ints.values({"e": 1}) == [{"e": 1}, {"e": 2}, {"e": 4}]
    # Equal after rounding: listed once.
    assert rep_tune.Knob("e", ("e",), (0.1, 0.2, 1.0), True).values({"e": 2}) == [
        {"e": 1},
        {"e": 2},
    ]
    with pytest.raises(ValueError, match="no default"):
        k.values({"x": 1.0})


def test_choose_takes_the_best_score_and_ties_go_to_the_default():
    k = rep_tune.Knob("w", ("w",))
    cands = k.values({"w": 1.0})
    assert rep_tune.choose(cands, [0.8, 0.7, 0.9], k, {"w": 1.0}) == {"w": 3.0}
    assert rep_tune.choose(cands, [0.9, 0.9, 0.9], k, {"w": 1.0}) == {"w": 1.0}
    assert rep_tune.choose(cands, [0.9, 0.5, 0.9], k, {"w": 1.0}) in cands[::2]
    with pytest.raises(ValueError, match="one score per candidate"):
        rep_tune.choose(cands, [0.9], k, {"w": 1.0})


def test_every_distillation_row_of_table1_is_tuned_with_real_arguments():
    for r in rep.table1_rows():
        if r.family == "direct training":
            assert not rep_tune.tunable(r)
            continue
        assert rep_tune.tunable(r), r.row
        defaults = r.config("quick", rep.TUNE_SEED).method_args
        for knob in rep.TUNING[r.method]:
            for cand in knob.values(defaults):
                # The constructor accepts every candidate (make_config checks).
                kd.make_config("quick", method=r.method, **cand)
            assert {knob.args[0]: defaults[knob.args[0]]} in [
                {knob.args[0]: c[knob.args[0]]} for c in knob.values(defaults)
            ], "the default is one of the candidates"


def _planted_run(calls: list):
    """A stand-in trainer: validation accuracy peaks at kd_weight 2.7 and T 8
    (and RKD's weight 3), while test accuracy peaks where validation is worst,
    so a choice made on test would differ from one made on validation."""

    def fake(cfg, **_):
        calls.append(cfg)
        a = cfg.method_args
        if cfg.method == "kd":
            val = 0.5 + 0.1 * math.log(a["kd_weight"]) + 0.01 * a["T"]
        elif cfg.method == "rkd":
            val = 0.5 + 0.1 * math.log(a["rkd_weight"])
        else:
            val = 0.5
        return Result(
            name=cfg.name,
            key="k",
            config=cfg.to_dict(),
            history=[{"epoch": cfg.epochs, "val_acc": val, "test_acc": 1 - val}],
            final={"test_acc": 1 - val, "val_acc": val, "train_seconds": 0.0},
            provenance={},
            path="",
        )

    return fake


def test_tune_picks_the_planted_best_and_never_reads_test(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(rep_rows, "run", _planted_run(calls))

    def no_test(self):
        raise AssertionError("the search read a test accuracy")

    for name in ("test_acc", "test_acc_at_best_val", "best_test_acc"):
        monkeypatch.setattr(Result, name, property(no_test))
    rows = [r for r in rep.table1_rows() if r.row in ("ResNet20", "KD", "RKD")]
    chosen = rep_tune.tune(rows, "smoke", tmp_path, overrides=DIGITS)
    assert chosen == {"KD": {"kd_weight": 2.7, "T": 8.0}, "RKD": {"rkd_weight": 3.0}}
    # KD: 3 weights, then the temperatures at the chosen weight, of which the
    # default (T = 4) is the first step's run, read back; RKD: 3 weights.
    assert len(calls) == 3 + 2 + 3
    kd_calls = [c.method_args for c in calls if c.method == "kd"]
    assert [(a["kd_weight"], a["T"]) for a in kd_calls] == [
        (0.3, 4.0),
        (0.9, 4.0),
        (2.7, 4.0),
        (2.7, 2.0),
        (2.7, 8.0),
    ], "T = 4 at the chosen weight is the first step's run, not run again"
    assert {c.seed for c in calls} == {rep.TUNE_SEED}
    rec = json.loads((tmp_path / "tuning.json").read_text())
    kd_steps = rec["rows"]["KD"]["steps"]
    assert [s["knob"] for s in kd_steps] == ["KD weight", "T"]
    assert [c["args"] for c in kd_steps[1]["candidates"]] == [
        {"kd_weight": 2.7, "T": 2.0},
        {"kd_weight": 2.7, "T": 4.0},
        {"kd_weight": 2.7, "T": 8.0},
    ]
    assert rec["rows"]["KD"]["changed"] == {"kd_weight": 2.7, "T": 8.0}
    assert rec["seed"] == rep.TUNE_SEED and "validation" in rec["criterion"]
    # Resumed: every candidate is read back, nothing runs again.
    calls.clear()
    assert rep_tune.tune(rows, "smoke", tmp_path, overrides=DIGITS) == chosen
    assert calls == []


def test_reproduce_tune_runs_the_chosen_settings_on_every_seed(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(rep_rows, "run", _planted_run(calls))
    out = rep.reproduce(
        "smoke",
        [0, 1],
        out=tmp_path / "t",
        rows=["ResNet20", "RKD"],
        overrides=DIGITS,
        tune=True,
    )
    assert out["tuned"] == {"RKD": {"rkd_weight": 3.0}}
    finals = [c for c in calls if c.seed in (0, 1) and c.method == "rkd"]
    assert sorted(c.seed for c in finals) == [0, 1]
    assert all(c.method_args["rkd_weight"] == 3.0 for c in finals)
    c = json.loads((tmp_path / "t" / "conclusions.json").read_text())
    assert c["settings"]["mode"] == "tuned on validation"
    assert c["settings"]["args"] == {"RKD": {"rkd_weight": 3.0}}
    assert "tuned on the validation split" in (tmp_path / "t" / "table.md").read_text()
    with pytest.raises(ValueError, match="tuning seed"):
        rep.reproduce("smoke", [0, rep.TUNE_SEED], out=tmp_path / "u", tune=True)


def test_reproduce_tune_reuses_the_untuned_runs_of_unchanged_rows(
    tmp_path, monkeypatch, capsys
):
    """A row whose search keeps its default (AT: every candidate ties) has
    the untuned table's config, so the tuned table reads that table's runs
    from the folder beside it instead of training them again; a row whose
    setting moved (RKD) trains anew."""
    calls: list = []
    monkeypatch.setattr(rep_rows, "run", _planted_run(calls))
    rows = ["ResNet20", "AT", "RKD"]
    rep.reproduce("smoke", [0, 1], out=tmp_path / "smoke", rows=rows, overrides=DIGITS)
    calls.clear()
    capsys.readouterr()
    out = rep.reproduce(
        "smoke",
        [0, 1],
        out=tmp_path / "smoke-tuned",
        rows=rows,
        overrides=DIGITS,
        tune=True,
    )
    at_default = kd.make_config("smoke", method="at").method_args["at_weight"]
    assert out["tuned"] == {"AT": {"at_weight": at_default}, "RKD": {"rkd_weight": 3.0}}
    reported = [c for c in calls if c.seed in (0, 1)]
    assert sorted((c.method, c.seed) for c in reported) == [("rkd", 0), ("rkd", 1)]
    assert "[reuse] 4 runs with the authors' settings" in capsys.readouterr().out
    for name in ("resnet20-s0", "at-s1"):
        copied = tmp_path / "smoke-tuned" / "runs" / f"{name}.json"
        assert Result.load(copied) == Result.load(
            tmp_path / "smoke" / "runs" / f"{name}.json"
        )
    # Without the untuned table beside it, every reported run trains.
    calls.clear()
    rep.reproduce(
        "smoke", [0], out=tmp_path / "x" / "t", rows=rows, overrides=DIGITS, tune=True
    )
    assert sorted(c.method for c in calls if c.seed == 0) == ["at", "ce", "rkd"]


def test_tune_needs_a_validation_split(tmp_path):
    rows = [r for r in rep.table1_rows() if r.row == "RKD"]
    with pytest.raises(ValueError, match="validation split"):
        rep_tune.tune(rows, "smoke", tmp_path, overrides=dict(DIGITS, val_fraction=0))


def test_tune_on_digits_chooses_the_best_recorded_validation(tmp_path, capsys):
    """Real runs: the choice is the argmax of the validation accuracies the
    runs recorded, and each candidate's run is kept with its record."""
    rep.reproduce(
        "smoke",
        [0],
        out=tmp_path / "t",
        rows=["ResNet20", "RKD"],
        overrides=DIGITS,
        tune=True,
    )
    rec = json.loads((tmp_path / "t" / "tuning.json").read_text())
    (step,) = rec["rows"]["RKD"]["steps"]
    vals = [c["val_acc"] for c in step["candidates"]]
    assert len(vals) == 3 and all(0 <= v <= 1 for v in vals)
    best = [c["args"] for c in step["candidates"] if c["val_acc"] == max(vals)]
    assert step["chosen"] in best
    for cand in step["candidates"]:
        saved = Result.load(
            tmp_path
            / "t"
            / "tuning"
            / f"rkd-rkd_weight={cand['args']['rkd_weight']:g}.json"
        )
        assert saved.final["val_acc"] == cand["val_acc"]
        assert saved.config["seed"] == rep.TUNE_SEED
    assert "[tune] RKD rkd_weight=" in capsys.readouterr().out
    # The search's cost: its 3 runs (the teacher is the default table's).
    assert rec["search_runs"] == 3 and rec["train_seconds"] > 0


def test_count_runs_counts_each_run_once():
    rows = [r for r in rep.table1_rows() if r.row in ("ResNet56", "ResNet20", "KD")]
    n = rep_plan.count_runs(rows, "smoke", [0, 1], overrides=DIGITS)
    # Teacher alone at seeds 0 and 1 (seed 0 also teaches KD), the student
    # alone at 0 and 1, KD at 0 and 1.
    assert n == {"defaults": 6, "tuning": 0, "tuned_at_most": 0}
    rkd = [r for r in rep.table1_rows() if r.row == "RKD"]
    n = rep_plan.count_runs(rkd, "smoke", [0, 1], tune=True, overrides=DIGITS)
    # RKD's teacher and 2 seeds; 3 weights at the tuning seed; 2 tuned seeds.
    assert n == {"defaults": 3, "tuning": 3, "tuned_at_most": 2}
    kd_row = [r for r in rows if r.row == "KD"]
    n = rep_plan.count_runs(kd_row, "smoke", [0], tune=True, overrides=DIGITS)
    # 3 weights, then 2 new temperatures (one is the chosen weight's run).
    assert n["tuning"] == 5


def test_dry_run_trains_nothing_and_prints_the_counts(capsys, monkeypatch):
    def no_run(*a, **k):
        raise AssertionError("a dry run trained")

    monkeypatch.setattr(rep_rows, "run", no_run)
    args = ["reproduce", "--profile", "quick", "--tune", "--dry-run", "--rows"]
    assert main([*args, "KD", "RKD"]) == 0
    out = capsys.readouterr().out
    assert "the search (seed 100" in out and "total" in out
    assert "seeds [0, 1, 2, 3, 4]" in out
    assert "recorded already:" in out and "results/table1/quick/runs" in out
    assert main(["reproduce", "--profile", "quick", "--dry-run", "--rows", "x"]) != 0
    assert "unknown Table-1 row(s) ['x']" in capsys.readouterr().err
