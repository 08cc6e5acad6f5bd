"""Diagrams of chapter 1: the survey's taxonomy (its Fig. 1), traditional KD
(its Fig. 2) and the student trained alone."""

from __future__ import annotations

from . import Diagram, diagram


@diagram(
    "survey_fig1", "The survey's taxonomy of knowledge distillation (after its Fig. 1)"
)
def _taxonomy(d: Diagram) -> None:
    # A map of topics, not a method: every box is drawn in the neutral style.
    root = d.data("knowledge distillation", id="root")
    perf = d.data("performance-oriented (§2)", id="perf")
    comp = d.data("compression-oriented (§3)", id="comp")
    d.edge(root, perf)
    d.edge(root, comp)
    d.edge(perf, d.data("improving the output (§2.1, ch. 2)", id="out"))
    what = d.data("representations of knowledge (§2.2)", id="what")
    how = d.data("ways of learning it (§2.3)", id="how")
    d.edge(perf, what)
    d.edge(perf, how)
    for label, nid in [
        ("fitting feature maps (§2.2.1, ch. 3)", "fit"),
        ("extracting from feature maps (§2.2.2, ch. 4)", "ext"),
        ("structural knowledge (§2.2.3, ch. 5)", "rel"),
    ]:
        d.edge(what, d.data(label, id=nid))
    for label, nid in [
        ("online (§2.3.1, ch. 6)", "onl"),
        ("self-distillation (§2.3.2, ch. 7)", "self"),
        ("multi-teacher (§2.3.3, ch. 8)", "multi"),
        ("progressive (§2.3.4, ch. 9)", "prog"),
        ("adversarial (§2.3.5, ch. 10)", "adv"),
    ]:
        d.edge(how, d.data(label, id=nid))
    d.edge(comp, d.data("adjusting the architecture (§3.1, ch. 11)", id="nas"))
    d.edge(comp, d.data("training small networks (§3.2, ch. 12)", id="small"))


@diagram("kd", "Traditional KD, survey Eq. (1) (after the survey's Fig. 2)")
def _kd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen, eval mode)", id="T")
    s = d.student("student", id="S")
    pt = d.op("softmax(l_T / T)", id="pt")
    ps = d.op("log softmax(l_S / T)", id="ps")
    kl = d.loss("(1 − λ) T² KL(p_T ‖ p_S)", id="kl")
    ce = d.loss("λ CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, pt, "l_T", detached=True)
    d.edge(pt, kl, detached=True)
    d.edge(s, ps, "l_S")
    d.edge(ps, kl)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("ce", "The student trained alone (Table 1's direct training)")
def _ce(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    s = d.student("student", id="S")
    ce = d.loss("CE(l_S, t)", id="ce")
    d.edge(x, s)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)
