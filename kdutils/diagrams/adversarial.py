"""Diagrams of chapter 10: GAN-based distillation (survey section 2.3.5, its Fig. 9).

The discriminator is an ``aux`` node: it is added for distillation and
trained, by its own Adam step on detached teacher and student outputs (the
``L_D`` loss node), while the student's terms reach the student *through*
it without changing it. See kdutils/diagrams/__init__.py for the style.
"""

from __future__ import annotations

from . import Diagram, diagram


@diagram(
    "survey_fig9",
    "GAN-based knowledge distillation, survey Eqs. (9)-(10) (after the survey's Fig. 9)",
)
def _fig9(d: Diagram) -> None:
    x = d.data("input x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher network", id="T")
    s = d.student("student network\n(the generator)", id="S")
    disc = d.aux("discriminator D", id="D")
    gan = d.loss("L_GAN = log D(l_T) + log(1 − D(l_S))", id="gan")
    task = d.loss("L_task(l_S, t)", id="task")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, disc, "l_T: 'real'", detached=True)
    d.edge(s, disc, "l_S: 'generated'")
    d.edge(disc, gan)
    d.edge(s, task, "l_S")
    d.edge(y, task)


@diagram("advlogit", "Conditional adversarial KD on logits (Xu et al. 2018)")
def _advlogit(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen, eval mode)", id="T")
    s = d.student("student", id="S")
    disc = d.aux("discriminator D (MLP)\nscore + class head", id="D")
    ld = d.loss("L_D: BCE(real l_T, fake l_S)\n+ CE(class) — D's own Adam", id="LD")
    lg = d.loss("α [−log D(l_S) + CE(D_cls(l_S), t)]", id="LG")
    l1 = d.loss("β mean |l_S − l_T|", id="l1")
    ce = d.loss("λ CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(t, disc, "l_T", detached=True)
    d.edge(s, disc, "l_S")
    d.edge(disc, ld, "detached inputs", detached=True)
    d.edge(disc, lg)
    d.edge(t, l1, detached=True)
    d.edge(s, l1)
    d.edge(s, ce)
    d.edge(y, ce)
    d.edge(y, lg)
    d.same_rank(ld, lg, l1, ce)


@diagram("advfeat", "Adversarial KD on feature maps (after Chen et al. 2020b)")
def _advfeat(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen, eval mode)", id="T")
    s = d.student("student", id="S")
    conn = d.aux("1×1 conv connector\n(if channels differ)", id="C")
    disc = d.aux("discriminator D\n(small conv net)", id="D")
    ld = d.loss("L_D: BCE(real f_T, fake f_S)\nD's own Adam", id="LD")
    lg = d.loss("α (−log D(f_S))", id="LG")
    l1 = d.loss("β mean |f_S − f_T|", id="l1")
    ce = d.loss("λ CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, s)
    d.edge(s, conn, "last-stage maps")
    d.edge(t, disc, "f_T", detached=True)
    d.edge(conn, disc, "f_S")
    d.edge(disc, ld, "detached inputs", detached=True)
    d.edge(disc, lg)
    d.edge(t, l1, detached=True)
    d.edge(conn, l1)
    d.edge(s, ce, "l_S")
    d.edge(y, ce)
    d.same_rank(ld, lg, l1, ce)


@diagram(
    "advonline",
    "Feature-map-level online adversarial KD (Chung et al. 2020): two networks",
)
def _advonline(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    nets = [
        d.student("network 1\n(the student, deployed)", id="N1"),
        d.student("network 2\n(a peer, trained too)", id="N2"),
    ]
    for k in (1, 2):
        j = 3 - k  # the other network
        own, peer = nets[k - 1], nets[j - 1]
        disc = d.aux(f"discriminator D_{k}\n(small conv net)", id=f"D{k}")
        ld = d.loss(
            f"L_D{k}: (1 − D_{k}(f_{j}))² + D_{k}(f_{k})²\nD_{k}'s own Adam",
            id=f"LD{k}",
        )
        lg = d.loss(f"(1 − D_{k}(f_{k}))²", id=f"LG{k}")
        kl = d.loss(f"CE(l_{k}, t) + T² KL(p_{j} ‖ p_{k})", id=f"KL{k}")
        d.edge(own, disc, f"f_{k}: 'fake'")
        d.edge(peer, disc, f"f_{j}: 'real'", detached=True)
        d.edge(disc, ld, "detached inputs", detached=True)
        d.edge(disc, lg)
        d.edge(own, kl, f"l_{k}")
        d.edge(peer, kl, f"l_{j}", detached=True)
        d.edge(y, kl)
    for n in nets:
        d.edge(x, n)


@diagram(
    "msmgan",
    "Greedy stage-by-stage adversarial KD (a stand-in after Huang et al. 2022)",
)
def _msmgan(d: Diagram) -> None:
    x = d.data("image x", id="x")
    y = d.data("label t", id="t")
    t = d.teacher("teacher\n(frozen, eval mode)", id="T")
    with d.group("student: phase k trains stage k and what follows", kind="student"):
        held = d.student("stem, stages < k\n(held: output detached)", id="H")
        cur = d.student("stage k", id="Sk")
        rest = d.student("later stages, classifier", id="R")
    disc = d.aux("discriminator D_k\n(one per stage)", id="D")
    ld = d.loss("L_D: BCE(real f_T^k, fake f_S^k)\nD_k's own Adam", id="LD")
    lg = d.loss("α (−log D_k(f_S^k))", id="LG")
    kd_ = d.loss("0.9 T² KL(p_T ‖ p_S)", id="kd")
    ce = d.loss("0.1 CE(l_S, t)", id="ce")
    d.edge(x, t)
    d.edge(x, held)
    d.edge(held, cur, detached=True)
    d.edge(cur, rest)
    d.edge(t, disc, "f_T^k", detached=True)
    d.edge(cur, disc, "f_S^k")
    d.edge(disc, ld, "detached inputs", detached=True)
    d.edge(disc, lg)
    d.edge(t, kd_, "l_T", detached=True)
    d.edge(rest, kd_, "l_S")
    d.edge(rest, ce, "l_S")
    d.edge(y, ce)
