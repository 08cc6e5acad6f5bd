"""kdutils.speed: the book's speed section, written from the saved bench files."""

from __future__ import annotations

import json

import pytest

from kdutils.cli import main
from kdutils.speed import book_factor_markdown, speed_markdown, step_speed_markdown

PROV = {
    "machine": "x86_64, 2 cores",
    "threads": 2,
    "torch": "2.14.1",
    "date": "2026-11-28T12:00:00+00:00",
    "git_commit": "abcdef1234567890",
}


def _run(family, method, fast, usual, acc_f=0.88, acc_u=0.87):
    return {
        "family": family,
        "method": method,
        "student": "resnet8",
        "kdutils_seconds": fast,
        "usual_seconds": usual,
        "kdutils_acc": acc_f,
        "usual_acc": acc_u,
    }


def _factor(tmp_path, book=True):
    body = {
        "args": {"workers": 2},
        "provenance": PROV,
        "runs": [
            _run("response", "kd", 50.0, 150.0),
            _run("baseline", "ce", 40.0, 60.0),
        ],
    }
    if book:
        body["book"] = {
            "runs": 140,
            "recorded_train_seconds": 3600.0 * 4,
            "usual_loop_seconds_estimate": 3600.0 * 9,
            "ratio_estimate": 2.25,
        }
    p = tmp_path / "book-factor-cpu.json"
    p.write_text(json.dumps(body))
    return p


def _steps(tmp_path):
    body = {
        "args": {"steps": 30, "warmup": 5, "repeat": 2},
        "provenance": PROV,
        "results": {
            "kd-3x32": {
                "reference": {"img_s": 200.0, "rss_mb": 900.0, "workers_pss_mb": 300.0},
                "kdutils": {"img_s": 300.0, "rss_mb": 800.0},
                "kdutils+bf16": {"img_s": 500.0, "rss_mb": 700.0},
            },
            "projected_paper_table1_hours": {"reference": 600.0, "kdutils+bf16": 250.0},
        },
    }
    p = tmp_path / "cpu.json"
    p.write_text(json.dumps(body))
    return p


def test_the_book_factor_table_computes_its_ratios_and_total(tmp_path):
    md = book_factor_markdown(_factor(tmp_path))
    assert "| response | kd, resnet8 | 50 | 150 | 3.00× | 88.00 / 87.00 |" in md
    assert "| baseline | ce, resnet8 | 40 | 60 | 1.50× |" in md
    assert "| **all 2** | | **90** | **210** | **2.33×** | |" in md
    assert "140 cached `quick` runs (4.00 h" in md and "9.00 h" in md
    assert "about 2.2× faster" in md and "commit abcdef1234" in md
    assert "estimate" not in book_factor_markdown(_factor(tmp_path, book=False))


def test_the_step_table_gives_rates_ratios_memory_and_the_paper_cost(tmp_path):
    md = step_speed_markdown(_steps(tmp_path))
    assert (
        "| the usual loop (DataLoader, 2 workers, per-sample transforms) | 200 | 1.00× | 900 + 300 in workers |"
        in md
    )
    assert '| kdutils, `amp="bf16"` | 500 | 2.50× | 700 |' in md
    assert "compiled" not in md  # a loop the file does not hold is left out
    assert "600 CPU-hours" in md and '250 with kdutils, `amp="bf16"`' in md


def test_the_section_reads_every_saved_file_or_says_none_is_saved(tmp_path):
    assert "No measurement is saved" in speed_markdown(tmp_path)
    _factor(tmp_path)
    _steps(tmp_path)
    md = speed_markdown(tmp_path)
    assert md.index("with and without kdutils") < md.index("survey's shape")


def test_a_file_without_runs_is_an_error_not_an_empty_table(tmp_path):
    p = tmp_path / "book-factor-x.json"
    p.write_text(json.dumps({"args": {"workers": 2}, "provenance": PROV, "runs": []}))
    with pytest.raises(ValueError, match="no measured runs"):
        book_factor_markdown(p)


def test_figures_writes_the_speed_section_from_the_committed_files(tmp_path):
    assert main(["figures", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "speed.md").read_text()
    assert "bench_speed.py" in md and "images/s" in md
    assert (tmp_path / "speed.png").stat().st_size > 10_000


def test_the_figure_draws_a_pair_of_bars_per_run_and_the_totals(tmp_path):
    from kdutils.speed import book_factor_figure

    _factor(tmp_path)
    fig = book_factor_figure(tmp_path)
    ax = fig.axes[0]
    widths = sorted(p.get_width() for p in ax.patches)
    assert widths == [40.0, 50.0, 60.0, 150.0]
    assert "90 s with kdutils, 210 s the usual way (2.33×)" in ax.get_title()
    assert {t.get_text() for t in ax.texts} == {"3.00×", "1.50×"}
    empty = book_factor_figure(tmp_path / "nothing")
    assert "no book_factor measurement" in empty.axes[0].texts[0].get_text()


def test_a_gpu_measurement_gets_its_own_paragraph_in_gpu_hours(tmp_path):
    cpu = json.loads(_steps(tmp_path).read_text())
    gpu = dict(cpu, args={**cpu["args"], "device": "cuda"})
    (tmp_path / "cuda.json").write_text(json.dumps(gpu))
    md = speed_markdown(tmp_path)
    assert "survey's shape, on the CPU" in md and "survey's shape, on a GPU" in md
    assert "600 CPU-hours" in md and "600 GPU-hours" in md
    assert md.count("it is a GPU's job") == 1


def _parallel(tmp_path, same=True):
    body = {
        "cores": 2,
        "serial_wall_s": 200.0,
        "parallel_wall_s": 125.0,
        "speedup": 1.6,
        "alone_equals_parallel": same,
        "runs": [{"run": "ce-a-s0"}, {"run": "kd-b-s0"}],
        "alone": {"run": "ce-a-s0"},
        "provenance": PROV,
    }
    p = tmp_path / "book-parallel-x.json"
    p.write_text(json.dumps(body))
    return p


def test_the_parallel_measurement_is_read_with_its_check(tmp_path):
    from kdutils.speed import book_parallel_markdown

    md = book_parallel_markdown(_parallel(tmp_path))
    assert "took 200 s one after another with 2 threads" in md
    assert "125 s trained 2 at a time" in md and "1.60× the throughput" in md
    assert "bit-identical" in md and "`ce-a-s0`, `kd-b-s0`" in md
    assert "did **not** reproduce" in book_parallel_markdown(_parallel(tmp_path, False))
    # The section includes it, and it is not mistaken for a step measurement.
    section = speed_markdown(tmp_path)
    assert "one per core at once" in section and "survey's shape" not in section


def test_the_newest_step_measurement_leads_and_an_older_one_adds_its_other_loops(
    tmp_path,
):
    old = json.loads(_steps(tmp_path).read_text())  # cpu.json: with a bf16 row
    (tmp_path / "cpu.json").unlink()
    new = json.loads(json.dumps(old))
    new["provenance"] = {**PROV, "date": "2026-12-06T12:00:00+00:00"}
    del new["results"]["kd-3x32"]["kdutils+bf16"]
    new["results"]["kd-3x32"]["kdutils"]["img_s"] = 310.0
    (tmp_path / "b-new.json").write_text(json.dumps(new))
    (tmp_path / "a-old.json").write_text(json.dumps(old))
    md = speed_markdown(tmp_path)
    assert md.index("b-new.json") < md.index(
        "An earlier measurement on the CPU (2026-11-28)"
    )
    assert md.index("An earlier measurement") < md.index("a-old.json")
    # An older file with no loop the newest lacks is left out.
    del old["results"]["kd-3x32"]["kdutils+bf16"]
    (tmp_path / "a-old.json").write_text(json.dumps(old))
    md = speed_markdown(tmp_path)
    assert "b-new.json" in md and "a-old.json" not in md and "earlier" not in md
