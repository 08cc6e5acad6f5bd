"""Diagrams of chapter 6, online distillation (survey §2.3.1): the survey's
Fig. 6, DML, ONE, OKDDip and FFL (see kdutils/diagrams/__init__.py for the
style)."""

from __future__ import annotations

from . import Diagram, diagram


@diagram(
    "survey_fig6",
    "Online distillation, survey Eq. (5): k students, pairwise losses "
    "(after the survey's Fig. 6)",
)
def _fig6(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.data("label t", id="t")
    students = [d.student(f"student {k}", id=f"S{k}") for k in ("1", "2", "k")]
    for k, s in zip(("1", "2", "k"), students, strict=True):
        d.edge(x, s)
        lt = d.loss(f"L_t(l_{k}, t)", id=f"Lt{k}")
        d.edge(s, lt, f"l_{k}")
        d.edge(t, lt)
    # One distillation loss per pair of students, as in the survey's figure.
    for i, j in ((0, 1), (0, 2), (1, 2)):
        a, b = ("1", "2", "k")[i], ("1", "2", "k")[j]
        kd = d.loss(f"L_KD(l_{a}, l_{b})", id=f"KD{a}{b}")
        d.edge(students[i], kd)
        d.edge(students[j], kd)


@diagram("dml", "Deep mutual learning (Zhang et al. 2018): K = 3 peers")
def _dml(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.data("label t", id="t")
    peers = [
        d.student(f"peer {k}" + (" (deployed)" if k == 0 else ""), id=f"P{k}")
        for k in range(3)
    ]
    ce = d.loss("Σ_k CE(l_k, t)", id="ce")
    d.edge(t, ce)
    for p in peers:
        d.edge(x, p)
        d.edge(p, ce)
    for k, p in enumerate(peers):
        kl = d.loss(f"peer {k}: T²/(K−1) Σ_j≠{k} KL(p_j ‖ p_{k})", id=f"kl{k}")
        d.edge(p, kl)
        for j, other in enumerate(peers):
            if j != k:  # the other peers' predictions are constants for peer k
                d.edge(other, kl, detached=True)


@diagram("one", "ONE (Lan et al. 2018): a gate weights the branches into a teacher")
def _one(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.data("label t", id="t")
    trunk = d.student("trunk\nstem, layer1, layer2", id="trunk")
    b0 = d.student("branch 0 (deployed)\nlayer3, fc", id="b0")
    with d.group("added branches", "aux"):
        b1 = d.aux("branch 1\nlayer3, fc", id="b1")
        b2 = d.aux("branch 2\nlayer3, fc", id="b2")
    gate = d.aux("gate\npool, FC, BN, ReLU, softmax", id="gate")
    ens = d.op("l_e = Σ_i g_i l_i", id="ens")
    ce = d.loss("Σ_i CE(l_i, t)", id="ce")
    ce_e = d.loss("CE(l_e, t)", id="ce_e")
    kl = d.loss("w(e) T² Σ_i KL(p_e ‖ p_i)", id="kl")
    d.edge(x, trunk)
    for b in (b0, b1, b2):
        d.edge(trunk, b, "h")
        d.edge(b, ens)
        d.edge(b, ce)
        d.edge(b, kl)
    d.edge(trunk, gate, "h")
    d.edge(gate, ens, "g")
    d.edge(ens, ce_e)
    d.edge(ens, kl, "p_e = softmax(l_e / T)", detached=True)
    d.edge(t, ce)
    d.edge(t, ce_e)


@diagram(
    "okddip",
    "OKDDip (Chen et al. 2020): attention targets for the peers, then a leader",
)
def _okddip(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.data("label t", id="t")
    trunk = d.student("trunk\nstem, layer1, layer2", id="trunk")
    peers = d.aux("peers i = 1..m (m = 3)\nlayer3, fc each", id="peers")
    leader = d.student("group leader (deployed)\nlayer3, fc", id="leader")
    ce = d.loss("Σ_i CE(l_i, t) + CE(l_L, t)", id="ce")
    with d.group("level 1: a target of its own for each peer", "plain"):
        att = d.aux(
            "attention (W_q, W_k)\nα_ij = softmax_j(W_q e_i · W_k e_j)", id="att"
        )
        tgt = d.op("t_i = Σ_j α_ij l_j", id="tgt")
        kl1 = d.loss("w(e) T² Σ_i KL(t_i ‖ l_i)", id="kl1")
    with d.group("level 2: the peers teach the leader", "plain"):
        mean = d.op("(1/m) Σ_i l_i", id="mean")
        kl2 = d.loss("w(e) T² KL(mean ‖ l_L)", id="kl2")
    d.edge(x, trunk)
    d.edge(trunk, peers)
    d.edge(trunk, leader)
    d.edge(peers, att, "e_i")
    d.edge(peers, tgt, "l_j")
    d.edge(att, tgt, "α")
    d.edge(tgt, kl1)
    d.edge(peers, kl1, "l_i")
    d.edge(peers, mean, "l_i")
    d.edge(mean, kl2)
    d.edge(leader, kl2, "l_L")
    d.edge(peers, ce)
    d.edge(leader, ce)
    d.edge(t, ce)


@diagram("ffl", "FFL (Kim et al. 2021): a fused classifier and its branches")
def _ffl(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.data("label t", id="t")
    trunk = d.student("trunk\nstem, layer1, layer2", id="trunk")
    b0 = d.student("branch 0 (deployed)\nlayer3, fc", id="b0")
    b1 = d.aux("branch 1\nlayer3, fc", id="b1")
    fusion = d.aux("fusion module\nconcat, dw conv, 1×1 conv,\npool, fc", id="fusion")
    mean = d.op("(1/m) Σ_i l_i", id="mean")
    ce = d.loss("Σ_i CE(l_i, t) + CE(l_f, t)", id="ce")
    kl_b = d.loss("w(e) T² Σ_i KL(p_f ‖ p_i)", id="kl_b")
    kl_f = d.loss("w(e) T² KL(p_mean ‖ p_f)", id="kl_f")
    d.edge(x, trunk)
    d.edge(t, ce)
    for b in (b0, b1):
        d.edge(trunk, b)
        d.edge(b, fusion, "layer3 map")
        d.edge(b, mean)
        d.edge(b, kl_b)
        d.edge(b, ce)
    d.edge(fusion, ce, "l_f")
    d.edge(fusion, kl_b, "l_f", detached=True)
    d.edge(mean, kl_f, detached=True)
    d.edge(fusion, kl_f, "l_f")
