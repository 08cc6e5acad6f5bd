"""Diagrams of chapter 15, logit distillation after the survey (beside its
section 2.1): DKD, DIST, logit standardisation (on KD and on DKD), NKD,
CTKD and multi-level logit distillation (MLKD). See
kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram


def _dkd_parts(d: Diagram, src_t: str, src_s: str, lab_t: str, lab_s: str) -> None:
    """The target/non-target split of both distributions and DKD's two terms."""
    bt = d.op("b_T = (p_y, 1 − p_y)", id="bt")
    bs = d.op("b_S = (p_y, 1 − p_y)", id="bs")
    qt = d.op("p̂_T: other classes,\nrenormalised", id="qt")
    qs = d.op("p̂_S: other classes,\nrenormalised", id="qs")
    tckd = d.loss("α T² KL(b_T ‖ b_S)\nTCKD", id="tckd")
    nckd = d.loss("β T² KL(p̂_T ‖ p̂_S)\nNCKD", id="nckd")
    d.edge(src_t, bt, lab_t, detached=True)
    d.edge(src_t, qt, lab_t, detached=True)
    d.edge(src_s, bs, lab_s)
    d.edge(src_s, qs, lab_s)
    d.edge(bt, tckd, detached=True)
    d.edge(bs, tckd)
    d.edge(qt, nckd, detached=True)
    d.edge(qs, nckd)


@diagram("dkd", "Decoupled KD (Zhao et al. 2022): target and non-target parts apart")
def _dkd(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    _dkd_parts(d, t, s, "l_T / T", "l_S / T")
    d.label_loss(s, y)


@diagram("dkd_ls", "DKD on standardised logits (Sun et al. 2024)")
def _dkd_ls(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    zt = d.op("z-score l_T", id="zt")
    zs = d.op("z-score l_S", id="zs")
    d.edge(t, zt, "l_T", detached=True)
    d.edge(s, zs, "l_S")
    _dkd_parts(d, zt, zs, "", "")
    d.label_loss(s, y)


@diagram("kd_ls", "KD on standardised logits (Sun et al. 2024)")
def _kd_ls(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    zt = d.op("z-score l_T", id="zt")
    zs = d.op("z-score l_S", id="zs")
    pt = d.op("p̃_T = softmax(· / T)", id="pt")
    ps = d.op("log p̃_S = log softmax(· / T)", id="ps")
    kl = d.loss("α T² KL(p̃_T ‖ p̃_S)", id="kl")
    d.edge(t, zt, "l_T", detached=True)
    d.edge(zt, pt, detached=True)
    d.edge(pt, kl, detached=True)
    d.edge(s, zs, "l_S")
    d.edge(zs, ps)
    d.edge(ps, kl)
    d.label_loss(s, y, "λ CE(l_S, t)")


@diagram("dist", "DIST (Huang et al. 2022): correlations, not exact probabilities")
def _dist(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    pt = d.op("P_T = softmax(l_T / τ)\n(B × K)", id="pt")
    ps = d.op("P_S = softmax(l_S / τ)\n(B × K)", id="ps")
    inter = d.loss("β τ² (1 − mean ρ of rows)\ninter-class", id="inter")
    intra = d.loss("γ τ² (1 − mean ρ of columns)\nintra-class", id="intra")
    d.edge(t, pt, "l_T", detached=True)
    d.edge(s, ps, "l_S")
    for loss in (inter, intra):
        d.edge(pt, loss, detached=True)
        d.edge(ps, loss)
    d.label_loss(s, y)


@diagram("nkd", "Normalized KD (Yang et al. 2023): target and normalised non-targets")
def _nkd(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    pt = d.op("p_T,y at T = 1", id="pty")
    ps = d.op("log p_S,y at T = 1", id="psy")
    qt = d.op("p̂_T(T): other classes,\nrenormalised", id="qt")
    qs = d.op("log p̂_S(T): other classes,\nrenormalised", id="qs")
    target = d.loss("− p_T,y log p_S,y", id="target")
    other = d.loss("− γ T² Σ p̂_T log p̂_S", id="other")
    d.edge(t, pt, "l_T", detached=True)
    d.edge(t, qt, "l_T", detached=True)
    d.edge(s, ps, "l_S")
    d.edge(s, qs, "l_S")
    d.edge(pt, target, detached=True)
    d.edge(ps, target)
    d.edge(qt, other, detached=True)
    d.edge(qs, other)
    d.label_loss(s, y)


@diagram("ctkd", "Curriculum temperature KD (Li et al. 2023): an adversarial τ")
def _ctkd(d: Diagram) -> None:
    _, y, t, s = d.teacher_student()
    theta = d.aux("θ: τ = 1 + 20 σ(θ)\n(trained)", id="theta")
    grl = d.op("gradient reversal\n× η (curriculum 0 → −1)", id="grl")
    pt = d.op("softmax(l_T / τ)", id="pt")
    ps = d.op("log softmax(l_S / τ)", id="ps")
    kl = d.loss("(1 − λ) τ² KL(p_T ‖ p_S)", id="kl")
    d.edge(theta, grl)
    d.edge(grl, pt, "τ")
    d.edge(grl, ps, "τ")
    d.edge(t, pt, "l_T", detached=True)
    d.edge(s, ps, "l_S")
    d.edge(pt, kl, "p_T (gradient only to θ)")
    d.edge(ps, kl)
    d.label_loss(s, y, "λ CE(l_S, t)")


@diagram(
    "mlkd", "Multi-level logit distillation (Jin et al. 2023): three levels, two views"
)
def _mlkd(d: Diagram) -> None:
    _, y, t, s = d.teacher_student(image="image x (weak view)")
    aug = d.op("RandAugment (2 ops)\n+ Cutout", id="aug")
    d.edge("x", aug)
    t2 = d.teacher("teacher, strong view\n(frozen)", id="T2")
    s2 = d.student("student, strong view\n(same weights)", id="S2")
    d.edge(aug, t2)
    d.edge(aug, s2)
    mask = d.op("teacher confidence\n≤ batch median: f_s, f_c", id="mask")
    inst = d.loss("instance: Σ_T KD_T\n(T = 4, 3, 5, 2, 6)", id="inst")
    batch = d.loss("batch: ‖P_T P_Tᵀ − P_S P_Sᵀ‖² / B", id="batch")
    cls = d.loss("class: ‖P_Tᵀ P_T − P_Sᵀ P_S‖² / K", id="cls")
    d.edge(t, mask, "l_T", detached=True)
    for loss in (inst, batch, cls):
        d.edge(t, loss, "l_T", detached=True)
        d.edge(s, loss, "l_S")
    d.edge(mask, inst, "× f_s (weak)", detached=True)
    d.edge(mask, batch, "× f_s", detached=True)
    d.edge(mask, cls, "× f_c", detached=True)
    d.edge(t2, inst, "strong l_T", detached=True)
    d.edge(s2, inst, "strong l_S")
    ce = d.label_loss(s, y, "λ (CE(l_S, t) + CE(strong l_S, t))")
    d.edge(s2, ce, "strong l_S")
