"""The synthetic scene set (kdutils.scenes): deterministic, split-pure, boxes and
masks that agree with the pixels, and one clear error for each bad parameter."""

from __future__ import annotations

import pytest
import torch

from kdutils import scenes
from kdutils.data import TensorData

SMALL = dict(size=24, scale=(1.0, 2.0), source="digits", threshold=30)


def _all_pairs_iou(boxes):
    out = []
    for a in range(len(boxes)):
        for b in range(a + 1, len(boxes)):
            out.append(float(scenes.box_iou_one(boxes[a], boxes[b][None])[0]))
    return out


def test_same_arguments_same_scenes_and_the_seed_matters():
    a = scenes.make_scenes(20, seed=1, **SMALL)
    scenes._make.cache_clear()
    b = scenes.make_scenes(20, seed=1, **SMALL)
    c = scenes.make_scenes(20, seed=2, **SMALL)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert all(torch.equal(x, y) for x, y in zip(a.boxes, b.boxes, strict=True))
    assert not torch.equal(a.images, c.images)


def test_shapes_types_and_counts():
    s = scenes.make_scenes(30, items=(2, 3), **SMALL)
    assert s.images.shape == (30, 1, 24, 24) and s.images.dtype == torch.uint8
    assert s.masks.shape == (30, 24, 24) and s.masks.dtype == torch.int64
    assert len(s) == 30 and s.classes == 10
    for boxes, labels in zip(s.boxes, s.labels, strict=True):
        assert 1 <= len(boxes) <= 3 and boxes.shape[1] == 4
        assert labels.dtype == torch.int64 and len(labels) == len(boxes)
        assert ((labels >= 0) & (labels < 10)).all()
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 24).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()


def test_every_labelled_pixel_lies_in_a_box_of_its_class():
    s = scenes.make_scenes(40, **SMALL)
    for i in range(len(s)):
        ys, xs = (s.masks[i] > 0).nonzero(as_tuple=True)
        for y, x in zip(ys.tolist(), xs.tolist(), strict=True):
            c = int(s.masks[i, y, x]) - 1
            inside = [
                b
                for b, lab in zip(s.boxes[i], s.labels[i], strict=True)
                if int(lab) == c and b[0] <= x < b[2] and b[1] <= y < b[3]
            ]
            assert inside, f"scene {i}: pixel ({x}, {y}) of class {c} in no box"


def test_a_lone_item_has_the_tight_box_of_its_mask():
    s = scenes.make_scenes(15, items=(1, 1), **SMALL)
    for i in range(len(s)):
        fg = s.masks[i] > 0
        rows, cols = fg.any(1).nonzero(), fg.any(0).nonzero()
        want = [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]
        assert s.boxes[i][0].tolist() == want
        assert set(s.masks[i].unique().tolist()) == {0, 1 + int(s.labels[i][0])}


def test_items_overlap_at_most_max_overlap():
    s = scenes.make_scenes(40, items=(3, 4), max_overlap=0.1, **SMALL)
    for boxes in s.boxes:
        assert all(iou <= 0.1 + 1e-6 for iou in _all_pairs_iou(boxes))


def test_train_and_test_scenes_never_mix(monkeypatch):
    """Items of the training split are painted 200 with label 3, of the test
    split 120 with label 7: each set shows only its own."""

    def fake_load(name, train=True, root=None):
        img = torch.zeros(5, 1, 8, 8, dtype=torch.uint8)
        img[:, :, 2:6, 2:6] = 200 if train else 120
        lab = torch.full((5,), 3 if train else 7, dtype=torch.int64)
        return TensorData(img, lab, "digits")

    monkeypatch.setattr(scenes, "load", fake_load)
    scenes._make.cache_clear()
    kw = dict(SMALL, scale=(1.0, 1.0), noise=0.0, background=10)
    tr = scenes.make_scenes(10, train=True, **kw)
    te = scenes.make_scenes(10, train=False, **kw)
    scenes._make.cache_clear()
    assert set(tr.images.unique().tolist()) == {10, 200}
    assert set(te.images.unique().tolist()) == {10, 120}
    assert set(tr.masks.unique().tolist()) == {0, 4}
    assert set(te.masks.unique().tolist()) == {0, 8}
    assert all(set(lab.tolist()) == {3} for lab in tr.labels)


def test_no_scenes_is_an_empty_set():
    s = scenes.make_scenes(0, **SMALL)
    assert len(s) == 0 and s.images.shape == (0, 1, 24, 24)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=-1), "n \\(the number of scenes\\)"),
        (dict(n=2.5), "n \\(the number of scenes\\)"),
        (dict(items=(0, 2)), "items"),
        (dict(items=(3, 2)), "items"),
        (dict(size=12), "canvas \\(12 px\\) is smaller than the largest item"),
        (dict(scale=(0.0, 1.0)), "scale"),
        (dict(max_overlap=1.0), "max_overlap"),
        (dict(noise=-1.0), "noise"),
        (dict(source="cifar10"), "one-channel"),
    ],
)
def test_bad_parameters_are_one_clear_error(kwargs, match):
    args = dict(SMALL, n=3)
    args.update(kwargs)
    n = args.pop("n")
    with pytest.raises(ValueError, match=match):
        scenes.make_scenes(n, **args)


def test_to_input_maps_grey_levels_affinely_to_minus_two_two():
    images = torch.tensor([0, 64, 128, 255], dtype=torch.uint8).view(1, 1, 2, 2)
    x = scenes.to_input(images)
    assert x.dtype == torch.float32 and x.shape == (1, 1, 2, 2)
    # the same map written as 4 v / 255 - 2, in float64
    want = images.double() * 4 / 255 - 2
    torch.testing.assert_close(x.double(), want, rtol=0, atol=1e-6)
    assert x[0, 0, 0, 0] == -2 and x[0, 0, 1, 1] == 2


@pytest.mark.parametrize(
    "images",
    [torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.uint8)],
    ids=["float", "3-d"],
)
def test_to_input_refuses_what_is_not_a_uint8_batch(images):
    with pytest.raises(ValueError, match="images must be uint8"):
        scenes.to_input(images)
