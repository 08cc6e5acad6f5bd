"""Diagrams of chapter 3: fitting feature maps directly (survey section 2.2.1).

The survey's Fig. 3, FitNet, SSKD, knowledge projection, rocket launching
and interactive KD (in the survey), AB, FT and VID (added by the book beside
section 2.2.1). See kdutils/diagrams/__init__.py for the
style; the labels follow the book's notation (f_S, f_T, l_S, λ, β).
"""

from __future__ import annotations

from . import SUP, Diagram, diagram


@diagram(
    "survey_fig3",
    "Knowledge distillation on feature maps, Eq. (2) (after the survey's Fig. 3)",
)
def _fig3(d: Diagram) -> None:
    x, y, t, s = d.layered_teacher_student()
    for i in (1, 2, 3):
        df = d.loss(f"DF(f_S{SUP[i]}, f_T{SUP[i]})", id=f"df{i}")
        d.edge(t[i - 1], df, f"f_T{SUP[i]}", detached=True)
        d.edge(s[i - 1], df, f"f_S{SUP[i]}")
    task = d.loss("task loss\nCE(l_S, t)", id="ce")
    d.edge(s[2], task, "l_S")
    d.edge(y, task)


@diagram("fitnet", "FitNet: a regressor maps the guided layer onto the hint layer")
def _fitnet(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t_low = d.teacher("teacher up to\nhint layer (frozen)", id="T")
    s_low = d.student("student up to\nguided layer", id="S1")
    s_high = d.student("rest of\nthe student", id="S2")
    reg = d.aux("regressor r\n(conv + BN + ReLU)", id="r")
    hint = d.loss("β MSE(r(f_S), f_T)", id="hint")
    ce = d.loss("λ CE(l_S, t)", id="ce")
    d.edge(x, t_low)
    d.edge(x, s_low)
    d.edge(t_low, hint, "f_T", detached=True)
    d.edge(s_low, reg, "f_S")
    d.edge(reg, hint, "r(f_S)")
    d.edge(s_low, s_high)
    d.edge(s_high, ce, "l_S")
    d.edge(y, ce)


@diagram("sskd", "Stage-by-stage KD: one stage per phase, then the classifier")
def _sskd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    with d.group("teacher (frozen)", "teacher"):
        t = [d.teacher(f"stage {k}", id=f"T{k}") for k in (1, 2, 3)]
    with d.group("student: phase k trains stage k only", "student"):
        s = [d.student(f"stage {k}", id=f"S{k}") for k in (1, 2, 3)]
        fc = d.student("classifier fc", id="fc")
    d.edge(x, t[0])
    d.edge(x, s[0])
    d.chain(*t)
    d.chain(*s, fc)
    for k in (1, 2, 3):
        mse = d.loss(f"phase {k}:\nMSE(f_S{SUP[k]}, f_T{SUP[k]})", id=f"mse{k}")
        d.edge(t[k - 1], mse, detached=True)
        d.edge(s[k - 1], mse)
    ce = d.loss("phase 4:\nCE(l_S, t)", id="ce")
    d.edge(fc, ce, "l_S")
    d.edge(y, ce)


@diagram("ab", "Activation boundaries: first the neurons' on/off pattern, then KD")
def _ab(d: Diagram) -> None:
    x = d.data("image x", id="x")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    with d.group("stage 1 (initialisation)", "plain"):
        conn = d.aux("connectors\n(identity if\nshapes match)", id="conn")
        margin = d.loss("margin loss on the\nsigns of pre-ReLU f_Tⁱ", id="ab")
    with d.group("stage 2: KD", "plain"):
        pt = d.op("softmax(l_T / T)", id="pt")
        ps = d.op("log softmax(l_S / T)", id="ps")
        kl = d.loss("(1 − λ) T² KL(p_T ‖ p_S)", id="kl")
        ce = d.loss("λ CE(l_S, t)", id="ce")
    y = d.data("label t", id="t")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, margin, detached=True)
    d.edge(s, conn, "pre-ReLU f_Sⁱ")
    d.edge(conn, margin)
    d.edge(t, pt, "l_T", detached=True)
    d.edge(pt, kl, detached=True)
    d.edge(s, ps, "l_S")
    d.edge(ps, kl)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("ft", "Factor transfer: a paraphraser's factors, matched by a translator")
def _ft(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    with d.group("stage 1: trained to reconstruct f_T, then frozen", "aux"):
        enc = d.aux("paraphraser\nencoder", id="enc")
        dec = d.aux("paraphraser\ndecoder", id="dec")
    rec = d.loss("stage 1:\nL1(recon., f_T)", id="rec")
    tr = d.aux("translator", id="tr")
    nt = d.op("flatten, L2-normalise", id="nt")
    ns = d.op("flatten, L2-normalise", id="ns")
    ft = d.loss("β L1(F_S, F_T)", id="ft")
    ce = d.loss("CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, enc, "f_T", detached=True)
    d.edge(enc, dec)
    d.edge(dec, rec)
    d.edge(t, rec, detached=True)
    d.edge(enc, nt, "factor", detached=True)
    d.edge(nt, ft, "F_T", detached=True)
    d.edge(s, tr, "f_S")
    d.edge(tr, ns, "factor")
    d.edge(ns, ft, "F_S")
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram("vid", "VID: the student predicts a Gaussian over the teacher's features")
def _vid(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen)", id="T")
    s = d.student("student", id="S")
    with d.group("one per stage i = 1, 2, 3", "aux"):
        mu = d.aux("regressor μ\n(three 1x1 convs)", id="mu")
        var = d.aux("variance σ_c²\n(one per channel)", id="var")
    nll = d.loss("β Σ_i Gaussian NLL\nof f_Tⁱ under N(μ, σ²)", id="nll")
    ce = d.loss("CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, nll, "f_Tⁱ", detached=True)
    d.edge(s, mu, "f_Sⁱ")
    d.edge(mu, nll, "μ(f_Sⁱ)")
    d.edge(var, nll, "σ²")
    d.edge(s, ce, "l_S")
    d.edge(y, ce)


@diagram(
    "kp",
    "Knowledge projection: the teacher's lower layers feed the student's upper ones",
)
def _kp(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t_low = d.teacher("teacher up to\nlayer 1 (frozen)", id="T")
    proj = d.aux("projection P\n(1x1 conv + BN + ReLU)", id="P")
    s_low = d.student("student up to\nlayer 1", id="S1")
    s_high = d.student("student above\nlayer 1 (shared\nby both routes)", id="S2")
    ce = d.loss("CE(l_S, t)", id="ce")
    route = d.loss("λ(e) CE(l_P, t)\nλ falls to 0:\nthe route is cut", id="route")
    d.edge(x, t_low)
    d.edge(x, s_low)
    d.edge(t_low, proj, "f_T", detached=True)
    d.edge(proj, s_high, "P(f_T)")
    d.edge(s_low, s_high, "f_S")
    d.edge(s_high, ce, "l_S")
    d.edge(s_high, route, "l_P")
    d.edge(y, ce)
    d.edge(y, route)


@diagram("rocket", "Rocket launching: a light net and a booster on shared lower layers")
def _rocket(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    shared = d.student("shared lower layers\n(stem + layer 1)", id="shared")
    light = d.student("light net's\nupper layers", id="L")
    boost = d.aux("booster's upper layers\n(3x the blocks)", id="B")
    hint = d.loss("γ ‖l − z‖²\n(gradient block on z)", id="hint")
    ce_l = d.loss("CE(l, t)", id="cel")
    ce_b = d.loss("CE(z, t)", id="ceb")
    d.edge(x, shared)
    d.edge(shared, light, "h")
    d.edge(shared, boost, "h")
    d.edge(light, hint, "l")
    d.edge(boost, hint, "z", detached=True)
    d.edge(light, ce_l, "l")
    d.edge(boost, ce_b, "z")
    d.edge(y, ce_l)
    d.edge(y, ce_b)


@diagram(
    "iakd",
    "Interactive KD: each student stage swapped for the teacher's with probability p",
)
def _iakd(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    stem = d.student("student stem", id="stem")
    prev = stem
    for k in (1, 2, 3):
        with d.group(f"stage {k}: one of the two, drawn per step", "plain"):
            s = d.student(f"student stage {k}\n(prob. 1 − p)", id=f"S{k}")
            t = d.teacher(f"teacher stage {k}\n(frozen, prob. p)", id=f"T{k}")
        join = d.op("the drawn\nstage's output", id=f"h{k}")
        d.edge(prev, s)
        d.edge(prev, t)
        d.edge(s, join)
        d.edge(t, join)
        prev = join
    head = d.student("student pool + fc", id="fc")
    ce = d.loss("CE(l, t)\n(the only loss)", id="ce")
    d.edge(x, stem)
    d.edge(prev, head)
    d.edge(head, ce, "l")
    d.edge(y, ce)
