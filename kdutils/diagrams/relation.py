"""Diagrams of the relation family, chapter 5 (survey §2.2.3, Eq. 4): the
survey's Fig. 5 and one schematic per method that compares relations among
the samples of a batch, and CRCD's, which relates samples to anchors against a
memory bank. CRD's diagram is drawn with the output family's.
See kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram

TEACHER = "teacher\n(frozen, eval mode)"


def _pair(d: Diagram) -> tuple[str, str, str, str]:
    """The shared start of every relation diagram: image, label, teacher, student.

    Returns the ids of the labels, the teacher, the student and the CE loss
    the student's logits go to (every method here keeps the label loss).
    """
    _, y, t, s = d.teacher_student("batch x¹ … x_B", "labels t", TEACHER)
    ce = d.label_loss(s, y)
    return y, t, s, ce


@diagram(
    "survey_fig5",
    "KD with structural knowledge, three samples (after the survey's Fig. 5)",
)
def _fig5(d: Diagram) -> None:
    # Three images go through both networks; each network's features are
    # turned into relations among the three, and only the relations are compared.
    xs = [d.data(f"sample x{c}", id=f"x{i}") for i, c in enumerate("¹²³", 1)]
    t = d.teacher(TEACHER, id="T")
    s = d.student("student", id="S")
    m_t = d.op("M(f_T¹, f_T², f_T³)\n3 × 3 relations", id="mt")
    m_s = d.op("M(f_S¹, f_S², f_S³)\n3 × 3 relations", id="ms")
    loss = d.loss("L_KD = DF(M_S, M_T)\nsurvey Eq. (4)", id="df")
    for x in xs:
        d.edge(x, s)
        d.edge(x, t)
    d.same_rank(*xs)
    d.edge(xs[0], xs[1], style="invis")
    d.edge(xs[1], xs[2], style="invis")
    d.edge(s, m_s, "f_S¹, f_S², f_S³")
    d.edge(t, m_t, "f_T¹, f_T², f_T³", detached=True)
    d.edge(m_s, loss)
    d.edge(m_t, loss, detached=True)


@diagram("rkd", "Relational KD (Park et al. 2019): distances and angles")
def _rkd(d: Diagram) -> None:
    _, t, s, _ = _pair(d)
    dt = d.op("ψ_D: ‖e_i − e_j‖ / μ", id="dt")
    at = d.op("ψ_A: cos ∠(e_j, e_i, e_k)", id="at")
    ds = d.op("ψ_D: ‖e_i − e_j‖ / μ", id="ds")
    as_ = d.op("ψ_A: cos ∠(e_j, e_i, e_k)", id="as")
    ld = d.loss("25 · smooth L1\n(B × B distances)", id="ld")
    la = d.loss("50 · smooth L1\n(B × B × B angles)", id="la")
    d.edge(t, dt, "e_T (pool)", detached=True)
    d.edge(t, at, "e_T", detached=True)
    d.edge(s, ds, "e_S (pool)")
    d.edge(s, as_, "e_S")
    d.edge(dt, ld, detached=True)
    d.edge(ds, ld)
    d.edge(at, la, detached=True)
    d.edge(as_, la)


@diagram("sp", "Similarity-preserving KD (Tung & Mori 2019): batch Gram matrices")
def _sp(d: Diagram) -> None:
    _, t, s, _ = _pair(d)
    gt = d.op("G_T = f_T f_Tᵀ  (B × B)\nrows L2-normalised", id="gt")
    gs = d.op("G_S = f_S f_Sᵀ  (B × B)\nrows L2-normalised", id="gs")
    loss = d.loss("3000 · ‖G_T − G_S‖²_F / B²", id="sp")
    d.edge(t, gt, "f_T (layer3)", detached=True)
    d.edge(s, gs, "f_S (layer3)")
    d.edge(gt, loss, detached=True)
    d.edge(gs, loss)


@diagram("pkt", "Probabilistic knowledge transfer (Passalis & Tefas 2018)")
def _pkt(d: Diagram) -> None:
    _, t, s, _ = _pair(d)
    pt = d.op("P_T: (cos + 1) / 2\neach row / its sum", id="pt")
    ps = d.op("P_S: (cos + 1) / 2\neach row / its sum", id="ps")
    loss = d.loss("30000 · KL(P_T ‖ P_S)\n(mean over B² entries)", id="pkt")
    d.edge(t, pt, "e_T (pool)", detached=True)
    d.edge(s, ps, "e_S (pool)")
    d.edge(pt, loss, detached=True)
    d.edge(ps, loss)


@diagram("cc", "Correlation congruence (Peng et al. 2019), RepDistiller's form")
def _cc(d: Diagram) -> None:
    _, t, s, _ = _pair(d)
    # Both heads are trained with the student; the teacher's features are
    # constants, but its head's output is not.
    ht = d.aux("linear head\nD_T → 128", id="ht")
    hs = d.aux("linear head\nD_S → 128", id="hs")
    delta = d.op("δ_i = |g_S,i − g_T,i|", id="delta")
    loss = d.loss("0.02 · mean_i ⟨δ_i, δ_i+1⟩", id="cc")
    d.edge(t, ht, "e_T (pool)", detached=True)
    d.edge(s, hs, "e_S (pool)")
    d.edge(ht, delta, "g_T")
    d.edge(hs, delta, "g_S")
    d.edge(delta, loss)


@diagram("irg", "Instance relationship graph (Liu et al. 2019a)")
def _irg(d: Diagram) -> None:
    _, t, s, _ = _pair(d)
    et = d.op("edges: ‖e_i − e_j‖²\n/ its maximum", id="et")
    es = d.op("edges: ‖e_i − e_j‖²\n/ its maximum", id="es")
    tt = d.op("transforms: per sample\n‖f^(l+1) − f^l‖² (pooled)", id="tt")
    ts = d.op("transforms: per sample\n‖f^(l+1) − f^l‖² (pooled)", id="ts")
    le = d.loss("0.005 · edge loss", id="le")
    lt = d.loss("0.005 · transform loss", id="lt")
    lv = d.loss("vertex ‖l_S − l_T‖²\n(weight 0 here)", id="lv")
    d.edge(t, et, "e_T (pool)", detached=True)
    d.edge(t, tt, "stage maps", detached=True)
    d.edge(s, es, "e_S (pool)")
    d.edge(s, ts, "stage maps")
    d.edge(et, le, detached=True)
    d.edge(es, le)
    d.edge(tt, lt, detached=True)
    d.edge(ts, lt)
    d.edge(t, lv, "l_T", detached=True)
    d.edge(s, lv, "l_S")


@diagram("cskd", "Category structure KD (Chen et al. 2020c): intra and inter")
def _cskd(d: Diagram) -> None:
    y, t, s, _ = _pair(d)
    label = "class centres c_k\nintra: ‖e_i − c_(y_i)‖\ninter: ‖c_k − c_m‖\n(each / its mean)"
    st = d.op(label, id="st")
    ss = d.op(label, id="ss")
    li = d.loss("25 · smooth L1 (intra)", id="li")
    lo = d.loss("25 · smooth L1 (inter)", id="lo")
    d.edge(t, st, "e_T (pool)", detached=True)
    d.edge(s, ss, "e_S (pool)")
    d.edge(y, st)
    d.edge(y, ss)
    d.edge(st, li, detached=True)
    d.edge(st, lo, detached=True)
    d.edge(ss, li)
    d.edge(ss, lo)


@diagram("crcd", "Complementary relation contrastive distillation (Zhu et al. 2021)")
def _crcd(d: Diagram) -> None:
    y, t, s, _ = _pair(d)
    kd = d.loss("0.9 · KD(l_S, l_T)", id="kd")
    grad = d.op("gradient elements\n∂CE/∂e (pool)", id="grad")
    hs = d.aux("heads (features, gradients)\nLinear, L2-norm", id="hs")
    ht = d.aux("heads (features, gradients)\nLinear, L2-norm", id="ht")
    mem = d.op(
        "memory banks M_S, M_T per element\n(one entry per training image,\n"
        "momentum update)",
        id="mem",
    )
    rel = d.op(
        "anchors a_j: the batch's entries\nrelations n(v − a_j), n(m − a_j)\n"
        "own entry + K negatives",
        id="rel",
    )
    nce = d.loss(
        "NCE on relations\n(features + gradients,\nboth anchor sides)", id="nce"
    )
    d.edge(t, kd, "l_T", detached=True)
    d.edge(s, kd, "l_S")
    d.edge(t, grad, "e_T, l_T", detached=True)
    d.edge(s, grad, "e_S, l_S")
    d.edge(s, hs, "e_S")
    d.edge(t, ht, "e_T", detached=True)
    d.edge(grad, hs, "∂CE/∂e_S")
    d.edge(grad, ht, "∂CE/∂e_T")
    d.edge(hs, rel, "v_S")
    d.edge(ht, rel, "v_T")
    d.edge(hs, mem, "update", detached=True)
    d.edge(ht, mem, "update", detached=True)
    d.edge(mem, rel, detached=True)
    d.edge(y, grad)
    d.edge(y, rel, "classes of\nthe negatives")
    d.edge(rel, nce, "scores")
