"""The validation split: held out of the training subset, stratified, fixed;
measured every evaluated epoch; the only data anything is chosen on."""

from __future__ import annotations

import pytest
import torch

import kdutils as kd
from kdutils import data as kdata
from kdutils.loop import load_split, load_val


def _data(n: int = 200) -> kdata.TensorData:
    g = torch.Generator().manual_seed(1)
    labels = torch.cat([torch.full((k * 5 + 3,), k) for k in range(4)])[:n]
    images = torch.randint(
        0, 256, (len(labels), 1, 8, 8), generator=g, dtype=torch.uint8
    )
    return kdata.TensorData(images, labels, "digits")


def test_split_off_holds_out_that_fraction_of_every_class_and_nothing_twice():
    d = _data()
    kept, held = d.split_off(0.2)
    for c in range(4):
        count = int((d.labels == c).sum())
        assert int((held.labels == c).sum()) == round(0.2 * count)
        assert int((kept.labels == c).sum()) == count - round(0.2 * count)
    rows = {bytes(x.numpy().tobytes()) for x in d.images}
    assert len(rows) == len(d)  # the images are distinct, so they identify samples
    got = [bytes(x.numpy().tobytes()) for x in torch.cat([kept.images, held.images])]
    assert sorted(got) == sorted(rows)
    again_kept, again_held = d.split_off(0.2)
    assert torch.equal(again_held.images, held.images)  # fixed
    other = d.split_off(0.2, seed=5)[1]
    assert not torch.equal(other.images, held.images)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\)"):
        d.split_off(1.0)


def test_a_run_trains_on_its_subset_less_the_validation_part(digits_config):
    cfg = digits_config(val_fraction=0.1)
    train, val = load_split(cfg, True), load_val(cfg)
    full = kdata.load("digits", train=True).subset(cfg.train_subset)
    assert len(train) + len(val) == len(full) == 300
    assert 25 <= len(val) <= 35
    seen = {bytes(x.numpy().tobytes()) for x in train.images}
    assert not any(bytes(x.numpy().tobytes()) in seen for x in val.images)
    assert load_val(cfg.replace(val_fraction=0.0)) is None
    assert len(load_split(cfg.replace(val_fraction=0.0), True)) == 300
    # The same validation images for every seed and method of one subset.
    assert torch.equal(load_val(cfg.replace(seed=3, method="kd")).images, val.images)


def test_every_profile_holds_out_a_tenth_and_a_bad_fraction_is_refused():
    for p in ("smoke", "quick", "paper"):
        assert kd.make_config(p).val_fraction == 0.1
    with pytest.raises(ValueError, match="val_fraction"):
        kd.make_config("smoke", val_fraction=0.7)
    # Records from before the field existed have none, and read as none.
    d = kd.make_config("smoke").to_dict()
    assert d["val_fraction"] == 0.1
    d.pop("val_fraction")
    assert kd.Config.from_dict(d).val_fraction == 0.0
    assert "val_fraction" not in kd.Config.from_dict(d).to_dict()


def test_a_run_measures_validation_at_every_evaluated_epoch(digits_config):
    res = kd.run(digits_config(method="ce", val_fraction=0.1, epochs=3), progress=False)
    assert all(h["val_acc"] is not None for h in res.history)
    assert res.final["val_acc"] == res.history[-1]["val_acc"]
    assert res.best_val_epoch in (1, 2, 3)
    assert res.test_acc_at_best_val == res.history[res.best_val_epoch - 1]["test_acc"]
    no_val = kd.run(digits_config(method="ce", val_fraction=0.0), progress=False)
    assert "val_acc" not in no_val.history[-1] and no_val.best_val_epoch is None


def test_the_epoch_is_chosen_on_validation_never_on_test():
    history = [
        {"epoch": 1, "val_acc": 0.50, "test_acc": 0.90},
        {"epoch": 2, "val_acc": 0.70, "test_acc": 0.60},
        {"epoch": 3, "val_acc": None, "test_acc": None},
        {"epoch": 4, "val_acc": 0.70, "test_acc": 0.65},
    ]
    res = kd.Result("r", "k", kd.make_config("smoke").to_dict(), history, {}, {})
    assert res.best_val_epoch == 2  # the earliest of the tied best
    assert res.test_acc_at_best_val == 0.60
    assert res.best_test_acc == 0.90  # what choosing on test would report
