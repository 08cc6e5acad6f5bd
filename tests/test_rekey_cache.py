"""scripts/rekey_cache.py: teacher records follow a moved teacher to its new key."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "rekey_cache", ROOT / "scripts" / "rekey_cache.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(runs, folder, **doc):
    (runs / folder).mkdir(parents=True)
    (runs / folder / "result.json").write_text(json.dumps(doc))


def test_relink_points_teacher_records_at_moved_runs(tmp_path, capsys):
    rekey = _script()
    runs = tmp_path / "runs"
    _run(runs, "ce-t-new1", key="new1", rekeyed={"from_key": "old1"}, teacher=None)
    _run(runs, "ce-u-new2", key="new2", rekeyed={"from_key": "old2"}, teacher=None)
    one = {"name": "ce-t", "key": "old1", "test_acc": 0.9}
    _run(runs, "kd-s", key="k1", teacher=one)
    many = [dict(one), {"name": "ce-u", "key": "old2", "test_acc": 0.8}]
    _run(runs, "avg-s", key="k2", teacher=many)
    _run(runs, "kd-x", key="k3", teacher={"name": "ce-v", "key": "kept", "test_acc": 1})

    assert rekey.relink_teachers(runs, apply=False) == 2  # a dry run writes nothing
    assert json.loads((runs / "kd-s" / "result.json").read_text())["teacher"] == one

    assert rekey.relink_teachers(runs, apply=True) == 2
    t = json.loads((runs / "kd-s" / "result.json").read_text())["teacher"]
    assert t["key"] == "new1" and t["key_before_rekey"] == "old1"
    ts = json.loads((runs / "avg-s" / "result.json").read_text())["teacher"]
    assert [r["key"] for r in ts] == ["new1", "new2"]
    # A record naming a run that was never moved is left alone; a second pass
    # finds nothing more to do.
    kept = json.loads((runs / "kd-x" / "result.json").read_text())["teacher"]
    assert kept["key"] == "kept" and "key_before_rekey" not in kept
    assert rekey.relink_teachers(runs, apply=True) == 0
    assert "[relink] kd-s" in capsys.readouterr().out
