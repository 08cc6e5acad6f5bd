"""Detection distillation losses (kdutils.losses.detection, survey section 5.1)
against float64 loops written from their definitions, their properties,
gradients that reach only the student, and one clear error per bad input."""

from __future__ import annotations

import math

import pytest
import torch

from kdutils import losses


def _pair(seed, shape, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return tuple(
        scale * torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2)
    )


def _sig(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _student_only(fn, s, t, *args, **kw):
    """The loss's gradient reaches the student and never the teacher."""
    s = s.clone().requires_grad_(True)
    t = t.clone().requires_grad_(True)
    fn(s, t, *args, **kw).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None


def test_chen_hint_is_the_mean_squared_distance():
    s, t = _pair(0, (2, 3, 4, 5))
    flat = list(zip(s.flatten().tolist(), t.flatten().tolist(), strict=True))
    want = sum((a - b) ** 2 for a, b in flat) / len(flat)
    assert float(losses.chen_hint_loss(s, t)) == pytest.approx(want, rel=1e-12)
    assert float(losses.chen_hint_loss(t, t)) == 0
    _student_only(losses.chen_hint_loss, s, t)


def _soft_reference(s, t, T, w_bg):
    b, c, h, w = s.shape
    total = 0.0
    for i in range(b):
        for y in range(h):
            for x in range(w):
                for k in range(c):
                    pt = _sig(float(t[i, k, y, x]) / T)
                    ps = _sig(float(s[i, k, y, x]) / T)
                    total -= pt * math.log(ps) + w_bg * (1 - pt) * math.log(1 - ps)
    return total / (b * h * w)


@pytest.mark.parametrize("T, w_bg", [(1.0, 1.5), (2.0, 1.5), (1.0, 1.0), (0.5, 3.0)])
def test_chen_soft_loss_against_a_loop(T, w_bg):
    s, t = _pair(1, (2, 3, 4, 3), scale=2.0)
    got = losses.chen_soft_loss(s, t, T=T, bg_weight=w_bg)
    assert float(got) == pytest.approx(_soft_reference(s, t, T, w_bg), rel=1e-10)
    _student_only(losses.chen_soft_loss, s, t, T=T, bg_weight=w_bg)


def test_chen_soft_loss_weighting_pulls_the_student_below_the_teacher():
    # d/dz of -[p_t log p + w (1 - p_t) log(1 - p)] vanishes at
    # p = p_t / (p_t + w (1 - p_t))
    t = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0], dtype=torch.float64).reshape(
        1, 5, 1, 1
    )
    p_t = torch.sigmoid(t)
    for w in (1.0, 1.5):
        p_star = p_t / (p_t + w * (1 - p_t))
        s = torch.logit(p_star).requires_grad_(True)
        losses.chen_soft_loss(s, t, bg_weight=w).backward()
        assert s.grad.abs().max() < 1e-12
    assert (p_star < p_t).all()  # with the background weighted 1.5


def _bounded_reference(ps, pt, target, ind, mask, margin):
    b, d, h, w = ps.shape
    total, n = 0.0, 0
    for i in range(b):
        for j in range(ind.shape[1]):
            if not mask[i, j]:
                continue
            n += 1
            y, x = divmod(int(ind[i, j]), w)
            es = sum(
                (float(ps[i, c, y, x]) - float(target[i, j, c])) ** 2 for c in range(d)
            )
            et = sum(
                (float(pt[i, c, y, x]) - float(target[i, j, c])) ** 2 for c in range(d)
            )
            if es + margin > et:
                total += es
    return total / max(n, 1)


def _bounded_case(seed):
    ps, pt = _pair(seed, (3, 2, 4, 4), scale=2.0)
    g = torch.Generator().manual_seed(seed + 100)
    target = 2 * torch.randn(3, 4, 2, generator=g, dtype=torch.float64)
    ind = torch.randint(0, 16, (3, 4), generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.float32)
    return ps, pt, target, ind, mask


@pytest.mark.parametrize("margin", [0.0, 0.5, 3.0])
def test_teacher_bounded_loss_against_a_loop(margin):
    for seed in range(4):
        ps, pt, target, ind, mask = _bounded_case(seed)
        got = losses.teacher_bounded_loss(ps, pt, target, ind, mask, margin=margin)
        want = _bounded_reference(ps, pt, target, ind, mask, margin)
        assert float(got) == pytest.approx(want, rel=1e-10, abs=1e-12)
    _student_only(losses.teacher_bounded_loss, ps, pt, target, ind, mask, margin=100.0)


def test_teacher_bounded_loss_stops_once_the_student_beats_the_teacher():
    target = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64)
    ind = torch.tensor([[5]])
    mask = torch.ones(1, 1)
    ps, pt = (
        torch.zeros(1, 2, 3, 3, dtype=torch.float64),
        torch.zeros(1, 2, 3, 3, dtype=torch.float64),
    )
    pt[0, :, 1, 2] = torch.tensor([1.0, 0.0])  # teacher's error 4
    ps[0, :, 1, 2] = torch.tensor([1.0, 1.0])  # student's error 1: better by 3
    assert float(losses.teacher_bounded_loss(ps, pt, target, ind, mask)) == 0
    assert (
        float(losses.teacher_bounded_loss(ps, pt, target, ind, mask, margin=3.5)) == 1
    )
    ps[0, :, 1, 2] = torch.tensor([3.0, 2.0])  # error 4: not better, counted
    assert float(losses.teacher_bounded_loss(ps, pt, target, ind, mask)) == 0
    ps[0, :, 1, 2] = torch.tensor([3.0, 3.0])  # error 5 > 4
    assert float(losses.teacher_bounded_loss(ps, pt, target, ind, mask)) == 5
    empty = losses.teacher_bounded_loss(ps, pt, target, ind, torch.zeros(1, 1))
    assert float(empty) == 0


def test_mimic_loss_on_linear_features_is_the_distance_at_bin_centres():
    # bilinear sampling is exact on a field linear in x and y, and the mean of
    # a bin's 2x2 samples is the field at the bin's centre
    g = torch.Generator().manual_seed(2)
    coef_s, coef_t = torch.randn(2, 3, 3, generator=g, dtype=torch.float64)
    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")

    def field(coef):  # (3 channels, 3 coefficients) -> (1, 3, 8, 8)
        return (
            coef[:, 0, None, None] * xs
            + coef[:, 1, None, None] * ys
            + coef[:, 2, None, None]
        )[None]

    s, t = field(coef_s).double(), field(coef_t).double()
    box = (
        8.0,
        6.0,
        26.0,
        22.0,
    )  # cells (1.5, 1.0)-(6.0, 5.0) after the half-cell shift
    p = 3
    x0, y0, x1, y1 = (v / 4 - 0.5 for v in box)
    total = 0.0
    for py in range(p):
        for px in range(p):
            x, y = x0 + (px + 0.5) * (x1 - x0) / p, y0 + (py + 0.5) * (y1 - y0) / p
            d = (coef_s - coef_t) @ torch.tensor([x, y, 1.0], dtype=torch.float64)
            total += float((d**2).sum())
    m = 3 * p * p
    got = losses.mimic_loss(s, t, [torch.tensor([box])], stride=4, output_size=p)
    assert float(got) == pytest.approx(total / m / 2, rel=1e-10)
    plain = losses.mimic_loss(
        s, t, [torch.tensor([box])], stride=4, output_size=p, normalize=False
    )
    assert float(plain) == pytest.approx(total / 2, rel=1e-10)


def _bilinear(f, y, x):
    """torchvision's roi_align sampling rule at one point of a (H, W) map."""
    h, w = len(f), len(f[0])
    if y < -1 or y > h or x < -1 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * f[y0][x0]
        + (1 - ly) * lx * f[y0][x1]
        + ly * (1 - lx) * f[y1][x0]
        + ly * lx * f[y1][x1]
    )


def _region(feat, box, stride, p):
    """A region's (C, P, P) features: 2x2 bilinear samples per bin, averaged,
    box corners moved half a cell (aligned=True)."""
    x0, y0, x1, y1 = (v / stride - 0.5 for v in box)
    bw, bh = (x1 - x0) / p, (y1 - y0) / p
    out = []
    for c in range(feat.shape[0]):
        f = feat[c].tolist()
        for py in range(p):
            for px in range(p):
                vals = [
                    _bilinear(
                        f,
                        y0 + py * bh + (iy + 0.5) * bh / 2,
                        x0 + px * bw + (ix + 0.5) * bw / 2,
                    )
                    for iy in range(2)
                    for ix in range(2)
                ]
                out.append(sum(vals) / 4)
    return out


def test_mimic_loss_on_any_boxes_against_a_bilinear_loop():
    s, t = _pair(3, (2, 2, 6, 6))
    boxes = [
        torch.tensor([[1.0, 2.5, 13.0, 23.0], [10.0, 0.0, 24.0, 9.0]]),
        torch.tensor([[3.3, 7.1, 20.2, 17.9]]),
    ]
    total, n = 0.0, 0
    for i, bx in enumerate(boxes):
        for box in bx.tolist():
            u, v = _region(t[i], box, 4, 3), _region(s[i], box, 4, 3)
            total += sum((a - b) ** 2 for a, b in zip(u, v, strict=True)) / len(u)
            n += 1
    got = losses.mimic_loss(s, t, boxes, stride=4, output_size=3)
    assert float(got) == pytest.approx(total / (2 * n), rel=1e-9)
    _student_only(losses.mimic_loss, s, t, boxes, stride=4, output_size=3)


def test_mimic_loss_without_boxes_is_zero_and_differentiable():
    s, t = _pair(4, (2, 2, 4, 4))
    s.requires_grad_(True)
    out = losses.mimic_loss(s, t, [torch.zeros(0, 4), torch.zeros(0, 4)])
    out.backward()
    assert out.item() == 0 and s.grad is not None


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _mask_reference(boxes, h, w, stride, shapes, psi):
    """For each box: the best IoU over all anchors of all cells, then the cells
    with an anchor above psi times it."""
    cells = [(y, x) for y in range(h) for x in range(w)]

    def anchors_at(y, x):
        cx, cy = (x + 0.5) * stride, (y + 0.5) * stride
        return [
            (cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2) for aw, ah in shapes
        ]

    mask = [[False] * w for _ in range(h)]
    for box in boxes:
        best = max(_iou(a, box) for y, x in cells for a in anchors_at(y, x))
        for y, x in cells:
            if any(_iou(a, box) > psi * best for a in anchors_at(y, x)):
                mask[y][x] = True
    return mask


def test_imitation_anchors_have_the_sizes_and_ratios():
    a = losses.imitation_anchors()
    assert a.shape == (9, 2)
    area = (a[:, 0] * a[:, 1]).sqrt()
    assert sorted(set(round(float(v), 4) for v in area)) == [16, 24, 32]
    assert sorted(set(round(float(v), 4) for v in a[:, 1] / a[:, 0])) == [0.5, 1, 2]


def test_imitation_mask_by_hand():
    # a box equal to the 16 px square anchor of cell (5, 5): centre (22, 22)
    box = torch.tensor([[14.0, 14.0, 30.0, 30.0]])
    mask = losses.imitation_mask([box], (12, 12), stride=4)
    # one cell away the best anchor still overlaps it by 0.6 > 0.5; diagonally
    # or two cells away no anchor reaches 0.5: a plus of five cells
    want = {(5, 5), (4, 5), (6, 5), (5, 4), (5, 6)}
    assert {tuple(p) for p in mask[0].nonzero().tolist()} == want


@pytest.mark.parametrize("psi", [0.3, 0.5, 0.8])
def test_imitation_mask_against_a_loop(psi):
    boxes = [
        torch.tensor([[3.0, 5.0, 30.0, 20.0], [40.0, 30.0, 62.0, 63.0]]),
        torch.tensor([[10.0, 10.0, 20.0, 44.0]]),
        torch.zeros(0, 4),
    ]
    shapes = losses.imitation_anchors().tolist()
    mask = losses.imitation_mask(boxes, (16, 16), stride=4, psi=psi)
    assert mask.shape == (3, 16, 16) and mask.dtype == torch.bool
    for i, bx in enumerate(boxes):
        want = _mask_reference(bx.tolist(), 16, 16, 4, shapes, psi)
        assert mask[i].tolist() == want
    assert not mask[2].any()


def test_imitation_mask_grows_as_psi_falls():
    box = [torch.tensor([[10.0, 12.0, 40.0, 33.0]])]
    sizes = [
        int(losses.imitation_mask(box, (16, 16), psi=p).sum()) for p in (0.9, 0.5, 0.2)
    ]
    assert 0 < sizes[0] < sizes[1] < sizes[2]


def test_imitation_loss_against_a_loop():
    s, t = _pair(5, (2, 3, 4, 4))
    g = torch.Generator().manual_seed(6)
    mask = torch.rand(2, 4, 4, generator=g) > 0.6
    total, n_p = 0.0, 0
    for i in range(2):
        for y in range(4):
            for x in range(4):
                if mask[i, y, x]:
                    n_p += 1
                    total += sum(
                        (float(s[i, c, y, x]) - float(t[i, c, y, x])) ** 2
                        for c in range(3)
                    )
    got = losses.imitation_loss(s, t, mask)
    assert float(got) == pytest.approx(total / (2 * n_p), rel=1e-12)
    _student_only(losses.imitation_loss, s, t, mask)
    none = torch.zeros(2, 4, 4, dtype=torch.bool)
    assert float(losses.imitation_loss(s, t, none)) == 0


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: losses.chen_hint_loss(
                torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, 3)
            ),
            "one shape",
        ),
        (
            lambda: losses.chen_soft_loss(
                torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), T=0
            ),
            "temperature",
        ),
        (
            lambda: losses.chen_soft_loss(
                torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), bg_weight=-1
            ),
            "bg_weight",
        ),
        (
            lambda: losses.teacher_bounded_loss(
                torch.zeros(1, 2, 3, 3),
                torch.zeros(1, 2, 3, 3),
                torch.zeros(1, 4, 3),
                torch.zeros(1, 4, dtype=torch.long),
                torch.ones(1, 4),
            ),
            "target must",
        ),
        (
            lambda: losses.teacher_bounded_loss(
                torch.zeros(1, 2, 3, 3),
                torch.zeros(1, 2, 3, 3),
                torch.zeros(1, 4, 2),
                torch.zeros(1, 4, dtype=torch.long),
                torch.ones(1, 4),
                margin=-1,
            ),
            "margin",
        ),
        (
            lambda: losses.mimic_loss(
                torch.zeros(2, 2, 3, 3), torch.zeros(2, 2, 3, 3), [torch.zeros(1, 4)]
            ),
            "list of B = 2",
        ),
        (
            lambda: losses.mimic_loss(
                torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), [torch.zeros(1, 5)]
            ),
            r"\(k, 4\)",
        ),
        (lambda: losses.imitation_mask([torch.zeros(1, 4)], (4, 4), psi=0), "psi"),
        (lambda: losses.imitation_anchors(sizes=(0, 16)), "sizes"),
        (
            lambda: losses.imitation_loss(
                torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 3), torch.ones(1, 4, 4)
            ),
            "mask must",
        ),
    ],
)
def test_bad_input_is_one_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()
