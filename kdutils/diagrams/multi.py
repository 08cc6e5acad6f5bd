"""Diagrams of chapter 8, multi-teacher distillation (survey section 2.3.3):
the survey's Fig. 8, ``avgkd``, ``amtmlkd``, ``feed`` and the ``multi_teacher`` pipeline.
See kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram


@diagram(
    "survey_fig8",
    "Multi-teacher distillation, Eq. (7): E(·) merges the teachers' outputs "
    "(after the survey's Fig. 8)",
)
def _survey_fig8(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    with d.group("M teachers (frozen)", kind="teacher"):
        ts = [d.teacher(f"teacher {m}", id=f"T{m}") for m in ("1", "2", "M")]
    e = d.op("E(l_T1, l_T2, …, l_TM)\nintegration function", id="E")
    s = d.student("student", id="S")
    kl = d.loss("L_KD(l_S, E(·))", id="kd")
    ce = d.loss("L_task(l_S, t)", id="ce")
    for t, m in zip(ts, ("1", "2", "M"), strict=True):
        d.edge(x, t)
        d.edge(t, e, f"l_T{m}", detached=True)
    d.edge(x, s)
    d.edge(e, kl, detached=True)
    d.edge(s, kl, "l_S")
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("avgkd", "Averaged soft targets of M teachers (after You et al. 2017)")
def _avgkd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    with d.group("M teachers (frozen)", kind="teacher"):
        ts = [d.teacher(f"teacher {m}", id=f"T{m}") for m in ("1", "2", "M")]
    pt = d.op("softmax(l_Tm / T)\nfor each m", id="pt")
    mean = d.op("E = mean over m\nq = (1/M) Σ p_Tm", id="E")
    s = d.student("student", id="S")
    ps = d.op("log softmax(l_S / T)", id="ps")
    kl = d.loss("(1 − λ) T² KL(q ‖ p_S)", id="kl")
    ce = d.loss("λ CE(l_S, t)", id="ce")
    for t in ts:
        d.edge(x, t)
        d.edge(t, pt, detached=True)
    d.edge(pt, mean, detached=True)
    d.edge(mean, kl, "q", detached=True)
    d.edge(x, s)
    d.edge(s, ps, "l_S")
    d.edge(ps, kl)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram(
    "amtmlkd",
    "AMTML-KD: per-sample teacher weights μ from the student's features "
    "(Liu et al. 2020d)",
)
def _amtmlkd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    tm = d.teacher("M teachers\n(frozen)", id="T")
    s1 = d.student("student\nstages 1–2", id="S1")
    s2 = d.student("student\nstage 3, pool, fc", id="S2")
    conn = d.aux("1×1 connector r_m\nper teacher", id="conn")
    adapter = d.aux("adapter θ_m, w\nμ = softmax_m(w·(θ_m ⊙ e))", id="adapter")
    e = d.op("E: q = Σ_m μ_m softmax(l_Tm / T)", id="E")
    hint = d.loss("hint: Σ_m ‖r_m(f_S) − f_Tm‖²", id="hint")
    reg = d.loss("reg: ‖w‖² + Σ_m ‖θ_m‖²", id="reg")
    kl = d.loss("kd: T² KL(q ‖ p_S)", id="kl")
    rkd = d.loss("rkd: distance + angle", id="rkd")
    ce = d.loss("ce: CE(l_S, t)", id="ce")
    d.same_rank(hint, reg, kl, rkd, ce)
    d.edge(x, tm)
    d.edge(x, s1)
    d.edge(s1, conn, "f_S")
    d.edge(conn, hint)
    d.edge(tm, hint, "f_Tm (layer2)", detached=True)
    d.edge(s1, s2)
    d.edge(s2, adapter, "e")
    d.edge(adapter, reg)
    d.edge(adapter, e, "μ")
    d.edge(tm, e, "l_Tm", detached=True)
    d.edge(e, kl, "q")
    d.edge(e, rkd, "q", detached=True)
    d.edge(s2, kl, "l_S")
    d.edge(s2, rkd, "log p_S")
    d.edge(s2, ce, "l_S")
    d.edge(y, ce)


@diagram(
    "multi_teacher",
    "Pipeline multi_teacher: every teacher trained alone, then one student from all",
)
def _multi_teacher(d: Diagram) -> None:
    data = d.data("training set\n(images, labels t)", id="data")
    with d.group("stage 1: each teacher alone on CE, once", kind="teacher"):
        ts = [
            d.teacher(f"teacher {m}\n(then frozen)", id=f"T{m}")
            for m in ("1", "2", "M")
        ]
    with d.group("stage 2: cfg.method (avgkd or amtmlkd)", kind="student"):
        e = d.op("E(l_T1, …, l_TM)", id="E")
        s = d.student("student", id="S")
        loss = d.loss("L_task + L_KD(l_S, E(·))", id="L")
    for t in ts:
        d.edge(data, t)
        d.edge(t, e, detached=True)
    d.edge(data, s)
    d.edge(e, loss, detached=True)
    d.edge(s, loss, "l_S")


@diagram(
    "feed",
    "FEED (Park & Kwak 2019): one transformation of the student's map per teacher",
)
def _feed(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    with d.group("M teachers (frozen)", kind="teacher"):
        ts = [d.teacher(f"teacher {m}\nlast map f_{m}", id=f"T{m}") for m in ("1", "M")]
    s = d.student("student\nup to its last map f_S", id="S")
    head = d.student("pool, fc", id="head")
    with d.group("transformations, dropped after training", "aux"):
        trs = [d.aux(f"T_{m}: 3 convs\n+ leaky ReLU", id=f"tr{m}") for m in ("1", "M")]
    feed = d.loss("β Σ_m ‖T_m(f_S)/‖·‖ − f_m/‖·‖‖₁", id="feed")
    ce = d.loss("CE(l_S, t)", id="ce")
    d.edge(x, s)
    d.chain(s, head)
    for t, tr, m in zip(ts, trs, ("1", "M"), strict=True):
        d.edge(x, t)
        d.edge(s, tr, "f_S")
        d.edge(tr, feed, f"T_{m}(f_S)")
        d.edge(t, feed, f"f_{m}", detached=True)
    d.edge(head, ce, "l_S")
    d.edge(y, ce)
