"""Diagrams of chapter 17, distillation for face recognition (the survey's
section 5.3): distribution distillation between easy and hard samples of one
network (Huang et al. 2020), the plain embedding distillation from a frozen
teacher network, and the inherited classifier (Shi et al. 2020). See
kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram


@diagram(
    "face_ddl",
    "Distribution distillation (Huang et al. 2020, survey §5.3): the easy "
    "samples' similarity distributions teach the hard samples' (one network)",
)
def _face_ddl(d: Diagram) -> None:
    easy = d.data("easy pairs\n(clean images)", id="xe")
    hard = d.data("hard pairs\n(masked or low-resolution)", id="xh")
    y = d.data("class labels", id="y")
    with d.group("one network, shared weights (trained)", "student"):
        ne = d.student("embedding net", id="NE")
        nh = d.student("embedding net", id="NH")
    d.edge(easy, ne)
    d.edge(hard, nh)
    arc = d.loss("ArcFace(e, y)\neasy + hard", id="arc")
    d.edge(ne, arc, "e_easy")
    d.edge(nh, arc, "e_hard")
    d.edge(y, arc)
    he = d.op("pair cosines S⁺, S⁻ →\nsoft histograms P⁺, P⁻", id="he")
    hh = d.op("pair cosines S⁺, S⁻ →\nsoft histograms Q⁺, Q⁻", id="hh")
    d.edge(ne, he, "e_easy")
    d.edge(nh, hh, "e_hard")
    kl = d.loss("0.1 KL(P⁺‖Q⁺)\n+ 0.02 KL(P⁻‖Q⁻)", id="kl")
    order = d.loss("order: 0.5 Σ (mean S⁻ − mean S⁺)\nover easy and hard", id="order")
    d.edge(he, kl, "teacher P (not detached)")
    d.edge(hh, kl, "student Q")
    d.edge(he, order)
    d.edge(hh, order)


@diagram(
    "face_embed",
    "Embedding distillation for verification: the student's embedding "
    "pointed where a frozen, bigger teacher's points",
)
def _face_embed(d: Diagram) -> None:
    x = d.data("images\n(clean and hard copies)", id="x")
    y = d.data("class labels", id="y")
    t = d.teacher("teacher embedding net\n(frozen)", id="T")
    s = d.student("student embedding net", id="S")
    d.edge(x, t)
    d.edge(x, s)
    arc = d.loss("ArcFace(e_S, y)", id="arc")
    d.edge(s, arc, "e_S")
    d.edge(y, arc)
    cos = d.loss("1 − mean cos(e_S, e_T)", id="cos")
    d.edge(s, cos, "e_S")
    d.edge(t, cos, "e_T", detached=True)


@diagram(
    "face_inherit",
    "The inherited classifier (Shi et al. 2020, survey §5.3): ArcFace against "
    "the teacher's class centres, frozen; no teacher network runs",
)
def _face_inherit(d: Diagram) -> None:
    x = d.data("images\n(clean and hard copies)", id="x")
    y = d.data("class labels", id="y")
    with d.group("the trained teacher's ArcFace head", "teacher"):
        w = d.teacher("class centres W_T\n(copied, frozen)", id="WT")
    s = d.student("student embedding net", id="S")
    d.edge(x, s)
    arc = d.loss("ArcFace(e_S, y; W_T)", id="arc")
    d.edge(s, arc, "e_S")
    d.edge(w, arc, "W_T", detached=True)
    d.edge(y, arc)
