"""Diagrams of chapter 4: knowledge extracted from feature maps (survey §2.2.2).

The survey's Fig. 4 (feature aggregation, its Eq. (3)), the fixed summaries
AT, FSP and NST, the learned ones AFD, AFM and ReviewKD, and the guided
ones TOFD and MGD. See
kdutils/diagrams/__init__.py for the style; the labels follow the book's
notation (f_S, f_T, l_S, γ for a method's feature-term weight).
"""

from __future__ import annotations

from . import SUP, Diagram, diagram


@diagram(
    "survey_fig4",
    "KD with feature aggregation, Eq. (3) (after the survey's Fig. 4)",
)
def _fig4(d: Diagram) -> None:
    x, y, t, s = d.layered_teacher_student()
    agg_t = d.aux("aggregate\nΣ_j β_j f_Tʲ", id="aggT")
    agg_s = d.aux("aggregate\nΣ_i α_i f_Sⁱ", id="aggS")
    for i in (1, 2, 3):
        d.edge(t[i - 1], agg_t, f"f_T{SUP[i]}", detached=True)
        d.edge(s[i - 1], agg_s, f"f_S{SUP[i]}")
    df = d.loss("DF(Σ α_i f_Sⁱ, Σ β_j f_Tʲ)", id="df")
    d.edge(agg_t, df, detached=True)
    d.edge(agg_s, df)
    task = d.loss("task loss\nCE(l_S, t)", id="ce")
    d.edge(s[2], task, "l_S")
    d.edge(y, task)


@diagram("at", "Attention transfer: match where each stage is active")
def _at(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    qt = d.op("Q_T = normalise(mean_c f_T²)\nper stage j", id="qt")
    qs = d.op("Q_S = normalise(mean_c f_S²)\nper stage j", id="qs")
    at = d.loss("γ Σ_j mean (Q_Sʲ − Q_Tʲ)²", id="at")
    d.edge(t, qt, "f_Tʲ", detached=True, minlen="2")
    d.edge(qt, at, detached=True)
    d.edge(s, qs, "f_Sʲ", minlen="2")
    d.edge(qs, at)
    d.label_loss(s, y)


@diagram("fsp", "FSP: match the flow matrices between layers, then train on labels")
def _fsp(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    gt = d.op("G_T = mean_hw f_Tⁱ (f_Tⁱ⁺¹)ᵀ\n(Cᵢ × Cᵢ₊₁)", id="gt")
    gs = d.op("G_S = mean_hw f_Sⁱ (f_Sⁱ⁺¹)ᵀ\n(Cᵢ × Cᵢ₊₁)", id="gs")
    fsp = d.loss("stage 1:\nΣ_i mean (G_S − G_T)²", id="fsp")
    d.edge(t, gt, "f_Tⁱ, f_Tⁱ⁺¹", detached=True, minlen="2")
    d.edge(gt, fsp, detached=True)
    d.edge(s, gs, "f_Sⁱ, f_Sⁱ⁺¹", minlen="2")
    d.edge(gs, fsp)
    d.label_loss(s, y, "stage 2:\nCE(l_S, t)")


@diagram("nst", "NST: match the distribution of the channels' spatial patterns")
def _nst(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    nt = d.op("each channel's map,\nL2-normalised", id="nt")
    ns = d.op("each channel's map,\nL2-normalised", id="ns")
    mmd = d.loss("γ Σ_j MMD²(S, T)\nk(a, b) = (aᵀb)²", id="mmd")
    d.edge(t, nt, "f_Tʲ", detached=True, minlen="2")
    d.edge(nt, mmd, detached=True)
    d.edge(s, ns, "f_Sʲ", minlen="2")
    d.edge(ns, mmd)
    d.label_loss(s, y)


@diagram("afd", "AFD: learned channel weights ρ from the teacher's features")
def _afd(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    gap = d.op("global average\npool", id="gap")
    att = d.aux("attention\n1x1 conv, ReLU, 1x1 conv,\nsigmoid, sum to 1", id="att")
    nt = d.op("each channel map\n/ its L2 norm", id="nt")
    ns = d.op("each channel map\n/ its L2 norm", id="ns")
    afd = d.loss("γ mean_j Σ_c ρ_c\nmean_hw (f̂_S,c − f̂_T,c)²", id="afd")
    d.edge(t, gap, "f_Tʲ", detached=True, minlen="2")
    d.edge(gap, att, detached=True)
    d.edge(att, afd, "ρʲ (B × C)")
    d.edge(t, nt, "f_Tʲ", detached=True, minlen="2")
    d.edge(nt, afd, detached=True)
    d.edge(s, ns, "f_Sʲ", minlen="2")
    d.edge(ns, afd)
    d.label_loss(s, y)


@diagram("afm", "AFM (Ji et al.): every teacher block attends over all student blocks")
def _afm(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    q = d.aux("query q_t\n(linear + BN)", id="q")
    k = d.aux("key k_st\n(linear, BN, ReLU,\nbilinear)", id="k")
    a = d.aux("a_ts = softmax_s\n((k_st·q_t + p_tᵀp_s) / √d)", id="a")
    vt = d.op("attention map\nv_Tᵗ", id="vt")
    vs = d.op("attention maps v_Sˢ,\npooled to block t's size", id="vs")
    afm = d.loss("γ Σ_t Σ_s a_ts\nmean_hw (v_Sˢ − v_Tᵗ)²", id="afm")
    kd = d.loss("γ_KD T² KL(p_T ‖ p_S)", id="kd")
    d.edge(t, q, "mean_hw f_Tᵗ", detached=True)
    d.edge(s, k, "mean_hw f_Sˢ")
    d.edge(q, a)
    d.edge(k, a)
    d.edge(a, afm, "a_ts")
    d.edge(t, vt, "f_Tᵗ", detached=True)
    d.edge(vt, afm, detached=True)
    d.edge(s, vs, "f_Sˢ")
    d.edge(vs, afm)
    d.edge(t, kd, "l_T", detached=True)
    d.edge(s, kd, "l_S")
    d.label_loss(s, y)


@diagram("reviewkd", "ReviewKD: each student level fused with all deeper ones")
def _reviewkd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    # Two columns side by side: the student's levels and their fusion modules.
    s = [d.student(f"student\nstage {i}", id=f"S{i}") for i in (1, 2, 3)]
    s.append(d.student("student\nembedding", id="S4"))
    abf = [d.aux(f"fusion ABF {i}", id=f"A{i}") for i in (1, 2, 3, 4)]
    t = d.teacher("teacher (frozen)\npre-ReLU stage ends\nand embedding", id="T")
    hcl = d.loss(
        "w(epoch) γ Σ_i HCL(F_i, f_Tⁱ)\nfull map + pooled 4², 2², 1²", id="hcl"
    )
    d.same_rank(*s)
    d.same_rank(*abf)
    d.edge(x, s[0])
    d.edge(x, t)
    d.chain(*s)
    for i in range(4):
        d.edge(s[i], abf[i], f"f_S{SUP.get(i + 1, '⁴')}")
        d.edge(abf[i], hcl, f"F_{i + 1}")
    for i in (1, 2, 3):
        # drawn from level i to i + 1 with the arrowhead reversed, so that the
        # column reads top-down from stage 1 while the residual flows upwards
        d.edge(abf[i - 1], abf[i], "residual", dir="back")
    d.edge(t, hcl, "f_Tⁱ", detached=True)
    d.label_loss(s[3], y)


@diagram("tofd", "TOFD: auxiliary classifiers pick the task-oriented features to fit")
def _tofd(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    ht = d.aux(
        "teacher's auxiliary\nclassifiers (trained first,\nthen frozen)", id="ht"
    )
    hs = d.aux("student's auxiliary\nclassifiers", id="hs")
    link = d.aux("resizing layers W_i\n(+ orthogonal loss)", id="link")
    feat = d.loss("γ Σ_i ‖W_i e_Sⁱ − e_Tⁱ‖₂", id="feat")
    kd = d.loss("Σ_i soft-CE(l_Sⁱ, l_Tⁱ; T(e))", id="kd")
    ce = d.loss("Σ_i CE(l_Sⁱ, t)", id="ce")
    d.edge(t, ht, "f_Tⁱ", detached=True)
    d.edge(s, hs, "f_Sⁱ")
    d.edge(ht, feat, "e_Tⁱ", detached=True)
    d.edge(hs, link, "e_Sⁱ")
    d.edge(link, feat)
    d.edge(ht, kd, "l_Tⁱ", detached=True)
    d.edge(hs, kd, "l_Sⁱ")
    d.edge(hs, ce, "l_Sⁱ")
    d.edge(y, ce)


@diagram("mgd", "MGD: teacher channels matched to student channels, then reduced")
def _mgd(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    match = d.op(
        "assignment (Hungarian)\ncost 2 − 2 cos(f_S,c, f_T,c')\nevery 2 epochs",
        id="match",
    )
    red = d.op("reduce the matched\nchannels (abs-max)\nmargin max(·, m)", id="red")
    bn = d.aux("batch norm", id="bn")
    mgd = d.loss("γ Σ_j 2^(j−3) partial L2\n(S_j, reduced T_j) / B", id="mgd")
    d.edge(t, match, "pre-ReLU f_Tʲ", detached=True)
    d.edge(s, match, "pre-ReLU f_Sʲ", detached=True)
    d.edge(match, red, "matching", detached=True)
    d.edge(t, red, "f_Tʲ", detached=True)
    d.edge(red, mgd, detached=True)
    d.edge(s, bn, "f_Sʲ")
    d.edge(bn, mgd)
    d.label_loss(s, y)
