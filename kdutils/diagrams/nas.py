"""Diagrams of chapter 11: adjusting the architecture with KD in the loop (survey §3.1).

Pipelines, not losses: the nodes are networks (teacher, candidate students),
fixed decisions (``op``: pick the best, prune, merge) and the loss that
trains or scores each candidate. Back edges of a loop are drawn without
constraining the layout (``constraint="false"``), so the diagrams still read
left to right. See kdutils/diagrams/__init__.py for the style.
"""

from __future__ import annotations

from . import Diagram, diagram


@diagram("channel_planting", "Channel planting: grow a student while KD improves it")
def _planting(d: Diagram) -> None:
    start = d.data("thin start\nwidths (stem, s1, s2, s3)", id="start")
    cur = d.student("current student", id="cur")
    t = d.teacher("teacher\n(frozen)", id="T")
    with d.group("one round: + step channels to one group each", "student"):
        a = d.student("candidate\n+ stem & stage 1", id="a")
        b = d.student("candidate\n+ stage 2", id="b")
        c = d.student("candidate\n+ stage 3", id="c")
    kd = d.loss("short KD run each\n→ test accuracy", id="kd")
    pick = d.op("best candidate beats\ncurrent by > min_gain?", id="pick")
    final = d.student("final student\n(retrain at full length)", id="final")
    d.edge(start, cur)
    for n in (a, b, c):
        d.edge(cur, n)
        d.edge(n, kd)
    d.edge(t, kd, "l_T", detached=True)
    d.edge(kd, pick)
    d.edge(pick, cur, "yes: keep it", constraint="false")
    d.edge(pick, final, "no: stop")


@diagram("kd_search", "KD-aware architecture search (stand-in for Liu et al. 2020b)")
def _search(d: Diagram) -> None:
    space = d.data("search space\ndepth × stage widths", id="space")
    draw = d.op("draw n architectures\n(random, seeded)", id="draw")
    cand = d.student("candidate student a", id="a")
    t = d.teacher("teacher\n(frozen)", id="T")
    kd = d.loss("short KD run\n→ Acc_KD(a)", id="kd")
    ce = d.loss("same run, no teacher\n→ Acc_CE(a)", id="ce")
    cost = d.op("cost(a): params,\nMACs, latency", id="cost")
    front = d.op("Pareto front /\nreward Acc·(LAT/target)^w", id="front")
    best = d.student("chosen student", id="best")
    d.chain(space, draw, cand)
    d.edge(cand, kd)
    d.edge(t, kd, "l_T", detached=True)
    d.edge(cand, ce)
    d.edge(cand, cost)
    d.edge(kd, front)
    d.edge(ce, front, "compare ranks", style="dotted")
    d.edge(cost, front)
    d.edge(front, best)


@diagram("prune_and_recover", "Pruning, then few-sample KD recovery (Li et al. 2020b)")
def _prune(d: Diagram) -> None:
    t = d.teacher("trained network\n(teacher, frozen)", id="T")
    prune = d.op("L1-norm filter pruning\n(each block's conv1)", id="prune")
    s = d.student("pruned network\n(only Q is fitted)", id="S")
    q = d.aux("1×1 convs Q after\neach pruned-block conv", id="Q")
    few = d.data("a few images\n(no labels)", id="few")
    y = d.data("labels t\n(contrast only)", id="t")
    ls = d.loss("least squares\n‖X_S Qᵀ − X_T‖²", id="ls")
    kd = d.loss("KD: T² KL(p_T ‖ p_S)\n(SGD on Q)", id="kd")
    ce = d.loss("CE(l_S, t)\n(SGD on Q)", id="ce")
    merge = d.op("merge: W′ = Q W", id="merge")
    out = d.student("recovered network\n(pruned size)", id="out")
    d.edge(t, prune, "copy of weights", detached=True)
    d.edge(prune, s)
    d.edge(s, q)
    d.edge(few, t)
    d.edge(few, s)
    d.edge(t, ls, "features X_T", detached=True)
    d.edge(q, ls, "X_S")
    d.edge(t, kd, detached=True)
    d.edge(q, kd, "l_S")
    d.edge(q, ce, "l_S")
    d.edge(y, ce)
    for n in (ls, kd, ce):
        d.edge(n, merge)
    d.edge(merge, out)
