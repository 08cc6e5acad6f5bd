"""kdutils.dense_metrics: mIoU, pixel accuracy and COCO mAP through torchmetrics,
checked on cases whose value is worked out by hand."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from kdutils.dense_metrics import detection_map, segmentation_metrics
from kdutils.errors import EnvironmentProblem


def _det(boxes, scores, labels):
    return dict(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=torch.tensor(scores, dtype=torch.float32),
        labels=torch.tensor(labels, dtype=torch.int64),
    )


def _gt(boxes, labels):
    return dict(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
    )


def test_perfect_segmentation_scores_one():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 11, (3, 8, 8), generator=g)
    m = segmentation_metrics(target.clone(), target, num_classes=11)
    # float32 means: one up to rounding
    assert m["miou"] == pytest.approx(1.0) and m["pixel_acc"] == pytest.approx(1.0)
    assert all(m[f"iou_{c}"] == pytest.approx(1.0) for c in range(11))


def test_iou_of_a_hand_made_case():
    target = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    m = segmentation_metrics(pred, target, num_classes=4)
    # class 0: pixels (0,0) right, (0,1) missed, (1,2) wrongly 0 -> 1/3
    # class 1: (0,2), (1,0) right, (0,1) wrongly 1 -> 2/3
    # class 2: (1,1) right, (1,2) missed -> 1/2; class 3 is nowhere -> NaN
    assert m["iou_0"] == pytest.approx(1 / 3)
    assert m["iou_1"] == pytest.approx(2 / 3)
    assert m["iou_2"] == pytest.approx(1 / 2)
    assert math.isnan(m["iou_3"])
    # the mean runs over the three classes that occur, not four
    assert m["miou"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 6)


def test_iou_agrees_with_counting_pixel_sets():
    """Random labels over several images: one confusion over the whole set."""
    g = torch.Generator().manual_seed(3)
    target = torch.randint(0, 5, (4, 6, 7), generator=g)
    pred = torch.where(
        torch.rand(4, 6, 7, generator=g) < 0.6,
        target,
        torch.randint(0, 5, (4, 6, 7), generator=g),
    )
    m = segmentation_metrics(pred, target, num_classes=6)
    cells = list(zip(pred.flatten().tolist(), target.flatten().tolist(), strict=True))
    ious = []
    for c in range(6):
        inter = sum(1 for p, t in cells if p == c and t == c)
        union = sum(1 for p, t in cells if p == c or t == c)
        if union == 0:
            assert math.isnan(m[f"iou_{c}"])
            continue
        ious.append(inter / union)
        assert m[f"iou_{c}"] == pytest.approx(inter / union, rel=1e-6)
    assert len(ious) == 5
    assert m["miou"] == pytest.approx(sum(ious) / len(ious), rel=1e-6)
    right = sum(1 for p, t in cells if p == t)
    assert m["pixel_acc"] == pytest.approx(right / len(cells), rel=1e-6)


@pytest.mark.parametrize(
    "pred, target, num_classes, match",
    [
        (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), 11, "pred must"),
        (torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long), 11, "pred must"),
        (torch.zeros(2, 4, 4, dtype=torch.long), torch.zeros(2, 4, 5, dtype=torch.long), 11, "one shape"),
        (torch.full((1, 2, 2), 11), torch.zeros(1, 2, 2, dtype=torch.long), 11, "pred holds classes"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), -1), 11, "target holds"),
        (torch.zeros(0, 2, 2, dtype=torch.long), torch.zeros(0, 2, 2, dtype=torch.long), 11, "no pixel"),
        (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long), 1, "num_classes"),
    ],
)  # fmt: skip
def test_bad_segmentation_input_is_one_clear_error(pred, target, num_classes, match):
    with pytest.raises(ValueError, match=match):
        segmentation_metrics(pred, target, num_classes=num_classes)


def test_perfect_detections_score_one():
    targets = [
        _gt([[0, 0, 10, 10], [20, 5, 40, 30]], [2, 7]),
        _gt([[5, 5, 9, 20]], [2]),
    ]
    preds = [
        dict(t, scores=torch.linspace(0.9, 0.5, len(t["labels"]))) for t in targets
    ]
    m = detection_map(preds, targets)
    assert m["map"] == m["map_50"] == m["map_75"] == pytest.approx(1.0)
    assert m["ap_2"] == m["ap_7"] == pytest.approx(1.0)
    assert math.isnan(m["ap_0"])  # no ground truth of class 0


def test_a_shifted_box_passes_iou_half_but_not_three_quarters():
    # ground truth [0, 10] x [0, 10]; prediction moved 3 px right:
    # intersection 7 * 10 = 70, union 100 + 100 - 70 = 130, IoU = 7/13 = 0.538
    iou = 70 / 130
    assert 0.5 <= iou < 0.55
    m = detection_map(
        [_det([[3, 0, 13, 10]], [0.8], [4])], [_gt([[0, 0, 10, 10]], [4])]
    )
    assert m["map_50"] == pytest.approx(1.0)
    assert m["map_75"] == pytest.approx(0.0)
    # of the ten thresholds 0.50, 0.55, ..., 0.95 only 0.50 is passed
    assert m["map"] == pytest.approx(0.1) and m["ap_4"] == pytest.approx(0.1)


def test_a_false_positive_ranked_first_halves_ap():
    gt = [_gt([[0, 0, 10, 10]], [1])]
    hit, miss = [0, 0, 10, 10], [30, 30, 40, 40]
    # ranked: miss (precision 0 at recall 0), then hit (precision 1/2 at
    # recall 1); the interpolated precision is 1/2 at every recall level
    first = detection_map([_det([miss, hit], [0.9, 0.6], [1, 1])], gt)
    assert first["map"] == pytest.approx(0.5) and first["map_50"] == pytest.approx(0.5)
    # ranked below the hit, the same false positive costs nothing
    last = detection_map([_det([miss, hit], [0.3, 0.6], [1, 1])], gt)
    assert last["map"] == pytest.approx(1.0)


def test_a_class_without_ground_truth_has_no_ap_and_costs_others_nothing():
    gt = [_gt([[0, 0, 10, 10]], [1])]
    m = detection_map(
        [_det([[0, 0, 10, 10], [30, 30, 40, 40]], [0.6, 0.9], [1, 5])], gt
    )
    assert m["ap_1"] == pytest.approx(1.0) and math.isnan(m["ap_5"])
    assert m["map"] == pytest.approx(1.0)


def test_an_image_without_detections_counts_its_misses():
    gt = [_gt([[0, 0, 10, 10]], [3]), _gt([[0, 0, 10, 10]], [3])]
    empty = _det([], [], [])
    m = detection_map([_det([[0, 0, 10, 10]], [0.9], [3]), empty], gt)
    # one of two boxes found, at precision 1: AP = area up to recall 1/2,
    # sampled at COCO's 101 recall points 0, 0.01, ..., 0.5 -> 51 / 101
    assert m["map"] == pytest.approx(51 / 101, rel=1e-4)


GOOD_P, GOOD_T = _det([[0, 0, 4, 4]], [0.5], [0]), _gt([[0, 0, 4, 4]], [0])


@pytest.mark.parametrize(
    "preds, targets, match",
    [
        ([GOOD_P], [GOOD_T, GOOD_T], "one length"),
        ([], [], "non-empty"),
        ([{"boxes": GOOD_P["boxes"]}], [GOOD_T], r"preds\[0\] must be a dict"),
        ([dict(GOOD_P, boxes=torch.zeros(1, 5))], [GOOD_T], r"\['boxes'\] must be a \(k, 4\)"),
        ([dict(GOOD_P, boxes=torch.tensor([[4.0, 0, 0, 4]]))], [GOOD_T], "x1 >= x0"),
        ([dict(GOOD_P, scores=torch.ones(2))], [GOOD_T], r"\['scores'\]"),
        ([dict(GOOD_P, labels=torch.tensor([10]))], [GOOD_T], r"\[0, 9\]"),
        ([GOOD_P], [dict(GOOD_T, labels=torch.tensor([0.0]))], r"targets\[0\]\['labels'\]"),
        ([GOOD_P], [dict(GOOD_T, boxes=torch.tensor([[0, 0, 4, 4]]))], "finite floats"),
    ],
)  # fmt: skip
def test_bad_detection_input_is_one_clear_error(preds, targets, match):
    with pytest.raises(ValueError, match=match):
        detection_map(preds, targets)


def test_a_missing_library_is_an_environment_problem(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchmetrics", None)  # import fails
    target = torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(EnvironmentProblem, match="pip install"):
        segmentation_metrics(target, target)


def test_importing_the_module_does_not_import_torchmetrics():
    code = "import sys, kdutils.dense_metrics; sys.exit('torchmetrics' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
