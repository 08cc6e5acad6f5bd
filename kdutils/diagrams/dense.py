"""Diagrams of chapter 16, distillation for segmentation and detection (the
survey's sections 5.1 and 5.2): what each dense method compares between a
frozen teacher network and the student, on the same scene. See
kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram


def _backbones(d: Diagram, head_t: str, head_s: str) -> tuple[str, str, str, str]:
    """Scene into two backbones, each followed by its task head; returns the
    ids of (teacher features, student features, teacher head, student head)."""
    x = d.data("scene x (64 × 64)", id="x")
    with d.group("teacher (frozen)", "teacher"):
        ft = d.teacher("backbone\n(ResNet, stride 4)", id="FT")
        ht = d.teacher(head_t, id="HT")
    with d.group("student (trained)", "student"):
        fs = d.student("backbone\n(ResNet, stride 4)", id="FS")
        hs = d.student(head_s, id="HS")
    d.edge(x, ft)
    d.edge(x, fs)
    d.edge(ft, ht, "F_T")
    d.edge(fs, hs, "F_S")
    return ft, fs, ht, hs


@diagram(
    "dense_seg",
    "Segmentation distillation (survey §5.2): pixel-wise and pair-wise "
    "(Liu et al. 2019), channel-wise (Shu et al. 2020)",
)
def _dense_seg(d: Diagram) -> None:
    ft, fs, ht, hs = _backbones(d, "FCN head → scores", "FCN head → scores")
    m = d.data("mask (11 classes)", id="m")
    ce = d.loss("CE(upsampled scores, mask)", id="ce")
    d.edge(hs, ce, "scores_S")
    d.edge(m, ce)
    pool_t = d.op("max-pool, cosine\nsimilarity of regions", id="pt")
    pool_s = d.op("max-pool, cosine\nsimilarity of regions", id="ps")
    pair = d.loss("pair-wise:\nmean (a_T − a_S)²", id="pair")
    d.edge(ft, pool_t, "F_T", detached=True)
    d.edge(fs, pool_s, "F_S")
    d.edge(pool_t, pair, "a_T", detached=True)
    d.edge(pool_s, pair, "a_S")
    pixel = d.loss("pixel-wise:\nKL per pixel, over classes", id="pixel")
    channel = d.loss(
        "channel-wise: τ² KL per channel,\nsoftmax over positions", id="chan"
    )
    for loss in (pixel, channel):
        d.edge(ht, loss, "scores_T", detached=True)
        d.edge(hs, loss, "scores_S")


@diagram(
    "dense_det",
    "Detection distillation (survey §5.1): Chen et al. 2017's three terms, "
    "Li et al. 2017's region mimicking, fine-grained imitation (Wang et al. 2019)",
)
def _dense_det(d: Diagram) -> None:
    ft, fs, ht, hs = _backbones(
        d, "heads: heat map, size, offset", "heads: heat map, size, offset"
    )
    boxes = d.data("boxes, classes", id="b")
    task = d.loss("focal(heat) + 0.1 L1(size)\n+ L1(offset)", id="task")
    d.edge(hs, task)
    d.edge(boxes, task)
    adapt = d.aux("1 × 1 adapter", id="A")
    d.edge(fs, adapt, "F_S")
    hint = d.loss("Chen: hint\nmean (A(F_S) − F_T)²", id="hint")
    mimic = d.loss("Li: mimic inside boxes\n(RoIAlign 7 × 7)", id="mimic")
    mask = d.op("imitation mask: cells whose\nanchors overlap a box", id="mask")
    fine = d.loss("fine-grained:\nmasked (A(F_S) − F_T)²", id="fine")
    for loss in (hint, mimic, fine):
        d.edge(adapt, loss, "A(F_S)")
        d.edge(ft, loss, "F_T", detached=True)
    d.edge(boxes, mimic, detached=True)
    d.edge(boxes, mask, detached=True)
    d.edge(mask, fine, detached=True)
    soft = d.loss("Chen: soft targets,\nbackground weight 1.5", id="soft")
    bounded = d.loss(
        "Chen: regression counted only\nwhile worse than the teacher", id="bnd"
    )
    for loss in (soft, bounded):
        d.edge(ht, loss, detached=True)
        d.edge(hs, loss)
    d.edge(boxes, bounded, detached=True)
