"""Table-1 reproduction: rows, resuming, the aggregated table, the conclusions, Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from tiny import DIGITS

import kdutils as kd
from kdutils import reproduce as rep
from kdutils import runs as kruns
from kdutils import train as ktrain
from kdutils.cli import main
from kdutils.reproduce import executors as rep_executors
from kdutils.reproduce import report as rep_report
from kdutils.reproduce import rows as rep_rows

# The pipeline rows need a teacher larger than smoke's assistant
# (resnet8_w16-20-40-80), itself larger than the student: smoke's resnet14.
PIPE = dict(DIGITS, teacher="resnet14")
ASSISTANT = "resnet8_w16-20-40-80"


def test_table1_rows_follow_the_survey_file():
    rows = rep.table1_rows()
    assert [r.row for r in rows] == [r["row"] for r in kd.survey_table1()]
    assert len(rows) == 16
    assert {"ce", "kd"} <= {r.method for r in rows if r.available}
    assert all(r.available for r in rows), [r.row for r in rows if not r.available]


def test_pipeline_rows_and_their_models_per_profile():
    rows = {r.row: r for r in rep.table1_rows()}
    takd, altkd = rows["TAKD"], rows["ALTKD"]
    assert (takd.method, takd.pipeline) == ("kd", "takd")
    assert (altkd.method, altkd.pipeline) == ("amtmlkd", "multi_teacher")
    assert takd.pipeline_models("paper") == ["resnet32"]  # the survey's assistant
    for profile in ("paper", "quick"):  # the survey's 3 teachers
        assert len(altkd.pipeline_models(profile)) == 3
    for profile, assistant in [
        ("smoke", ASSISTANT),
        ("quick", "resnet20"),
        ("paper", "resnet32"),
    ]:
        # Chapter 12's config, so the two share their runs.
        base = kd.make_config(profile, method="kd", seed=1)
        ch12 = kd.make_config(
            profile, method="kd", teacher=base.teacher, seed=1, eval_every=base.epochs
        )
        cfg = takd.config(profile, 1)
        assert cfg == ch12
        teacher, a, student = takd.plan(cfg)  # chain_sizes accepts the chain
        assert (teacher.method, teacher.student) == ("ce", base.teacher)
        assert (a.student, a.teacher, a.seed) == (assistant, base.teacher, 0)
        assert (student.teacher, student.student) == (assistant, base.student)
        acfg = altkd.config(profile, 1)
        assert acfg == kd.make_config(profile, method="amtmlkd", seed=1)
        plan = altkd.plan(acfg)
        teachers = altkd.pipeline_models(profile)
        assert [c.student for c in plan[:-1]] == teachers
        assert teachers[0] == base.teacher
        assert plan[-1].teacher == teachers[0] and len(plan[-1].teacher_runs) == len(
            teachers
        )


def test_all_rows_are_run_none_missing(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setitem(
        rep.EXECUTORS, "local", lambda tasks, done, **_: seen.extend(tasks)
    )
    out = rep.reproduce("smoke", [0], out=tmp_path / "t1", rows=None)
    assert out["missing"] == []
    assert [t.row.row for t in seen] == [r["row"] for r in kd.survey_table1()]
    assert "Rows not in this version" not in (tmp_path / "t1" / "table.md").read_text()


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
    # The table's provenance, gathered from its runs' own records.
    prov = c["provenance"]
    assert prov["profile"] == "smoke" and prov["seeds"] == [0, 1]
    assert prov["dataset"] == ["digits"] and prov["runs"] == 6
    kept = [json.loads(p.read_text()) for p in (tmp_path / "t1" / "runs").iterdir()]
    assert prov["train_seconds"] == pytest.approx(
        sum(r["final"]["train_seconds"] for r in kept), abs=0.1
    )
    assert prov["devices"] == sorted({r["provenance"]["device"] for r in kept})
    assert prov["machine_runs"] == {kept[0]["provenance"]["machine"]: 6}
    assert "h of recorded training" in md and "computed on:" in md


def test_table_names_each_cpu_with_its_runs_and_the_unrecorded_ones():
    from kdutils.reproduce.report import _machines_line

    two = {"machine_runs": {"AMD EPYC": 70, "CPU not recorded": 10}}
    assert _machines_line(two) == "AMD EPYC (70 runs); CPU not recorded (10 runs)"
    assert _machines_line({"machine_runs": {"Intel Xeon": 1}}) == "Intel Xeon"
    # a conclusions.json written before the counts: the distinct machines
    old = {"machines": ["A", "B"], "devices": ["cpu"]}
    assert _machines_line(old) == "A; B"


def test_reproduce_resumes_without_training_again(tmp_path, capsys, monkeypatch):
    args = dict(out=tmp_path / "t1", rows=["ResNet20", "KD"], overrides=DIGITS)
    calls = {"n": 0}
    real_run = ktrain.run

    def interrupted_run(cfg, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during the second run
        return real_run(cfg, **kw)

    monkeypatch.setattr(rep_rows, "run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        rep.reproduce("smoke", [0, 1], **args)
    assert [p.name for p in (tmp_path / "t1" / "runs").iterdir()] == [
        "resnet20-s0.json"
    ]
    monkeypatch.setattr(rep_rows, "run", real_run)
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
    # Runs loaded from the table's folder still count once each, with their times.
    prov = again["conclusions"]["provenance"]
    assert prov["runs"] == prov["runs_with_stages"] == 4
    assert prov["train_seconds"] == pytest.approx(
        first["conclusions"]["provenance"]["train_seconds"], abs=0.1
    )
    assert prov["train_seconds"] > 0


def test_pipeline_rows_run_resume_and_restart_where_they_stopped(
    tmp_path, capsys, monkeypatch
):
    args = dict(out=tmp_path / "t1", rows=["TAKD", "ALTKD"], overrides=PIPE)
    real_run = ktrain.run
    calls, trained, interrupt = [], [], True

    def counting_run(cfg, **kw):
        calls.append(cfg)
        if cfg.method == "kd" and cfg.teacher_runs and interrupt:
            raise KeyboardInterrupt  # killed at TAKD's student, its 3rd stage
        res = real_run(cfg, **kw)
        if not res.from_cache:
            trained.append(cfg.name)
        return res

    monkeypatch.setattr(rep_rows, "run", counting_run)
    with pytest.raises(KeyboardInterrupt):
        rep.reproduce("smoke", [0], **args)
    assert trained == ["ce-resnet14-digits-s0", f"kd-resnet14-{ASSISTANT}-digits-s0"]
    assert not (tmp_path / "t1" / "runs" / "takd-s0.json").exists()
    trained.clear()
    interrupt = False
    capsys.readouterr()
    out = rep.reproduce("smoke", [0], **args)
    printed = capsys.readouterr().out
    # Restarted where it stopped: the teacher and the assistant from the cache.
    assert trained == [
        f"kd-{ASSISTANT}-resnet8-digits-s0",  # TAKD's student
        f"ce-{ASSISTANT}-digits-s0",  # ALTKD's second teacher (resnet14: cached)
        "amtmlkd-resnet14-resnet8-digits-s0",
    ]
    assert "[1/2] TAKD s0" in printed and "[2/2] ALTKD s0" in printed
    assert out["missing"] == []

    # The rows' Results are the pipelines' students, taught by the right runs.
    rows = {r.row: r for r in rep.table1_rows()}
    takd_cfg = rows["TAKD"].config("smoke", 0, **PIPE)
    assistant = real_run(
        takd_cfg.replace(student=ASSISTANT, seed=0, eval_every=takd_cfg.epochs)
    )
    saved = kd.Result.load(tmp_path / "t1" / "runs" / "takd-s0.json")
    assert saved.config["teacher_runs"] == [kruns.run_id(assistant)]
    assert saved.config["teacher"] == ASSISTANT and saved.config["method"] == "kd"
    altkd_cfg = rows["ALTKD"].config("smoke", 0, **PIPE)
    teachers = [
        real_run(kd.teacher_config(altkd_cfg.replace(teacher=t)))
        for t in ("resnet14", ASSISTANT)
    ]
    saved = kd.Result.load(tmp_path / "t1" / "runs" / "altkd-s0.json")
    assert saved.config["teacher_runs"] == [kruns.run_id(t) for t in teachers]
    assert saved.config["method"] == "amtmlkd"
    table = {t["row"]: t for t in out["table"]}
    assert table["TAKD"]["model"] == "resnet8" and len(table["ALTKD"]["accs"]) == 1

    # Done rows are recognised: nothing runs, not even from the cache.
    calls.clear()
    capsys.readouterr()
    again = rep.reproduce("smoke", [0], **args)
    assert "[resume] 2 of 2 runs already done" in capsys.readouterr().out
    assert calls == [] and again["table"] == out["table"]

    # Each saved pipeline row records its earlier stages' training seconds, so
    # the table's cost is read from its own files, whatever the cache holds.
    saved = kd.Result.load(tmp_path / "t1" / "runs" / "takd-s0.json")
    stages = saved.provenance["earlier_stages"]
    assert sorted(stages) == sorted(
        [kruns.run_id(assistant), "ce-resnet14-digits-s0-" + teachers[0].key]
    )
    assert all(v > 0 for v in stages.values())
    prov = again["conclusions"]["provenance"]
    assert prov["runs"] == 2 and prov["runs_with_stages"] == 5
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "empty-cache"))
    bare = rep.reproduce("smoke", [0], **args)
    assert calls == []  # nothing trained: both rows are in the table's folder
    assert bare["conclusions"]["provenance"]["runs_with_stages"] == 5
    assert bare["conclusions"]["provenance"]["train_seconds"] == pytest.approx(
        prov["train_seconds"], abs=0.1
    )


def test_a_pipeline_row_is_stale_when_its_stages_change_not_the_code():
    row = {r.row: r for r in rep.table1_rows()}["TAKD"]
    task = rep_executors._Task(row, 0, row.config("smoke", 0))
    final = task.final.to_dict()
    (run,) = final["teacher_runs"]

    def saved(**changes):
        return kd.Result("x", "k", {**final, **changes}, [], {}, {})

    assert task.is_done_by(saved())
    # Another code version: the same stage under another cache key.
    assert task.is_done_by(saved(teacher_runs=[run[:-12] + "0123456789ab"]))
    # Another assistant, or another seed of it: another experiment.
    assert not task.is_done_by(saved(teacher_runs=[run.replace("-s0-", "-s1-")]))
    assert not task.is_done_by(saved(teacher_runs=[]))
    assert not task.is_done_by(saved(teacher="resnet20"))


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
    # TAKD's assistant must fit between teacher and student (here both resnet8).
    with pytest.raises(ValueError, match=r"row TAKD \(takd with .*smaller than"):
        rep.reproduce("smoke", [0], out=tmp_path, rows=["TAKD"], overrides=DIGITS)


def test_cli_reproduce_rejects_bad_input_in_one_line(capsys):
    assert main(["reproduce", "--rows", "ResNet21", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown Table-1 row" in err
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--executor", "slurm"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["reproduce", "--amp", "fp8"])
    assert info.value.code == 2 and "invalid choice: 'fp8'" in capsys.readouterr().err


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
    assert rep_report._welch_greater(a, b) == pytest.approx(stats.t.sf(t, df))
    assert math.isnan(rep_report._welch_greater([1.0], [2.0, 3.0]))


# Ray: a local instance on the CPU, workers with their own cache


def test_ray_executor_gives_the_local_results(tmp_path, monkeypatch, capsys):
    ray = pytest.importorskip("ray")
    # A plain row, a distilled one and a pipeline, TAKD, whose assistant is
    # trained in a phase of its own, between the teacher's and the rows'
    # (ALTKD's teachers are teachers like KD's: the local test covers it).
    rows = ["ResNet20", "KD", "TAKD"]
    local = rep.reproduce(
        "smoke", [0], out=tmp_path / "local", rows=rows, overrides=PIPE
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
        capsys.readouterr()
        remote = rep.reproduce(
            "smoke",
            [0],
            out=tmp_path / "ray",
            rows=rows,
            overrides=PIPE,
            executor="ray",
        )
        printed = capsys.readouterr().out
    finally:
        ray.shutdown()
    assert [t["accs"] for t in remote["table"]] == [t["accs"] for t in local["table"]]
    assert (worker_cache / "runs").is_dir()
    assert not (tmp_path / "driver-cache").exists()
    names = ["kd-s0.json", "resnet20-s0.json", "takd-s0.json"]
    assert sorted(p.name for p in (tmp_path / "ray" / "runs").iterdir()) == names
    for name in names:  # the same runs, down to the teachers' run ids
        assert (
            json.loads((tmp_path / "ray" / "runs" / name).read_text())["config"]
            == json.loads((tmp_path / "local" / "runs" / name).read_text())["config"]
        )
    # The teacher (KD's and TAKD's) and the assistant trained once, in order.
    assert printed.count("[teacher] ce-resnet14-digits-s0:") == 1
    assert printed.count(f"[assistant] kd-resnet14-{ASSISTANT}-digits-s0:") == 1
    assert printed.index("[assistant]") > printed.rindex("[teacher]")


def test_online_rows_train_without_a_teacher_and_with_three_students():
    rows = {r.row: r for r in rep.table1_rows()}
    for name in ("DML", "ONE", "OKDDip"):
        cfg = rows[name].config("smoke", 0)
        assert cfg.teacher is None, name
        args = cfg.method_args
        assert args.get("num_peers", args.get("num_branches")) == 3, (name, args)
    assert rows["KD"].config("smoke", 0).teacher is not None


def test_fsp_first_stage_is_scaled_to_the_profile_schedule():
    """FSP's 30-epoch first stage is the paper's (240 epochs); shorter profiles
    scale it, so the FSP row trains as long as the other rows, as in chapter 4."""
    row = next(r for r in rep.table1_rows() if r.row == "FSP")
    for profile, stage in (("paper", 30), ("quick", 1), ("smoke", 1)):
        assert row.config(profile, 0).method_args["init_epochs"] == stage
    # A 120-epoch run gets half the paper's stage; a user's setting wins.
    assert row.config("paper", 0, epochs=120).method_args["init_epochs"] == 15
    assert row.config("quick", 0, init_epochs=4).method_args["init_epochs"] == 4
    # Rows without schedule-length settings are untouched.
    kd_row = next(r for r in rep.table1_rows() if r.row == "KD")
    assert kd_row.config("quick", 0) == kd.make_config("quick", method="kd", seed=0)


def test_eta_counts_runs_to_train_at_their_rows_recorded_times(monkeypatch):
    rows = {r.row: r for r in rep.table1_rows()}

    def result(seconds):
        return kd.Result(
            name="x",
            key="",
            config={},
            history=[],
            final={"test_acc": 0.5, "train_seconds": seconds},
            provenance={},
            path="",
        )

    def task(row, seed):
        cfg = kd.make_config("smoke", method="ce", seed=seed)
        return rep_executors._Task(rows[row], seed, cfg, plan=[cfg])

    known = {("KD", 0): result(100.0), ("KD", 1): result(140.0), ("AT", 0): result(60)}
    left = [task("KD", 2), task("AT", 1), task("CRD", 0)]
    cached = {"AT s1"}
    monkeypatch.setattr(rep_executors, "_in_cache", lambda t: t.label in cached)
    # KD s2 at KD's mean (120), AT s1 from the cache (0), CRD at the mean of all (100).
    eta, n_train = rep_executors._eta_seconds(left, known)
    assert eta == pytest.approx(220.0) and n_train == 2
    assert rep_executors._eta_seconds(left, known, parallel=2)[0] == pytest.approx(
        110.0
    )
    assert rep_executors._eta_seconds(left, {}) == (None, 2)  # nothing timed yet
    cached.update({"KD s2", "CRD s0"})
    assert rep_executors._eta_seconds(left, {}) == (0.0, 0)  # all from the cache


def test_reproduce_under_bf16_keeps_its_own_runs_and_folder(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    rows = ["ResNet20", "TAKD"]
    out = rep.reproduce("smoke", [0], rows=rows, overrides=PIPE, amp="bf16")
    folder = tmp_path / "results" / "table1" / "smoke-bf16"
    assert out["out"] == str(Path("results") / "table1" / "smoke-bf16")
    saved = {p.name: kd.Result.load(p) for p in (folder / "runs").iterdir()}
    assert sorted(saved) == ["resnet20-s0.json", "takd-s0.json"]
    assert all(r.provenance["amp"] == "bf16" for r in saved.values())
    # TAKD's student was taught by the assistant trained under bf16, itself
    # taught by the teacher trained under bf16.
    (assistant_id,) = saved["takd-s0.json"].config["teacher_runs"]
    assistant = kruns.load_run(assistant_id)
    assert assistant.provenance["amp"] == "bf16"
    assert assistant.teacher["key"] == kruns.run_key(
        kd.teacher_config(assistant.cfg), amp="bf16"
    )
    md = (folder / "table.md").read_text()
    assert "under bf16 autocast" in md
    assert (
        json.loads((folder / "conclusions.json").read_text())["provenance"]["amp"]
        == "bf16"
    )
    capsys.readouterr()
    rep.reproduce("smoke", [0], rows=rows, overrides=PIPE, amp="bf16")
    assert "[resume] 2 of 2 runs already done" in capsys.readouterr().out
    # A float32 reproduction into the same folder does not take them for its own.
    rep.reproduce("smoke", [0], out=folder, rows=["ResNet20"], overrides=PIPE)
    assert "[stale] ResNet20 s0" in capsys.readouterr().out
    assert (
        kd.Result.load(folder / "runs" / "resnet20-s0.json").provenance["amp"] is None
    )


def test_reproduce_refuses_an_unknown_precision(tmp_path):
    with pytest.raises(ValueError, match="amp"):
        rep.reproduce("smoke", [0], out=tmp_path, rows=["KD"], amp="fp8")


def test_a_ray_worker_under_bf16_uses_the_shipped_bf16_teacher(
    tmp_path, monkeypatch, capsys
):
    # What a Ray worker does, without Ray: import the exported teacher into
    # its own (empty) cache under the bf16 key, then train the student there.
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "driver"))
    cfg = {r.row: r for r in rep.table1_rows()}["KD"].config("smoke", 0, **DIGITS)
    teacher = ktrain.run(kd.teacher_config(cfg), progress=False, amp="bf16")
    blob = rep_executors._export_run(teacher)
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "worker"))
    capsys.readouterr()
    text, _ = rep_executors._ray_worker(
        cfg.to_dict(), [(kd.teacher_config(cfg).to_dict(), blob)], False, amp="bf16"
    )
    res = kd.Result(**json.loads(text))
    assert res.provenance["amp"] == "bf16"
    assert res.teacher["key"] == teacher.key
    printed = capsys.readouterr().out
    assert f"[cache] {teacher.name}" in printed  # imported, not trained again
    assert printed.count("[train]") == 1


def test_extra_rows_are_the_methods_after_the_survey_beside_table1(tmp_path):
    """``extra=True`` runs them as rows of their own, written to extra.md and
    extra.csv; Table 1, its CSV and its conclusions stay as they were."""
    extra = rep.extra_rows()
    assert [r.method for r in extra] == [
        m for m, cls in kd.METHODS.items() if cls.status == "after"
    ]
    assert {"dkd", "dist", "nkd"} <= {r.method for r in extra}
    assert all(
        r.family == "after the survey" and math.isnan(r.survey_acc) for r in extra
    )
    args = dict(out=tmp_path / "t1", overrides=DIGITS)
    plain = rep.reproduce("smoke", [0], rows=["KD"], **args)
    table_csv = (tmp_path / "t1" / "table.csv").read_text()
    out = rep.reproduce("smoke", [0], rows=["KD", "dkd", "dist"], extra=True, **args)
    assert [t["row"] for t in out["table"]] == ["KD"]  # Table 1 only
    assert out["table"] == plain["table"]
    assert (tmp_path / "t1" / "table.csv").read_text() == table_csv
    assert [t["method"] for t in out["extra"]] == ["dkd", "dist"]
    md = (tmp_path / "t1" / "extra.md").read_text()
    kd_mean = out["table"][0]["mean"]
    for t in out["extra"]:
        assert (
            f"| {t['method']} | 1 | {t['mean']:.2f} | {t['mean'] - kd_mean:+.2f} |"
            in md
        )
    assert "dkd" not in (tmp_path / "t1" / "table.md").read_text()
