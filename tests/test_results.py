"""Result records, summaries and the survey's Table 1."""

from __future__ import annotations

import json
import math

import pytest

import kdutils as kd
from kdutils.results import Result, load_results, summarize, survey_table1


def _result(
    method: str = "kd", seed: int = 0, acc: float = 0.9, **method_args
) -> Result:
    cfg = kd.make_config("smoke", method=method, seed=seed, **method_args)
    teacher = {"name": "t", "key": "abc", "test_acc": 0.95}
    return Result(
        name=cfg.name,
        key=f"key{seed}",
        config=cfg.to_dict(),
        history=[{"epoch": 1, "test_acc": acc, "test_loss": 0.5, "seconds": 1.0}],
        final={"test_acc": acc, "test_loss": 0.5, "params": 123, "train_seconds": 1.0},
        provenance={"git_commit": None, "torch": "x", "device": "cpu: test"},
        teacher=None if method == "ce" else teacher,
    )


def test_json_round_trip(tmp_path):
    res = _result(T=8.0)
    path = tmp_path / "run" / "result.json"
    res.save(path)
    loaded = Result.load(path)
    assert loaded == res
    assert loaded.path == str(path.parent)
    assert loaded.cfg == res.cfg and loaded.cfg.method_args["T"] == 8.0
    assert loaded.test_acc == 0.9
    on_disk = json.loads(path.read_text())
    assert "path" not in on_disk and "from_cache" not in on_disk
    assert on_disk["config"]["milestones"] == list(res.cfg.milestones)


def test_a_loaded_record_lists_its_entries_in_the_order_the_trained_one_did(tmp_path):
    """A notebook printing a history entry's items prints them in one order
    whether the run was trained now or loaded from the cache (nbval compares
    the two)."""
    res = _result()
    res = Result(
        **{
            **{f: getattr(res, f) for f in ("name", "key", "config", "provenance")},
            "history": [
                {"train_kd": 0.4, "train_afm": 0.7, "epoch": 1, "test_acc": 0.9}
            ],
            "final": {"test_acc": 0.9, "b": {"z": 1, "a": 2}},
        }
    )
    res.save(tmp_path / "result.json")
    loaded = Result.load(tmp_path / "result.json")
    assert list(res.history[0]) == list(loaded.history[0])
    assert list(res.history[0]) == ["epoch", "test_acc", "train_afm", "train_kd"]
    assert list(res.final["b"]) == list(loaded.final["b"]) == ["a", "z"]


def test_results_differing_in_a_metric_are_not_equal():
    assert _result(acc=0.9) != _result(acc=0.91)


def test_load_results_finds_every_record(tmp_path):
    for i, acc in enumerate((0.8, 0.9, 0.7)):
        _result(seed=i, acc=acc).save(tmp_path / "runs" / f"r{i}" / "result.json")
    (tmp_path / "runs" / "r0" / "other.json").write_text("{}")
    found = load_results(tmp_path)
    assert sorted(r.test_acc for r in found) == [0.7, 0.8, 0.9]


def test_summarize_gives_mean_std_and_count():
    results = [_result("kd", s, a) for s, a in enumerate((0.90, 0.92, 0.94))]
    results.append(_result("ce", 0, 0.85))
    table = summarize(results).set_index("method")
    assert table.loc["kd", "acc_mean"] == pytest.approx(92.0)
    assert table.loc["kd", "acc_std"] == pytest.approx(2.0)  # sample std (ddof=1)
    assert table.loc["kd", "seeds"] == 3
    assert table.loc["ce", "acc_mean"] == pytest.approx(85.0)
    assert table.loc["ce", "seeds"] == 1 and math.isnan(table.loc["ce", "acc_std"])
    assert list(table.index) == ["kd", "ce"]  # first-seen order


def test_summarize_by_a_hyperparameter():
    results = [
        _result("kd", s, 0.9 + 0.01 * s, T=t) for t in (2.0, 4.0) for s in range(2)
    ]
    table = summarize(results, by=("method", "T"))
    assert list(table["T"]) == [2.0, 4.0]
    assert list(table["acc_mean"]) == pytest.approx([90.5, 90.5])
    assert list(table["seeds"]) == [2, 2]


def test_summarize_keeps_groups_without_the_hyperparameter():
    """The CE baseline has no T; grouping by ("method", "T") must not drop it."""
    results = [_result("ce", 0, 0.80)]
    results += [_result("kd", s, 0.90 + 0.02 * s, T=2.0) for s in range(2)]
    table = summarize(results, by=("method", "T"))
    assert list(table["method"]) == ["ce", "kd"]
    assert list(table["seeds"]) == [1, 2]
    assert list(table["acc_mean"]) == pytest.approx([80.0, 91.0])


def test_survey_table1():
    rows = survey_table1()
    assert len(rows) == 16
    by_row = {r["row"]: r for r in rows}
    assert by_row["ResNet20"]["survey_acc"] == 92.36
    assert by_row["ResNet56"]["survey_acc"] == 94.01
    assert by_row["KD"]["survey_acc"] == 92.43 and by_row["KD"]["method"] == "kd"
    assert all(isinstance(r["survey_acc"], float) for r in rows)
    assert all(90 < r["survey_acc"] < 95 for r in rows)


def test_load_model_without_a_run_folder_is_a_clear_error():
    with pytest.raises(ValueError, match="run folder"):
        _result().load_model()


def test_repr_shows_the_accuracy():
    assert "90.00%" in repr(_result(acc=0.9))


def test_compare_reads_a_clear_difference_as_significant():
    from kdutils.results import compare

    text = compare("KD", [88.1, 88.3, 88.2], "alone", [86.6, 86.8, 86.7])
    assert "+1.50 points" in text and "a significant difference" in text


def test_compare_reads_overlapping_seeds_as_no_difference():
    from kdutils.results import compare

    text = compare("KD", [87.9, 87.2], "alone", [87.8, 87.7])
    assert "no significant difference" in text and "-0.20 points" in text


def test_compare_with_one_seed_runs_no_test():
    from kdutils.results import compare

    text = compare("KD", [88.0], "alone", [87.0])
    assert "too few seeds" in text and "Welch" not in text


def test_cpu_name_reads_the_model_and_the_widest_vector_instructions(
    monkeypatch, tmp_path
):
    from kdutils import provenance

    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Some CPU 9000\n"
        "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n"
    )
    real = provenance.Path
    monkeypatch.setattr(provenance.platform, "processor", lambda: "")
    monkeypatch.setattr(
        provenance, "Path", lambda p: info if p == "/proc/cpuinfo" else real(p)
    )
    assert provenance.cpu_name() == "Some CPU 9000 (AVX-512 with bf16)"
    info.write_text("model name\t: Other\nflags\t\t: sse2 avx2\n")
    assert provenance.cpu_name() == "Other (AVX2)"
    info.write_text("model name\t: Old\nflags\t\t: sse2\n")
    assert provenance.cpu_name() == "Old"


def test_seed_mean_does_not_depend_on_the_order_of_the_seeds():
    from kdutils.results import seed_mean

    vals = [0.1, 0.2, 0.3, 1e16, -1e16]
    # Plain left-to-right sums of these orders differ; the exact sum does not.
    assert sum(vals) != sum(reversed(vals))
    assert seed_mean(vals) == seed_mean(list(reversed(vals))) == 0.6 / 5
    assert math.isnan(seed_mean([]))


def test_summarize_and_compare_print_the_same_mean():
    from kdutils.results import compare

    accs = (0.8602, 0.8603, 0.8611)
    results = [_result("kd", s, a) for s, a in enumerate(accs)]
    mean = summarize(results).set_index("method").loc["kd", "acc_mean"]
    text = compare("kd", [100 * a for a in accs], "alone", [86.0, 86.1])
    assert text.startswith(f"kd {mean:.2f}% vs")
