"""Diagrams of chapter 19, distillation for language models (the survey's
section 5.5): what each method compares between a frozen 4-block character
Transformer teacher and a 2-block student reading the same window of text.
See kdutils/diagrams/__init__.py for the style."""

from __future__ import annotations

from . import Diagram, diagram

# Superscripts for a layer's index in labels: h_S¹ is the student's block 1.
_SUP = {0: "⁰", 1: "¹", 2: "²", 3: "³", 4: "⁴"}


def _networks(
    d: Diagram, labels: bool = True
) -> tuple[str, str | None, list[str], list[str]]:
    """A window of text into both networks, each drawn as its embedding, its
    blocks and its head; returns ``(text, next characters, teacher nodes,
    student nodes)``, each list ``[embedding, block 1, ..., head]``; no next
    characters when the method does not use them (``labels=False``)."""
    x = d.data("window of text\n(64 characters)", id="x")
    y = d.data("next characters", id="y") if labels else None
    with d.group("teacher (frozen): 4 blocks", "teacher"):
        t = [d.teacher("embedding", id="T0")]
        t += [d.teacher(f"block {i}", id=f"T{i}") for i in range(1, 5)]
        t.append(d.teacher("LN + head", id="TH"))
    with d.group("student (trained): 2 blocks, narrower", "student"):
        s = [d.student("embedding", id="S0")]
        s += [d.student(f"block {i}", id=f"S{i}") for i in range(1, 3)]
        s.append(d.student("LN + head", id="SH"))
    d.edge(x, t[0])
    d.edge(x, s[0])
    d.chain(*t)
    d.chain(*s)
    return x, y, t, s


def _lm_loss(d: Diagram, s_head: str, y: str, label: str = "CE(l_S, next char)") -> str:
    ce = d.loss(label, id="ce")
    d.edge(s_head, ce, "l_S")
    d.edge(y, ce)
    return ce


@diagram(
    "lm_kd",
    "Soft targets for a language model (DistilBERT, Sanh et al. 2019): the "
    "teacher's next-character distribution at every position",
)
def _lm_kd(d: Diagram) -> None:
    x, y, t, s = _networks(d)
    _lm_loss(d, s[-1], y, "2 · CE(l_S, next char)")
    soft_t = d.op("softmax(l_T / T)", id="pt")
    soft_s = d.op("log softmax(l_S / T)", id="ps")
    kd = d.loss("5 · T² KL(p_T ‖ p_S)\nmean over positions", id="kd")
    d.edge(t[-1], soft_t, "l_T", detached=True)
    d.edge(s[-1], soft_s, "l_S")
    d.edge(soft_t, kd, detached=True)
    d.edge(soft_s, kd)


@diagram(
    "lm_pkd",
    "Patient knowledge distillation (BERT-PKD, Sun et al. 2019): the student's "
    "block 1 learns the teacher's block 2 (PKD-skip), normalised",
)
def _lm_pkd(d: Diagram) -> None:
    x, y, t, s = _networks(d)
    _lm_loss(d, s[-1], y, "(1 − α) CE(l_S, next char)")
    proj = d.aux("W: d_S → d_T", id="W")
    norm_s = d.op("h / ‖h‖", id="ns")
    norm_t = d.op("h / ‖h‖", id="nt")
    pt = d.loss("β · mean (ĥ_S − ĥ_T)²", id="pt")
    d.edge(s[1], proj, "h_S¹")
    d.edge(proj, norm_s)
    d.edge(t[2], norm_t, "h_T²", detached=True)
    d.edge(norm_s, pt)
    d.edge(norm_t, pt, detached=True)
    kd = d.loss("α · T² KL(p_T ‖ p_S)\n(mean over entries)", id="kd")
    d.edge(t[-1], kd, "l_T", detached=True)
    d.edge(s[-1], kd, "l_S")


@diagram(
    "lm_tinybert",
    "TinyBERT (Jiao et al. 2020): attention scores and hidden states of "
    "mapped layers, then the prediction layer",
)
def _lm_tinybert(d: Diagram) -> None:
    x, _, t, s = _networks(d, labels=False)  # no hard-label term
    proj = d.aux("W_h: d_S → d_T\n(shared)", id="Wh")
    hid = d.loss(
        "stage 1: Σ_m MSE(W_h h_S^m, h_T^g(m))\nm = 0, 1, 2; g(m) = 2m", id="hid"
    )
    att = d.loss("stage 1: Σ_m MSE(A_S^m, A_T^g(m))\nscores per head", id="att")
    for m in (0, 1, 2):
        d.edge(s[m], proj, f"h_S{_SUP[m]}")
        d.edge(t[2 * m], hid, detached=True)
    d.edge(proj, hid)
    for m in (1, 2):
        d.edge(s[m], att, f"A_S{_SUP[m]}")
        d.edge(t[2 * m], att, f"A_T{_SUP[2 * m]}", detached=True)
    pred = d.loss("stage 2: soft CE(p_T, p_S)\nmean over entries", id="pred")
    d.edge(t[-1], pred, "l_T", detached=True)
    d.edge(s[-1], pred, "l_S")


@diagram(
    "lm_lrc",
    "LRC-BERT (Fu et al. 2021): COS-NCE pulls each window's student vector "
    "towards its teacher vector in angle, away from the other windows'",
)
def _lm_lrc(d: Diagram) -> None:
    x, y, t, s = _networks(d)
    nce = d.loss(
        "COS-NCE per mapped layer:\n1 − cos to own window,\nlarger angle to the "
        "other windows",
        id="nce",
    )
    for m in (1, 2):
        w = d.aux(f"W_{m}: d_S → d_T", id=f"W{m}")
        d.edge(s[m], w, f"last position of h_S{_SUP[m]}")
        d.edge(w, nce)
        d.edge(t[2 * m], nce, f"h_T{_SUP[2 * m]} (batch)", detached=True)
    _lm_loss(d, s[-1], y, "stage 2: CE(l_S, next char)")
    soft = d.loss("stage 2: T² KL(p_T ‖ p_S)", id="soft")
    d.edge(t[-1], soft, "l_T", detached=True)
    d.edge(s[-1], soft, "l_S")
