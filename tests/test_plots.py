"""Every plot function returns a Figure with content, from real (tiny) results."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import kdutils as kd  # noqa: E402
from kdutils import plots  # noqa: E402


@pytest.fixture
def results(digits_config):
    return [
        kd.run(digits_config(method=m, seed=s, eval_every=2), progress=False)
        for m in ("ce", "kd")
        for s in (0, 1)
    ]


def test_training_curves_draws_one_line_per_group_and_tolerates_gaps(results):
    fig = plots.training_curves(results, metrics=("test_acc", "train_acc"))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 2  # ce and kd
    # epoch 1 was not evaluated (eval_every=2): the mean there is NaN
    assert np.isnan(ax.get_lines()[0].get_ydata()[0])


def test_bars_and_sweep_use_the_summary(results):
    summary = kd.summarize(results)
    fig = plots.accuracy_bars(summary, reference={"teacher": 50.0})
    assert len(fig.axes[0].patches) == 2
    # A method with one seed has no error bar (not a zero one) and says so.
    one_seed = kd.summarize(results[:3])  # ce: seeds 0 and 1; kd: seed 0
    ax = plots.accuracy_bars(one_seed).axes[0]
    bars = [c for c in ax.containers if hasattr(c, "has_yerr") and c.has_yerr]
    assert len(bars) == 1 and len(bars[0].lines[2][0].get_segments()) == 1
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["ce\n(2 seeds)", "kd\n(1 seed)"]
    sweep = kd.summarize(results, by=("method", "seed"))
    sweep["T"] = [1.0, 2.0, 4.0, 8.0]
    assert isinstance(plots.sweep(sweep, "T"), Figure)


def test_teacher_figures():
    probs = {1.0: np.full((2, 10), 0.1), 4.0: np.full((2, 10), 0.1)}
    fig = plots.dark_knowledge(
        np.zeros((2, 1, 8, 8)), probs, [str(i) for i in range(10)], [0, 1]
    )
    assert len(fig.axes) == 2 * 3
    assert isinstance(plots.class_similarity(np.eye(10), list("abcdefghij")), Figure)


def test_taxonomy_shows_every_survey_section():
    fig = plots.taxonomy()
    texts = " ".join(t.get_text() for t in fig.axes[0].texts)
    for section in (
        "§1",
        "§2.1",
        "§2.2.1",
        "§2.2.2",
        "§2.2.3",
        "§2.3.1",
        "§2.3.5",
        "§3.1",
        "§3.2",
    ):
        assert section in texts
