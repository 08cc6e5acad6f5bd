"""Method diagrams: one schematic per method, all in one visual style.

A diagram shows what flows where in a method: the data, the frozen teacher, the
trained student, the modules added for distillation, the operations that shape
what is transferred, and the losses. Each kind of node has one look across the
book, so that a reader who has learnt it in chapter 1 can read every later
diagram at a glance:

==========  ==========================================================
kind        meaning
==========  ==========================================================
``data``    images, labels, a batch
``teacher`` a network (or part of one) that is *not* trained here
``student`` the network being trained
``aux``     a module added for distillation and trained with the
            student (a regressor, a gate, a discriminator, a branch)
``op``      a fixed computation (softmax at T, an attention map, a
            Gram matrix); no parameters
``loss``    a loss term; the edges into it are what it compares
==========  ==========================================================

Edges: a solid arrow carries values forward with gradients; a dashed arrow
carries values the loss treats as constants (the teacher's outputs under
``no_grad``, or a ``detach()``).

A diagram is built by a function registered under the method's name::

    @diagram("kd", "Knowledge distillation (Hinton et al. 2015)")
    def _(d: Diagram) -> None:
        x = d.data("x", "image x")
        ...

``show("kd")`` returns it; in Jupyter it displays as SVG, drawn by Graphviz's
``dot`` (``apt install graphviz``; Colab has it). Without ``dot`` it displays
its Graphviz source and says how to install Graphviz. The module imports
nothing of kdutils, so every layer may use it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

__all__ = ["DIAGRAMS", "Diagram", "DotNotFound", "diagram", "show", "legend"]

FONT = "Helvetica"
# Superscripts for a stage's index in labels: f_S¹ is the student's map of stage 1.
SUP = {1: "¹", 2: "²", 3: "³"}

# One look per kind of node (fill, border, shape); the book's legend is drawn
# from this table, so it cannot disagree with the diagrams.
STYLES: dict[str, dict[str, str]] = {
    "data": {
        "shape": "box",
        "style": "rounded",
        "fillcolor": "white",
        "color": "#666666",
    },
    "teacher": {
        "shape": "box",
        "style": "filled",
        "fillcolor": "#d6e4f5",
        "color": "#1f4e79",
    },
    "student": {
        "shape": "box",
        "style": "filled",
        "fillcolor": "#fde3c8",
        "color": "#b35900",
    },
    "aux": {
        "shape": "box",
        "style": "filled,rounded",
        "fillcolor": "#dff0d8",
        "color": "#2e6b1f",
    },
    "op": {"shape": "box", "style": "dashed", "fillcolor": "white", "color": "#888888"},
    "loss": {
        "shape": "ellipse",
        "style": "filled",
        "fillcolor": "#f8d7d7",
        "color": "#a61c1c",
    },
}
CLUSTER_STYLES: dict[str, dict[str, str]] = {
    "teacher": {"style": "rounded,dashed", "color": "#1f4e79", "fontcolor": "#1f4e79"},
    "student": {"style": "rounded,dashed", "color": "#b35900", "fontcolor": "#b35900"},
    "aux": {"style": "rounded,dashed", "color": "#2e6b1f", "fontcolor": "#2e6b1f"},
    "plain": {"style": "rounded,dashed", "color": "#888888", "fontcolor": "#444444"},
}
EDGE_STYLES: dict[str, dict[str, str]] = {
    "flow": {"style": "solid", "color": "#333333"},
    "detached": {"style": "dashed", "color": "#1f4e79"},
}


class DotNotFound(RuntimeError):
    """Graphviz's ``dot`` is not installed."""


def _quote(text: str) -> str:
    return (
        '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    )


def _attrs(attrs: dict[str, str]) -> str:
    return ", ".join(f"{k}={_quote(v)}" for k, v in attrs.items())


@dataclass
class Diagram:
    """A method's schematic, built node by node (see the module docstring)."""

    name: str
    title: str = ""
    rankdir: str = "LR"
    _lines: list[str] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)
    _depth: int = 1

    # -- nodes ---------------------------------------------------------------
    def node(self, kind: str, label: str, id: str | None = None) -> str:
        """Add a node of ``kind`` (a key of ``STYLES``) and return its id."""
        if kind not in STYLES:
            raise ValueError(f"unknown node kind {kind!r}; one of {sorted(STYLES)}")
        base = (
            id or re.sub(r"\W+", "_", label.split("\n")[0]).strip("_").lower() or kind
        )
        nid, i = base, 1
        while nid in self._ids:
            i += 1
            nid = f"{base}_{i}"
        self._ids.add(nid)
        self._emit(f"{_quote(nid)} [{_attrs({'label': label, **STYLES[kind]})}];")
        return nid

    def data(self, label: str, id: str | None = None) -> str:
        return self.node("data", label, id)

    def teacher(self, label: str, id: str | None = None) -> str:
        return self.node("teacher", label, id)

    def student(self, label: str, id: str | None = None) -> str:
        return self.node("student", label, id)

    def aux(self, label: str, id: str | None = None) -> str:
        return self.node("aux", label, id)

    def op(self, label: str, id: str | None = None) -> str:
        return self.node("op", label, id)

    def loss(self, label: str, id: str | None = None) -> str:
        return self.node("loss", label, id)

    # -- the usual start ------------------------------------------------------
    def teacher_student(
        self,
        image: str = "image x",
        label: str = "label t",
        teacher: str = "teacher\n(frozen)",
    ) -> tuple[str, str, str, str]:
        """The image fed to a frozen teacher and to the student, and the label;
        returns the ids ``(x, t, T, S)``."""
        x = self.data(image, id="x")
        y = self.data(label, id="t")
        t = self.teacher(teacher, id="T")
        s = self.student("student", id="S")
        self.edge(x, t)
        self.edge(x, s)
        return x, y, t, s

    def layered_teacher_student(
        self, layers: int = 3
    ) -> tuple[str, str, list[str], list[str]]:
        """The survey's feature-map figures: the image into a frozen teacher and
        a student, each drawn as ``layers`` grouped layers in a chain, and the
        label; returns ``(x, t, teacher layers, student layers)``."""
        x = self.data("image x", id="x")
        y = self.data("label t", id="t")
        with self.group("teacher (frozen)", "teacher"):
            t = [self.teacher(f"layer {i}", id=f"T{i}") for i in range(1, layers + 1)]
        with self.group("student (trained)", "student"):
            s = [self.student(f"layer {i}", id=f"S{i}") for i in range(1, layers + 1)]
        self.edge(x, t[0])
        self.edge(x, s[0])
        self.chain(*t)
        self.chain(*s)
        return x, y, t, s

    def label_loss(self, s: str, y: str, label: str = "CE(l_S, t)") -> str:
        """The student's logits and the label into a cross-entropy; its id."""
        ce = self.loss(label, id="ce")
        self.edge(s, ce, "l_S")
        self.edge(y, ce)
        return ce

    # -- edges and groups ----------------------------------------------------
    def edge(
        self, a: str, b: str, label: str = "", *, detached: bool = False, **attrs: str
    ) -> None:
        """An arrow from ``a`` to ``b``; ``detached`` draws a constant (no gradient)."""
        for nid in (a, b):
            if nid not in self._ids:
                raise ValueError(f"diagram {self.name!r}: no node {nid!r}")
        style = dict(EDGE_STYLES["detached" if detached else "flow"])
        if label:
            style["label"] = label
        style.update(attrs)
        self._emit(f"{_quote(a)} -> {_quote(b)} [{_attrs(style)}];")

    def chain(self, *ids: str, detached: bool = False) -> None:
        """Arrows along ``ids`` in order."""
        for a, b in zip(ids, ids[1:], strict=False):
            self.edge(a, b, detached=detached)

    def same_rank(self, *ids: str) -> None:
        """Place ``ids`` side by side (same column when left to right)."""
        self._emit("{rank=same; " + " ".join(_quote(i) for i in ids) + "}")

    @contextmanager
    def group(self, label: str, kind: str = "plain"):
        """A labelled box around the nodes added inside the ``with`` block."""
        if kind not in CLUSTER_STYLES:
            raise ValueError(
                f"unknown group kind {kind!r}; one of {sorted(CLUSTER_STYLES)}"
            )
        self._emit(f"subgraph cluster_{len(self._lines)} {{")
        self._depth += 1
        self._emit(
            f"label={_quote(label)}; {_attrs(CLUSTER_STYLES[kind]).replace(', ', '; ')};"
        )
        try:
            yield
        finally:
            self._depth -= 1
            self._emit("}")

    def _emit(self, line: str) -> None:
        self._lines.append("  " * self._depth + line)

    # -- output --------------------------------------------------------------
    def dot(self) -> str:
        """The Graphviz source."""
        head = [
            f"digraph {_quote(self.name)} {{",
            f"  graph [rankdir={self.rankdir}, fontname={_quote(FONT)}, fontsize=12, "
            f"labelloc=t, nodesep=0.25, ranksep=0.35, pad=0.1, "
            f"label={_quote(self.title)}];",
            f'  node [fontname={_quote(FONT)}, fontsize=11, margin="0.12,0.05", height=0.3];',
            f"  edge [fontname={_quote(FONT)}, fontsize=9, arrowsize=0.7];",
        ]
        return "\n".join([*head, *self._lines, "}"]) + "\n"

    def svg(self) -> str:
        """The diagram drawn by Graphviz, as SVG text (raises ``DotNotFound``)."""
        exe = shutil.which("dot")
        if exe is None:
            raise DotNotFound(
                "drawing a diagram needs Graphviz's `dot`: `apt install graphviz` "
                "(or `brew install graphviz`, `conda install graphviz`)"
            )
        out = subprocess.run(
            [exe, "-Tsvg"],
            input=self.dot(),
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"dot failed on diagram {self.name!r}: {out.stderr.strip()}"
            )
        # Drop the generator comment (it names the Graphviz version) and the
        # XML prologue, so the SVG embeds cleanly and compares across machines.
        svg = out.stdout[out.stdout.index("<svg") :]
        return re.sub(r"<!--.*?-->\n?", "", svg, flags=re.S)

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict[str, str]:
        text = f"diagram {self.name!r}: {self.title}"
        try:
            return {"image/svg+xml": self.svg(), "text/plain": text}
        except DotNotFound as e:
            return {
                "text/plain": f"{text}\n({e}; its Graphviz source follows)\n{self.dot()}"
            }

    def __repr__(self) -> str:
        return f"Diagram({self.name!r}, {self.title!r})"


DIAGRAMS: dict[str, tuple[str, Callable[[Diagram], None], str]] = {}


def diagram(name: str, title: str, *, rankdir: str = "LR") -> Callable:
    """Register the function that draws ``name``'s diagram."""

    def deco(fn: Callable[[Diagram], None]) -> Callable[[Diagram], None]:
        if name in DIAGRAMS:
            raise ValueError(f"diagram {name!r} is already registered")
        DIAGRAMS[name] = (title, fn, rankdir)
        return fn

    return deco


def show(name: str) -> Diagram:
    """The diagram of ``name`` (a method, a pipeline or a survey figure)."""
    if name not in DIAGRAMS:
        known = ", ".join(sorted(DIAGRAMS))
        raise KeyError(f"no diagram {name!r}; known: {known}")
    title, fn, rankdir = DIAGRAMS[name]
    d = Diagram(name, title, rankdir)
    fn(d)
    return d


def legend() -> Diagram:
    """The node and edge kinds, as the notation page shows them."""
    d = Diagram("legend", "How to read the book's diagrams", "TB")
    names = {
        "data": "data\n(images, labels)",
        "teacher": "teacher\n(not trained here)",
        "student": "student\n(trained)",
        "aux": "added module\n(trained with the student)",
        "op": "fixed operation\n(no parameters)",
        "loss": "loss term",
    }
    ids = [d.node(kind, label, id=kind) for kind, label in names.items()]
    d._emit("{rank=same; " + " ".join(_quote(i) for i in ids) + "}")
    a, b = d.op("value", id="a"), d.op("value", id="b")
    c, e = d.op("value", id="c"), d.op("value", id="e")
    d.edge(a, b, "forward, with gradient")
    d.edge(c, e, "constant (no_grad / detach)", detached=True)
    d._emit(f"{_quote(ids[0])} -> {_quote(a)} [style=invis];")
    return d


# The diagrams, one module per family of methods (the names of
# kdutils/distillers/, and nas for chapter 11's pipelines); importing them
# registers them.
from . import (  # noqa: E402, F401
    adversarial,
    after_survey,
    dense,
    extracting,
    faces,
    fitting,
    generation,
    language,
    multi,
    nas,
    online,
    output,
    progressive,
    relation,
    selfkd,
    small,
    traditional,
)
