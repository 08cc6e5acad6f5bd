"""Diagrams of the output family, survey §2.1 (chapter 2; CRD is run in chapter 5).

Each shows where its method departs from Hinton's loss (``kd`` in
:mod:`kdutils.diagrams.traditional`): a per-sample switch (``cts``), a
per-sample temperature (``dtd``), a learned per-sample variance (``pad``), a
third sample in the loss (``triplet``), a teacher that sees only some mixed
images (``unix``), and a memory of the whole training set (``crd``).
"""

from __future__ import annotations

from . import Diagram, diagram


@diagram("cts", "Conditional teacher–student learning (Meng et al. 2019)")
def _cts(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    right = d.op("c = [argmax l_T = y]\nteacher right?", id="c")
    pt = d.op("softmax(l_T)\n(T = 1)", id="pt")
    loss = d.loss("c · CE(p_T, p_S)\n+ (1 − c) · CE(l_S, t)", id="cts")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, right, "l_T", detached=True)
    d.edge(t, pt, "l_T", detached=True)
    d.edge(y, right)
    d.edge(right, loss, "per sample", detached=True)
    d.edge(pt, loss, detached=True)
    d.edge(s, loss, "l_S")
    d.edge(y, loss)


@diagram("dtd", "Dynamic temperature distillation (Wen et al. 2021)")
def _dtd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    w = d.op("w_b = (1 − cos(l_S, l_T))^γ", id="w")
    tau = d.op("τ_b = T + β (mean(w) − w_b)", id="tau")
    pt = d.op("softmax(l_T / τ_b)", id="pt")
    ps = d.op("log softmax(l_S / τ_b)", id="ps")
    kl = d.loss("(1 − λ) τ_b² KL(p_T ‖ p_S)", id="kl")
    ce = d.loss("λ CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, w, "l_T", detached=True)
    d.edge(s, w, "l_S (detached)", detached=True)
    d.edge(w, tau, detached=True)
    d.edge(tau, pt, detached=True)
    d.edge(tau, ps, detached=True)
    d.edge(t, pt, "l_T", detached=True)
    d.edge(s, ps, "l_S")
    d.edge(pt, kl, detached=True)
    d.edge(ps, kl)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("pad", "Prime-aware adaptive distillation (Zhang et al. 2020)")
def _pad(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    head = d.aux("variance head\nLinear + BatchNorm", id="head")
    pad = d.loss("mean over b, d of\n(f_S − f_T)² / (σ² + ε) + log σ²", id="pad")
    ce = d.loss("CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(s, head, "f_S (pooled)")
    d.edge(head, pad, "log σ²_bd")
    d.edge(s, pad, "f_S")
    d.edge(t, pad, "f_T (pooled)", detached=True)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("triplet", "Triplet loss for KD (Oki et al. 2020)")
def _triplet(d: Diagram) -> None:
    x = d.data("batch x", id="x")
    y = d.data("labels t", id="t")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    neg = d.op("n(b): a batch member\nof another class", id="neg")
    pt = d.op("softmax(l_T)", id="pt")
    tri = d.loss("max(0, ‖l_T,b − l_S,b‖\n− ‖l_T,b − l_S,n(b)‖ + m)", id="tri")
    kl = d.loss("KL(p_T ‖ p_S)", id="kl")
    ce = d.loss("CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(y, neg)
    d.edge(t, tri, "anchor l_T,b", detached=True)
    d.edge(s, tri, "positive l_S,b")
    d.edge(s, neg, "l_S")
    d.edge(neg, tri, "negative l_S,n(b)")
    d.edge(t, pt, "l_T", detached=True)
    d.edge(pt, kl, detached=True)
    d.edge(s, kl, "l_S")
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("unix", "Uncertainty-aware mixup, UNIX (Xu et al. 2020)")
def _unix(d: Diagram) -> None:
    x = d.data("batch x\n(B images)", id="x")
    y = d.data("labels t", id="t")
    score = d.student("student\n(scoring pass,\nno_grad)", id="score")
    rank = d.op("rank by entropy H(p_S)\n(most uncertain first)", id="rank")
    mix = d.op(
        "mix with partners\n(the most uncertain least);\nkeep the top k", id="mix"
    )
    t = d.teacher("teacher (frozen)\nsees k images", id="T")
    s = d.student("student", id="S")
    kl = d.loss("T² KL(p_T ‖ p_S)\non the k mixed images", id="kl")
    ce = d.loss("λ · mixed-label CE\n(λ = 0 by default)", id="ce")
    d.edge(x, score)
    d.edge(score, rank, "l_S", detached=True)
    d.edge(x, mix)
    d.edge(rank, mix, "order", detached=True)
    d.edge(mix, t, "x̃ (k)")
    d.edge(mix, s, "x̃ (k)")
    d.edge(t, kl, "l_T", detached=True)
    d.edge(s, kl, "l_S")
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("crd", "Contrastive representation distillation (Tian et al. 2020)")
def _crd(d: Diagram) -> None:
    x = d.data("image x\n(dataset index i)", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    es = d.aux("head g_S\nLinear, L2-norm", id="es")
    et = d.aux("head g_T\nLinear, L2-norm", id="et")
    mem = d.op(
        "memory banks M_S, M_T\n(one vector per training image,\nmomentum update)",
        id="mem",
    )
    neg = d.op("entry i + K negatives\nof other classes", id="neg")
    nce = d.loss("β [NCE(v_S; M_T)\n+ NCE(v_T; M_S)]", id="nce")
    ce = d.loss("CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, et, "f_T (pooled)", detached=True)
    d.edge(s, es, "f_S (pooled)")
    d.edge(es, nce, "v_S")
    d.edge(et, nce, "v_T")
    d.edge(es, mem, "update", detached=True)
    d.edge(et, mem, "update", detached=True)
    d.edge(y, neg)
    d.edge(mem, neg, detached=True)
    d.edge(neg, nce, "scores", detached=True)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)
