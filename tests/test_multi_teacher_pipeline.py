"""The multi-teacher pipeline (survey 2.3.3): ``multi_teacher`` and ``teacher_runs_of``.

Which runs it asks for (each teacher alone, exactly the run ``teacher_config``
gives for its architecture, so teachers are shared with other chapters; then
the student with their run ids in order), its errors before anything is
trained, and a tiny end-to-end run whose second call is all from the cache."""

from __future__ import annotations

from pathlib import Path

import pytest

import kdutils as kd
from kdutils import runs as kruns
from kdutils.config import teacher_config
from kdutils.pipelines import multi_teacher, teacher_runs_of

TEACHERS = ("resnet14", "resnet20", "resnet8")


def _fake_run(calls: list):
    """Records every run's config and keyword arguments; trains nothing."""

    def fake_run(cfg, **kw):
        calls.append((cfg, kw))
        r = kd.results.Result(
            name=cfg.name,
            key=f"k{len(calls)}",
            config=cfg.to_dict(),
            history=[],
            final={"test_acc": len(calls) / 10, "train_seconds": 0.0},
            provenance={},
        )
        r.path = f"/nowhere/{cfg.name}-run{len(calls)}"
        return r

    return fake_run


def _alone(cfg: kd.Config, arch: str) -> None:
    """``cfg`` trains ``arch`` alone with the student's data and recipe."""
    assert cfg.method == "ce" and cfg.student == arch
    assert cfg.teacher is None and cfg.teacher_runs == () and cfg.method_args == {}


@pytest.mark.parametrize("name", ["avgkd", "amtmlkd"])
def test_multi_teacher_trains_each_teacher_alone_then_the_student(digits_config, name):
    calls = []
    cfg = digits_config(
        method=name, teacher="resnet14", epochs=2, teacher_epochs=3, teacher_seed=7
    )
    out = multi_teacher(cfg, TEACHERS, run=_fake_run(calls), progress=False)
    assert len(calls) == len(out) == 4
    assert all(kw == {"progress": False} for _, kw in calls)  # to every run
    t_cfgs = [c for c, _ in calls[:3]]
    for t, c in zip(TEACHERS, t_cfgs, strict=True):
        assert c == teacher_config(cfg.replace(teacher=t))
        _alone(c, t)
        assert (c.epochs, c.seed, c.eval_every) == (3, 7, 3)
        for field in ("dataset", "train_subset", "test_subset", "batch_size", "lr"):
            assert getattr(c, field) == getattr(cfg, field), field
    # The first teacher's run is the very run kd's teacher is (the cache shares it).
    assert t_cfgs[0] == teacher_config(cfg)
    assert teacher_runs_of(cfg, TEACHERS) == t_cfgs
    s_cfg = calls[3][0]
    ids = tuple(Path(r.path).name for r in out[:3])
    assert ids == tuple(f"{c.name}-run{i}" for i, c in enumerate(t_cfgs, 1))
    assert s_cfg.teacher_runs == ids  # in the order given
    assert s_cfg == cfg.replace(teacher="resnet14", teacher_runs=ids)
    assert [r.cfg for r in out] == [*t_cfgs, s_cfg]


def test_the_students_teacher_field_is_the_first_teachers_architecture(
    digits_config,
):
    calls = []
    cfg = digits_config(method="avgkd", teacher="resnet14")
    multi_teacher(cfg, ("resnet8", "resnet20"), run=_fake_run(calls))
    assert calls[-1][0].teacher == "resnet8"
    assert [c.student for c, _ in calls[:2]] == ["resnet8", "resnet20"]


@pytest.mark.parametrize(
    "method,teachers,match",
    [
        ("kd", TEACHERS, "multi-teacher method"),
        ("rco", TEACHERS, "multi-teacher method"),
        ("avgkd", ("resnet14",), "at least two"),
        ("avgkd", (), "at least two"),
        ("avgkd", "resnet14", r"sequence of model names, e\.g\. \['resnet14'\]"),
        ("amtmlkd", ("resnet14", "resnet99"), "unknown model 'resnet99'"),
    ],
)
def test_multi_teacher_errors_before_any_run(digits_config, method, teachers, match):
    calls = []
    cfg = digits_config(method=method, teacher="resnet14")
    with pytest.raises(ValueError, match=match):
        multi_teacher(cfg, teachers, run=_fake_run(calls))
    assert calls == []
    if method != "kd" and method != "rco":
        with pytest.raises(ValueError, match=match):
            teacher_runs_of(cfg, teachers)


def test_multi_teacher_refuses_given_teacher_runs(digits_config):
    calls = []
    cfg = digits_config(method="avgkd", teacher_runs=("a", "b"))
    for call in (
        lambda: multi_teacher(cfg, TEACHERS, run=_fake_run(calls)),
        lambda: teacher_runs_of(cfg, TEACHERS),
    ):
        with pytest.raises(ValueError, match=r"do not give teacher_runs=\('a', 'b'\)"):
            call()
    assert calls == []


def test_multi_teacher_end_to_end_and_from_the_cache(digits_config, capsys):
    cfg = digits_config(method="avgkd", epochs=1)
    first = multi_teacher(cfg, ("resnet8", "resnet14"), progress=False)
    t8, t14, student = first
    assert [r.cfg for r in (t8, t14)] == teacher_runs_of(cfg, ("resnet8", "resnet14"))
    assert kd.Config.from_dict(student.config).teacher_runs == (
        kruns.run_id(t8),
        kruns.run_id(t14),
    )
    assert [t["key"] for t in student.teacher] == [t8.key, t14.key]
    out = capsys.readouterr().out
    assert "[multi_teacher] stage 3/3 student resnet8 from 2 teachers" in out
    # Everything is cached now, the first teacher also for a plain kd run.
    again = multi_teacher(cfg, ("resnet8", "resnet14"), progress=False)
    assert all(r.from_cache for r in again)
    assert [r.key for r in again] == [r.key for r in first]
    assert kd.run(teacher_config(cfg.replace(method="kd")), progress=False).from_cache
