"""Diagrams of chapter 9, progressive distillation (survey section 2.3.4):
``snapshot``, ``rco`` and the pipelines ``route_kd`` and ``born_again``.
See kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram


@diagram("snapshot", "Snapshot distillation: the network's last snapshot teaches it")
def _snapshot(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    s = d.student("network\n(cycle k)", id="S")
    snap = d.teacher(
        "snapshot\n(the network at the\nstart of cycle k, frozen)", id="snap"
    )
    lr = d.op("cyclic learning rate\n½(1 + cos(π t / n))", id="lr")
    pt = d.op("softmax(l_snap / T)", id="pt")
    ps = d.op("log softmax(l_S)\n(T = 1)", id="ps")
    kl = d.loss("KL(q ‖ p_S)\n(no T²)", id="kl")
    ce = d.loss("(1 + 1/T) CE(l_S, t)", id="ce")
    d.edge(x, s)
    d.edge(x, snap)
    d.edge(s, snap, "copy at the\ncycle's start", detached=True, constraint="false")
    d.edge(lr, s, "step size", style="dotted")
    d.edge(snap, pt, "l_snap", detached=True)
    d.edge(pt, kl, "q", detached=True)
    d.edge(s, ps, "l_S")
    d.edge(ps, kl)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("rco", "Route-constrained optimisation: anchors of one teacher run, in order")
def _rco(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    with d.group("anchors: one teacher run's checkpoints (frozen)", kind="teacher"):
        anchors = [
            d.teacher("anchor 1\n(after epoch e_1)", id="A1"),
            d.teacher("anchor 2\n(after epoch e_2)", id="A2"),
            d.teacher("anchor M\n(final teacher)", id="AM"),
        ]
    pick = d.op("stage k of the student's\nepochs: anchor k only", id="pick")
    s = d.student("student", id="S")
    pt = d.op("softmax(l_Ak / T)", id="pt")
    ps = d.op("log softmax(l_S / T)", id="ps")
    kl = d.loss("(1 − λ) T² KL(p_Ak ‖ p_S)", id="kl")
    ce = d.loss("λ CE(l_S, t)", id="ce")
    for a in anchors:
        d.edge(x, a)
        d.edge(a, pick, detached=True)
    d.edge(pick, pt, "l_Ak", detached=True)
    d.edge(pt, kl, detached=True)
    d.edge(x, s)
    d.edge(s, ps, "l_S")
    d.edge(ps, kl)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram(
    "route_kd",
    "Pipeline route_kd: a teacher run kept at M epochs, then the student along them",
)
def _route_kd(d: Diagram) -> None:
    data = d.data("training set\n(images, labels t)", id="data")
    with d.group("stage 1: one teacher run (CE), save_epochs", kind="teacher"):
        a1 = d.teacher("teacher\nafter epoch e_1", id="A1")
        a2 = d.teacher("teacher\nafter epoch e_2", id="A2")
        am = d.teacher("teacher\nafter epoch e_M\n(finished)", id="AM")
        d.same_rank(a1, a2, am)
    with d.group("stage 2: the student, method rco", kind="student"):
        s = d.student("student\n(stage k: anchor k)", id="S")
        loss = d.loss("λ CE + (1 − λ) T² KL\nto the current anchor", id="L")
    d.edge(data, a1)
    d.edge(a1, a2, "training continues")
    d.edge(a2, am, "…")
    for a, k in ((a1, "1"), (a2, "2"), (am, "M")):
        d.edge(a, loss, f"stage {k}", detached=True)
    d.edge(data, s)
    d.edge(s, loss, "l_S")


@diagram(
    "born_again",
    "Pipeline born_again: each generation of one architecture teaches the next",
)
def _born_again(d: Diagram) -> None:
    data = d.data("training set\n(images, labels t)", id="data")
    gens = [
        d.student(f"generation {k}\n(student's architecture)", id=f"G{k}")
        for k in range(4)
    ]
    ce = d.loss("CE(l_G0, t)\n(trained alone)", id="ce")
    kds = [
        d.loss(f"KL(p_G{k} ‖ p_G{k + 1})\nT = 1, no labels", id=f"kd{k + 1}")
        for k in range(3)
    ]
    d.edge(data, gens[0])
    d.edge(gens[0], ce)
    d.edge(data, ce)
    for k, kl in enumerate(kds):
        d.edge(gens[k], kl, "frozen", detached=True)
        d.edge(gens[k + 1], kl)
    d.same_rank(*gens)


@diagram(
    "prokt", "ProKT (Shi et al. 2021): a teacher trained with the student, held close"
)
def _prokt(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    tch = d.teacher("teacher\n(trained from scratch\nwith the student)", id="T")
    s = d.student("student", id="S")
    lt_ce = d.loss("(1 − λ) CE(l_T, t)", id="tce")
    lt_kl = d.loss("λ KL(p_S ‖ p_T)\nthe teacher pulled\ntowards the student", id="tkl")
    ls_kd = d.loss("T² KL(p_T ‖ p_S)\nthe student follows", id="kd")
    d.edge(x, tch)
    d.edge(x, s)
    d.edge(tch, lt_ce, "l_T")
    d.edge(y, lt_ce)
    d.edge(tch, lt_kl, "l_T")
    d.edge(s, lt_kl, "l_S", detached=True)
    d.edge(s, ls_kd, "l_S")
    d.edge(tch, ls_kd, "l_T", detached=True)
    d.same_rank(lt_ce, lt_kl, ls_kd)


@diagram(
    "collab",
    "Collaborative teaching (after Zhao et al. 2019): a scratch and an expert teacher",
)
def _collab(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    expert = d.teacher("expert teacher\n(pretrained, frozen)", id="E")
    scratch = d.teacher(
        "scratch teacher\n(trained from scratch\nwith the student)", id="C"
    )
    s = d.student("student", id="S")
    at = d.loss("γ AT(stages_S, stages_E)\nwhere to look", id="at")
    kd_ = d.loss("β T² KL(p_C(T) ‖ p_S(T))\nstep by step", id="kd")
    ce = d.loss("α CE(l_S, t)", id="ce")
    cce = d.loss("CE(l_C, t)", id="cce")
    for n in (expert, scratch, s):
        d.edge(x, n)
    d.edge(expert, at, "attention maps", detached=True)
    d.edge(s, at, "attention maps")
    d.edge(scratch, kd_, "l_C", detached=True)
    d.edge(s, kd_, "l_S")
    d.edge(s, ce)
    d.edge(scratch, cce)
    d.edge(y, ce)
    d.edge(y, cce)
