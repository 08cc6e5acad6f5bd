"""The unified score of accuracy and compression (kdutils.score)."""

from __future__ import annotations

import itertools
import math

import pytest

from kdutils import score as ks

REF = {"params": 800.0, "macs": 4000.0, "latency_ms": 2.0}


def _by_hand(acc, cost, ref_acc, ref, lam, w):
    # log2 of the weighted geometric mean of the cost ratios, written out
    geo = math.prod((ref[k] / cost[k]) ** w[k] for k in w)
    return acc - ref_acc + lam * math.log(geo, 2)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0, 3.0])
def test_score_matches_its_definition(lam):
    cost = {"params": 100.0, "macs": 1000.0, "latency_ms": 1.5}
    w = {"params": 0.5, "macs": 0.3, "latency_ms": 0.2}
    got = ks.unified_score(87.0, cost, 89.5, REF, lam, w)
    assert got == pytest.approx(_by_hand(87.0, cost, 89.5, REF, lam, w), rel=1e-12)


def test_score_anchors():
    half = {k: v / 2 for k, v in REF.items()}
    assert ks.unified_score(90.0, REF, 90.0, REF) == 0.0  # the reference scores 0
    assert ks.unified_score(90.0, half, 90.0, REF, lam=2.0) == pytest.approx(2.0)
    assert ks.unified_score(89.0, REF, 90.0, REF, lam=5.0) == pytest.approx(-1.0)
    # a zero weight ignores that cost entirely (even a missing one)
    only = {"params": 1.0, "macs": 0.0, "latency_ms": 0.0}
    assert ks.unified_score(90.0, {"params": 400.0}, 90.0, REF, 1.0, only) == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lam=-1.0), "lam"),
        (dict(weights={"params": 0.5, "macs": 0.4}), "sum to 1"),
        (dict(weights={"flops": 1.0}), "unknown cost"),
        (dict(weights={"params": 1.5, "macs": -0.5}), ">= 0"),
    ],
)
def test_score_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ks.unified_score(90.0, REF, 90.0, REF, **kwargs)


def test_score_rejects_missing_or_zero_costs():
    with pytest.raises(ValueError, match="latency_ms"):
        ks.unified_score(90.0, {"params": 1.0, "macs": 1.0}, 90.0, REF)
    with pytest.raises(ValueError, match="params"):
        ks.unified_score(90.0, {**REF, "params": 0.0}, 90.0, REF)


def test_score_table_ranks_and_checks():
    rows = [
        {"name": "teacher", "acc": 90.0, **REF},
        {"name": "small", "acc": 88.0, **{k: v / 8 for k, v in REF.items()}},
        {"name": "same", "acc": 89.0, **REF},
    ]
    t = ks.score_table(rows, ref="teacher", lam=1.0)
    assert [r["name"] for r in t] == ["small", "teacher", "same"]  # 88 - 90 + 3 = 1
    assert [r["rank"] for r in t] == [1, 2, 3]
    assert t[0]["score"] == pytest.approx(1.0)
    t0 = ks.score_table(rows, ref="teacher", lam=0.0)  # accuracy alone
    assert [r["name"] for r in t0] == ["teacher", "same", "small"]
    with pytest.raises(ValueError, match="reference"):
        ks.score_table(rows, ref="nope")
    with pytest.raises(ValueError, match="unique"):
        ks.score_table(rows + rows[:1], ref="teacher")


def test_rank_agreement_is_kendalls_tau():
    a = ["a", "b", "c", "d"]
    assert ks.rank_agreement(a, a) == 1.0
    assert ks.rank_agreement(a, a[::-1]) == -1.0
    b = ["b", "a", "c", "d"]  # one discordant pair of six
    pairs = list(itertools.combinations(range(4), 2))
    assert ks.rank_agreement(a, b) == pytest.approx((len(pairs) - 2) / len(pairs))
    with pytest.raises(ValueError, match="same names"):
        ks.rank_agreement(a, ["a", "b", "c", "x"])


def test_book_runs_keeps_only_runs_the_current_code_loads(tmp_path, monkeypatch):
    import kdutils as kd
    from kdutils import runs as kruns

    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    cfg = kd.make_config(
        "smoke", method="ce", epochs=1, train_subset=64, test_subset=32
    )
    res = kd.run(cfg, progress=False)
    assert [r.name for r in ks.book_runs("smoke")] == [res.name]
    assert ks.book_runs("quick") == []
    # a run of other code: same config, a folder under another key
    stale = kruns.cache_dir() / "runs" / f"{cfg.name}-000000000000"
    stale.mkdir()
    (stale / "result.json").write_text((kruns.run_dir(cfg) / "result.json").read_text())
    assert [r.name for r in ks.book_runs("smoke")] == [res.name]
