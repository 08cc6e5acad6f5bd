"""Diagrams of chapter 12, distilling into small networks (survey section 3.2):
early-stopped KD, teacher assistants (TAKD), densely guided KD (DGKD) and
stepwise relational distillation (the stand-in for Liu & Zhang 2021).
See kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram


@diagram("eskd", "Early-stopped KD (Cho & Hariharan 2019): the teacher leaves at sE")
def _eskd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    pt = d.op("softmax(l_T / T)", id="pt")
    ps = d.op("log softmax(l_S / T)", id="ps")
    switch = d.op("only in epochs\ne < sE", id="switch")
    kl = d.loss("(1 − λ) T² KL(p_T ‖ p_S)", id="kl")
    ce = d.loss("λ CE(l_S, t)\n(weight 1 after sE)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, pt, "l_T", detached=True)
    d.edge(pt, switch, detached=True)
    d.edge(switch, kl, detached=True)
    d.edge(s, ps, "l_S")
    d.edge(ps, kl)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("takd", "TAKD (Mirzadeh et al. 2019): teacher → assistant → student")
def _takd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    with d.group("stage 1: the assistant learns from the teacher"):
        t = d.teacher("teacher\n(trained alone, frozen)", id="T")
        a1 = d.student("assistant A\n(trained)", id="A1")
        kd1 = d.loss("KD, Eq. (1)", id="kd1")
    with d.group("stage 2: the student learns from the assistant"):
        a2 = d.teacher("assistant A\n(finished, frozen)", id="A2")
        s = d.student("student\n(trained)", id="S")
        kd2 = d.loss("KD, Eq. (1)", id="kd2")
    d.edge(x, t)
    d.edge(x, a1)
    d.edge(t, kd1, "l_T", detached=True)
    d.edge(a1, kd1, "l_A")
    d.edge(a1, a2, "its run becomes\nthe next teacher", style="bold", color="#b35900")
    d.edge(x, s)
    d.edge(a2, kd2, "l_A", detached=True)
    d.edge(s, kd2, "l_S")


@diagram("dgkd", "Densely guided KD (Son et al. 2021): every larger model guides")
def _dgkd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    # The guides, largest first: the teacher and every assistant before it.
    t = d.teacher("teacher\n(frozen)", id="T")
    a = d.teacher("assistant(s)\n(distilled earlier, frozen)", id="A")
    d.same_rank(t, a)
    drop = d.op("drop d guides\nat random, per batch", id="drop")
    s = d.student("student", id="S")
    kl = d.loss("(1 − λ) Σ_kept T² KL(p_g ‖ p_S)", id="kl")
    ce = d.loss("λ CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, a)
    d.edge(x, s)
    d.edge(t, drop, "l_T", detached=True)
    d.edge(a, drop, "l_A", detached=True)
    d.edge(drop, kl, "kept guides' p_g(T)", detached=True)
    d.edge(s, kl, "l_S")
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram(
    "stepwise_rkd",
    "Stepwise relational distillation (after Liu & Zhang 2021): RKD + KD per step",
)
def _stepwise_rkd(d: Diagram) -> None:
    x = d.data("batch x¹ … x_B", id="x")
    with d.group("step 1: the intermediate network learns from the teacher"):
        t = d.teacher("teacher\n(trained alone, frozen)", id="T")
        a1 = d.student("intermediate A\n(trained)", id="A1")
        r1 = d.loss("RKD: distances, angles\n(relations between samples)", id="r1")
        k1 = d.loss("KD on each sample\n(individual information)", id="k1")
    with d.group("step 2: the student learns from the intermediate network"):
        a2 = d.teacher("intermediate A\n(finished, frozen)", id="A2")
        s = d.student("student\n(trained)", id="S")
        r2 = d.loss("RKD: distances, angles\n(relations between samples)", id="r2")
        k2 = d.loss("KD on each sample\n(individual information)", id="k2")
    d.edge(x, t)
    d.edge(x, a1)
    d.edge(t, r1, "e_T", detached=True)
    d.edge(t, k1, "l_T", detached=True)
    d.edge(a1, r1, "e_A")
    d.edge(a1, k1, "l_A")
    d.edge(a1, a2, "its run becomes\nthe next teacher", style="bold", color="#b35900")
    d.edge(x, s)
    d.edge(a2, r2, "e_A", detached=True)
    d.edge(a2, k2, "l_A", detached=True)
    d.edge(s, r2, "e_S")
    d.edge(s, k2, "l_S")
