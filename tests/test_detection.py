"""The CenterNet detector (kdutils.detection): targets on hand-made scenes and
against a cell-by-cell transcript of CenterNet's ctdet code, the loss against
float64 loops, decoding perfect outputs back to the boxes, the model's shapes,
evaluation, and one clear error for each bad input."""

from __future__ import annotations

import math

import pytest
import torch

from kdutils import detection as det
from kdutils.scenes import SceneSet, make_scenes


def _scenes(boxes, labels, size=64) -> SceneSet:
    """Hand-made scenes: blank images, the given boxes (pixels) and labels."""
    n = len(boxes)
    return SceneSet(
        images=torch.zeros(n, 1, size, size, dtype=torch.uint8),
        masks=torch.zeros(n, size, size, dtype=torch.int64),
        boxes=tuple(torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes),
        labels=tuple(torch.tensor(lb, dtype=torch.int64) for lb in labels),
        source="fashion-mnist",
    )


def _radius(h: float, w: float, o: float = 0.7) -> float:
    """The three roots of CenterNet's gaussian_radius, written as quadratics
    a r^2 - b r + c = 0 (the first two) and a r^2 + b r + c = 0 (the third)."""

    def small_root(a, b, c):
        return (b - math.sqrt(b * b - 4 * a * c)) / (2 * a)

    r1 = small_root(1, h + w, w * h * (1 - o) / (1 + o))
    r2 = small_root(4, 2 * (h + w), (1 - o) * w * h)
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / (2 * a3)
    return min(r1, r2, r3)


def _heat_reference(scenes: SceneSet, i: int) -> torch.Tensor:
    """One scene's heat maps, cell by cell in float64, as ctdet paints them."""
    g = scenes.images.shape[-1] // 4
    heat = torch.zeros(10, g, g, dtype=torch.float64)
    for box, label in zip(
        scenes.boxes[i].tolist(), scenes.labels[i].tolist(), strict=True
    ):
        x0, y0, x1, y1 = (v / 4 for v in box)
        r = max(0, int(_radius(math.ceil(y1 - y0), math.ceil(x1 - x0))))
        cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
        sigma = (2 * r + 1) / 6
        for y in range(max(0, cy - r), min(g, cy + r + 1)):
            for x in range(max(0, cx - r), min(g, cx + r + 1)):
                v = math.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sigma * sigma))
                heat[label, y, x] = max(heat[label, y, x], v)
    return heat


def _perfect_outputs(tgt: dict) -> dict:
    """Outputs that a perfect detector would give: the target heat maps as
    logits, and the sizes and offsets written at each object's cell."""
    b, _, h, w = tgt["heat"].shape
    size, offset = torch.zeros(b, 2, h, w), torch.zeros(b, 2, h, w)
    for i in range(b):
        for j in range(tgt["ind"].shape[1]):
            if tgt["reg_mask"][i, j]:
                y, x = divmod(int(tgt["ind"][i, j]), w)
                size[i, :, y, x] = tgt["wh"][i, j]
                offset[i, :, y, x] = tgt["reg"][i, j]
    heat = torch.logit(tgt["heat"].clamp(1e-6, 1 - 1e-6))
    return {"heat": heat, "size": size, "offset": offset}


def test_gaussian_radius_is_centernets_formula():
    h = torch.tensor([1.0, 3.0, 6.0, 9.0, 2.0])
    w = torch.tensor([1.0, 4.0, 6.0, 2.0, 9.0])
    got = det.gaussian_radius(h, w)
    want = [_radius(a, b) for a, b in zip(h.tolist(), w.tolist(), strict=True)]
    assert got.tolist() == pytest.approx(want, rel=1e-12)


def test_a_box_lands_where_it_must():
    # box (10, 14)-(31, 33) px = (2.5, 3.5)-(7.75, 8.25) cells: centre (5.125, 5.875)
    # box (9, 6)-(59, 58) px = (2.25, 1.5)-(14.75, 14.5) cells: centre (8.5, 8.0)
    s = _scenes([[[10, 14, 31, 33]], [[9, 6, 59, 58]]], [[3], [6]])
    t = det.targets(s, torch.tensor([0, 1]))
    assert t["heat"].shape == (2, 10, 16, 16) and t["ind"].shape == (2, 4)
    assert t["ind"][:, 0].tolist() == [5 * 16 + 5, 8 * 16 + 8]
    assert t["wh"][:, 0].tolist() == [
        pytest.approx([5.25, 4.75]),
        pytest.approx([12.5, 13]),
    ]
    assert t["reg"][:, 0].tolist() == [
        pytest.approx([0.125, 0.875]),
        pytest.approx([0.5, 0]),
    ]
    assert t["reg_mask"].tolist() == [[1, 0, 0, 0], [1, 0, 0, 0]]
    assert t["labels"].tolist() == [[3, -1, -1, -1], [6, -1, -1, -1]]
    assert t["boxes"][1, 0].tolist() == [9, 6, 59, 58]
    # the peak: exactly 1 at the centre cell, the only 1, on its class only
    assert t["heat"][0, 3, 5, 5] == 1 and t["heat"][1, 6, 8, 8] == 1
    assert (t["heat"] == 1).sum() == 2
    assert t["heat"][0, [c for c in range(10) if c != 3]].abs().sum() == 0
    # radius from the box in cells rounded up: 0 for the small box (one cell)
    assert int(_radius(math.ceil(4.75), math.ceil(5.25))) == 0
    assert (t["heat"][0] > 0).sum() == 1
    # 1 for the large one: exp(-r^2 / (2 sigma^2)) one cell away, sigma = 3/6
    assert int(_radius(13, 13)) == 1
    edge = math.exp(-1 / (2 * 0.5**2))
    heat = t["heat"][1, 6]
    for y, x in [(8, 9), (8, 7), (7, 8), (9, 8)]:
        assert float(heat[y, x]) == pytest.approx(edge, rel=1e-6)
    assert float(heat[9, 9]) == pytest.approx(edge**2, rel=1e-6)
    assert (heat > 0).sum() == 9 and heat[8, 10] == 0


def test_same_class_objects_merge_by_max_and_edges_keep_their_size():
    # two objects of class 7 side by side, one touching the right edge
    boxes = [[[24, 0, 44, 20], [44, 0, 64, 20]]]
    t = det.targets(_scenes(boxes, [[7, 7]]), torch.tensor([0]))
    heat = t["heat"][0, 7]
    assert heat[2, 8] == 1 and heat[2, 13] == 1  # centres (8.5, 2.5) and (13.5, 2.5)
    assert t["wh"][0, 1].tolist() == pytest.approx([5.0, 5.0])  # not clipped to 15
    want = _heat_reference(_scenes(boxes, [[7, 7]]), 0)
    torch.testing.assert_close(heat.double(), want[7], rtol=1e-6, atol=1e-7)


def test_targets_equal_a_cell_by_cell_transcript_on_real_scenes():
    s = make_scenes(24, train=False, seed=3)
    index = torch.tensor([5, 0, 23, 7, 7])
    t = det.targets(s, index)
    for row, i in enumerate(index.tolist()):
        torch.testing.assert_close(
            t["heat"][row].double(), _heat_reference(s, i), rtol=1e-6, atol=1e-7
        )
        for j, box in enumerate(s.boxes[i].tolist()):
            x0, y0, x1, y1 = (v / 4 for v in box)
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            assert int(t["ind"][row, j]) == int(cy) * 16 + int(cx)
            assert t["reg"][row, j].tolist() == pytest.approx(
                [cx % 1, cy % 1], abs=1e-6
            )
            assert t["wh"][row, j].tolist() == pytest.approx(
                [x1 - x0, y1 - y0], abs=1e-6
            )
        assert int(t["reg_mask"][row].sum()) == len(s.boxes[i])
    again = det.targets(s, index)
    assert all(torch.equal(t[k], again[k]) for k in t)


def test_more_objects_than_max_objects_is_an_error():
    five = [[[i * 12, 0, i * 12 + 8, 8] for i in range(5)]]
    s = _scenes(five, [[0, 1, 2, 3, 4]])
    with pytest.raises(ValueError, match="max_objects"):
        det.targets(s, torch.tensor([0]))
    t = det.targets(s, torch.tensor([0]), max_objects=5)
    assert t["reg_mask"].sum() == 5 and t["heat"].amax(dim=(2, 3)).sum() == 5


@pytest.mark.parametrize(
    "index, boxes, match",
    [
        (torch.tensor([0.0]), [[[0, 0, 8, 8]]], "integer"),
        (torch.tensor([[0]]), [[[0, 0, 8, 8]]], "1-D"),
        (torch.tensor([1]), [[[0, 0, 8, 8]]], r"\[0, 0\]"),
        (torch.tensor([0]), [[[0, 0, 70, 8]]], "inside"),
        (torch.tensor([0]), [[[8, 0, 8, 8]]], "x1 > x0"),
    ],
)
def test_bad_targets_input_is_one_clear_error(index, boxes, match):
    with pytest.raises(ValueError, match=match):
        det.targets(_scenes(boxes, [[0]]), index)


def test_canvas_not_a_multiple_of_the_stride_is_an_error():
    with pytest.raises(ValueError, match="multiple"):
        det.targets(_scenes([[[0, 0, 8, 8]]], [[0]], size=30), torch.tensor([0]))


def _focal_reference(logits, gt) -> float:
    p = torch.sigmoid(logits.double()).clamp(1e-4, 1 - 1e-4).flatten().tolist()
    total, n_pos = 0.0, 0
    for q, y in zip(p, gt.double().flatten().tolist(), strict=True):
        if y == 1:
            n_pos += 1
            total += (1 - q) ** 2 * math.log(q)
        else:
            total += (1 - y) ** 4 * q**2 * math.log(1 - q)
    return -total / n_pos if n_pos else -total


def _l1_reference(maps, tgt_key, tgt) -> float:
    total, count = 0.0, 0
    b, _, _, w = maps.shape
    for i in range(b):
        for j in range(tgt["ind"].shape[1]):
            if tgt["reg_mask"][i, j]:
                y, x = divmod(int(tgt["ind"][i, j]), w)
                for d in range(2):
                    total += abs(float(maps[i, d, y, x]) - float(tgt[tgt_key][i, j, d]))
                    count += 1
    return total / (count + 1e-4)


def test_task_loss_against_float64_loops():
    s = make_scenes(24, train=False, seed=3)
    tgt = det.targets(s, torch.arange(6))
    g = torch.Generator().manual_seed(0)
    out = {
        "heat": 2 * torch.randn(6, 10, 16, 16, generator=g),
        "size": 4 * torch.rand(6, 2, 16, 16, generator=g),
        "offset": torch.rand(6, 2, 16, 16, generator=g),
    }
    total, parts = det.task_loss(out, tgt)
    want = {
        "heat": _focal_reference(out["heat"], tgt["heat"]),
        "size": _l1_reference(out["size"], "wh", tgt),
        "offset": _l1_reference(out["offset"], "reg", tgt),
    }
    assert parts == pytest.approx(want, rel=1e-5)
    assert float(total) == pytest.approx(
        want["heat"] + 0.1 * want["size"] + want["offset"], rel=1e-5
    )


def test_task_loss_is_near_zero_for_perfect_outputs_and_grows_with_errors():
    s = make_scenes(24, train=False, seed=3)
    tgt = det.targets(s, torch.arange(8))
    perfect = _perfect_outputs(tgt)
    total, parts = det.task_loss(perfect, tgt)
    assert parts["size"] == 0 and parts["offset"] == 0 and parts["heat"] < 1e-6
    worse = dict(perfect, size=perfect["size"] + 1.0)
    _, parts_w = det.task_loss(worse, tgt)
    assert parts_w["size"] == pytest.approx(1.0, rel=1e-3)
    flat = dict(perfect, heat=torch.zeros_like(perfect["heat"]))
    assert det.task_loss(flat, tgt)[1]["heat"] > 1


def test_without_objects_the_focal_loss_is_the_negative_sum():
    logits = torch.full((1, 10, 4, 4), -1.0)
    gt = torch.zeros(1, 10, 4, 4)
    p = torch.sigmoid(torch.tensor(-1.0, dtype=torch.float64))
    want = -160 * float(p**2 * torch.log(1 - p))
    got = det.focal_loss(torch.sigmoid(logits), gt)
    assert float(got) == pytest.approx(want, rel=1e-6)


def test_bad_task_loss_input_is_one_clear_error():
    s = _scenes([[[0, 0, 8, 8]]], [[0]])
    tgt = det.targets(s, torch.tensor([0]))
    out = _perfect_outputs(tgt)
    with pytest.raises(ValueError, match="out must"):
        det.task_loss({"heat": out["heat"]}, tgt)
    with pytest.raises(ValueError, match="one shape"):
        det.task_loss(dict(out, heat=out["heat"][:, :5]), tgt)


def test_decode_recovers_the_boxes_from_perfect_outputs():
    s = make_scenes(24, train=False, seed=3)
    index = torch.arange(24)
    dets = det.decode(_perfect_outputs(det.targets(s, index)), k=20)
    assert len(dets) == 24
    for i, d in enumerate(dets):
        assert d["boxes"].shape == (20, 4) and d["labels"].dtype == torch.int64
        n = len(s.boxes[i])
        # the objects are the n best detections, each exactly its box and class
        top = d["boxes"][:n]
        assert (d["scores"][:n] > 0.99).all() and (d["scores"][n:] < 0.99).all()
        for box, label in zip(s.boxes[i], s.labels[i], strict=True):
            err = (top - box).abs().amax(dim=1)
            j = int(err.argmin())
            assert float(err[j]) < 1e-4 and int(d["labels"][j]) == int(label)


def test_decode_keeps_only_local_peaks():
    heat = torch.full((1, 10, 8, 8), -10.0)
    heat[0, 2, 3, 3], heat[0, 2, 3, 4] = 3.0, 2.0  # a neighbour of a higher peak
    heat[0, 5, 6, 1] = 1.0
    out = {
        "heat": heat,
        "size": torch.ones(1, 2, 8, 8),
        "offset": torch.zeros(1, 2, 8, 8),
    }
    d = det.decode(out, k=2)[0]
    assert d["labels"].tolist() == [2, 5]
    assert d["boxes"][0].tolist() == pytest.approx([10.0, 10.0, 14.0, 14.0])
    with pytest.raises(ValueError, match="k must"):
        det.decode(out, k=0)


def test_model_shapes_and_heat_prior():
    model = det.build("resnet8_w8-8-16-32")
    out = model(torch.randn(2, 1, 64, 64))
    assert out["feat"].shape == (2, 32, 16, 16)
    assert out["heat"].shape == (2, det.NUM_CLASSES, 16, 16)
    assert out["size"].shape == out["offset"].shape == (2, 2, 16, 16)
    assert torch.all(model.heat[-1].bias == -2.19)
    assert det.build("resnet14")(torch.randn(1, 1, 32, 32))["feat"].shape == (
        1,
        64,
        8,
        8,
    )


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 1, 62, 64), (1, 64, 64)])
def test_model_refuses_bad_input(shape):
    with pytest.raises(ValueError, match="x must"):
        det.build("resnet8")(torch.randn(*shape))


def test_unknown_backbone_is_an_error():
    with pytest.raises(ValueError, match="unknown model"):
        det.build("vgg11")


class _Oracle(torch.nn.Module):
    """Returns the perfect outputs of the whole set, whatever it is given."""

    def __init__(self, out):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.out = out

    def forward(self, x):
        assert not self.training
        return self.out


def test_evaluate_scores_a_perfect_detector_one_and_restores_the_mode():
    pytest.importorskip("torchmetrics")
    pytest.importorskip("pycocotools")
    s = make_scenes(24, train=False, seed=3)
    oracle = _Oracle(_perfect_outputs(det.targets(s, torch.arange(24))))
    oracle.train()
    res = det.evaluate(oracle, s, batch_size=24)
    assert res["map"] == pytest.approx(1.0) and res["map_50"] == pytest.approx(1.0)
    assert oracle.training
    present = set(torch.cat(s.labels).tolist())
    assert all(res[f"ap_{c}"] == pytest.approx(1.0) for c in present)
    model = det.build("resnet8_w8-8-16-32")
    res = det.evaluate(model, s, batch_size=10)
    assert 0 <= res["map"] <= 1 and model.training
