"""Diagrams of chapter 7, self-distillation (survey §2.3.2): the survey's
Fig. 7, BYOT, BAKE and FRSKD (see kdutils/diagrams/__init__.py for the style)."""

from __future__ import annotations

from . import Diagram, diagram


@diagram(
    "survey_fig7",
    "Self-distillation, survey Eq. (6): deeper parts teach shallower ones "
    "(after the survey's Fig. 7)",
)
def _fig7(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.data("label t", id="t")
    parts = [d.student(f"part {i}", id=f"f{i}") for i in (1, 2, 3)]
    head = d.student("classifier", id="head")
    lt = d.loss("L_t(l, t)", id="lt")
    d.chain(x, *parts, head)
    d.edge(head, lt, "l")
    d.edge(t, lt)
    # Each deeper feature map is mapped back by R and compared with the one
    # before it: the knowledge flows from deep to shallow.
    for i in (1, 2):
        r = d.aux(f"R(f_{i + 1})", id=f"R{i + 1}")
        df = d.loss(f"DF(f_{i}, R(f_{i + 1}))", id=f"DF{i}")
        d.edge(parts[i], r, f"f_{i + 1}")
        d.edge(r, df)
        d.edge(parts[i - 1], df, f"f_{i}")


@diagram("byot", "Be your own teacher (Zhang et al. 2019): exits after every stage")
def _byot(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.data("label t", id="t")
    s1 = d.student("stem, layer1", id="s1")
    s2 = d.student("layer2", id="s2")
    s3 = d.student("layer3, pool, fc\n(deepest exit 3)", id="s3")
    with d.group("exits, dropped after training", "aux"):
        e1 = d.aux("exit 1\nbottleneck, pool, fc", id="e1")
        e2 = d.aux("exit 2\nbottleneck, pool, fc", id="e2")
    ce = d.loss("λ Σ_c CE(l_c, t)", id="ce")
    kd = d.loss("(1−λ) T² Σ_i CE(p_3, p_i)", id="kd")
    hint = d.loss("β Σ_i ‖F_i − F_3‖²", id="hint")
    d.chain(x, s1, s2, s3)
    d.edge(s1, e1)
    d.edge(s2, e2)
    d.edge(t, ce)
    for i, e in ((1, e1), (2, e2)):
        d.edge(e, ce, f"l_{i}")
        d.edge(e, kd, f"l_{i}")
        d.edge(e, hint, f"F_{i}")
    d.edge(s3, ce, "l_3")
    d.edge(s3, kd, "p_3 = softmax(l_3 / T)", detached=True)
    d.edge(s3, hint, "F_3", detached=True)


@diagram("bake", "BAKE (Ge et al. 2021): the batch's predictions refine each target")
def _bake(d: Diagram) -> None:
    x = d.data("batch of B images", id="x")
    t = d.data("labels t", id="t")
    s = d.student("student", id="S")
    aff = d.op("affinities A\nsoftmax of cosines, A_bb = 0", id="A")
    p = d.op("P = softmax(l / T)", id="P")
    q = d.op("Q = (1−ω)(I − ωA)⁻¹ P", id="Q")
    kl = d.loss("T² KL(Q_b ‖ p_b)", id="kl")
    ce = d.loss("CE(l, t)", id="ce")
    d.edge(x, s)
    d.edge(s, aff, "pooled features f", detached=True)
    d.edge(s, p, "l", detached=True)
    d.edge(aff, q, detached=True)
    d.edge(p, q, detached=True)
    d.edge(q, kl, detached=True)
    d.edge(s, kl, "l")
    d.edge(s, ce, "l")
    d.edge(t, ce)


@diagram(
    "frskd",
    "FRSKD (Ji et al. 2021): a self-teacher refines the classifier's own features",
)
def _frskd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.data("label t", id="t")
    stages = [d.student(f"stage {i}", id=f"F{i}") for i in (1, 2, 3)]
    head = d.student("pool, fc", id="head")
    with d.group("self-teacher, dropped after training", "aux"):
        bifpn = d.aux(
            "BiFPN layer\nlateral, top-down, bottom-up\n(weighted fusion)", id="bifpn"
        )
        t_head = d.aux("pool, fc", id="thead")
    ce = d.loss("CE(l, t)", id="ce")
    self_ce = d.loss("CE(l_T, t)", id="selfce")
    kd = d.loss("α T² KL(p_T ‖ p)", id="kd")
    at = d.loss("β Σ_i AT(F_i, R_i)", id="at")
    d.chain(x, *stages, head)
    for i, s in enumerate(stages, 1):
        d.edge(s, bifpn, f"F_{i}")
        d.edge(s, at, f"F_{i}")
    d.edge(bifpn, t_head, "R_3")
    d.edge(bifpn, at, "R_1, R_2, R_3", detached=True)
    d.edge(t_head, self_ce, "l_T")
    d.edge(t_head, kd, "p_T", detached=True)
    d.edge(head, kd, "l")
    d.edge(head, ce, "l")
    d.edge(t, ce)
    d.edge(t, self_ce)
