"""kd.diagrams (every schematic renders, in one style) and kd.glue."""

from __future__ import annotations

import re
import shutil

import pytest

import kdutils as kd
from kdutils import book, diagrams
from kdutils.diagrams import DIAGRAMS, STYLES, Diagram, DotNotFound

needs_dot = pytest.mark.skipif(
    shutil.which("dot") is None, reason="Graphviz's dot is not installed"
)


@needs_dot
@pytest.mark.parametrize("name", sorted(DIAGRAMS))
def test_every_diagram_renders_as_svg(name):
    d = kd.diagrams.show(name)
    svg = d.svg()
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<!--" not in svg  # no generator comment: identical across machines
    assert d.title and d.title in d.dot()
    # Every node uses one of the book's styles: nothing drawn ad hoc.
    fills = set(re.findall(r'fillcolor="([^"]+)"', d.dot()))
    assert fills <= {s["fillcolor"] for s in STYLES.values()}, fills


@needs_dot
def test_legend_shows_every_kind():
    d = diagrams.legend()
    dot = d.dot()
    for kind in STYLES:
        assert f'"{kind}" [' in dot
    assert 'style="dashed", color="#1f4e79"' in dot  # the detached edge


def test_bad_input_is_refused_clearly():
    d = Diagram("x", "t")
    with pytest.raises(ValueError, match="unknown node kind 'blob'"):
        d.node("blob", "a")
    a = d.data("a")
    with pytest.raises(ValueError, match="no node 'nope'"):
        d.edge(a, "nope")
    with pytest.raises(ValueError, match="unknown group kind"):
        with d.group("g", kind="blob"):
            pass
    with pytest.raises(KeyError, match="no diagram 'nope'; known: .*kd"):
        kd.diagrams.show("nope")
    with pytest.raises(ValueError, match="already registered"):
        diagrams.diagram("kd", "again")(lambda d: None)


def test_labels_are_quoted_and_ids_unique():
    d = Diagram("x", 'a "quoted" title')
    a = d.student('say "hi"\nline two')
    b = d.student('say "hi"\nline two')
    assert a != b
    dot = d.dot()
    assert r'label="say \"hi\"\nline two"' in dot
    assert r'label="a \"quoted\" title"' in dot


def test_group_draws_a_cluster_around_its_nodes():
    d = Diagram("x", "t")
    with d.group("teacher (frozen)", kind="teacher"):
        t = d.teacher("stage 1")
    s = d.student("s")
    d.edge(t, s, detached=True)
    dot = d.dot()
    assert re.search(r'subgraph cluster_\d+ \{\n\s+label="teacher \(frozen\)"', dot)
    assert dot.index("stage 1") < dot.index("}", dot.index("subgraph"))


def test_without_dot_the_source_is_shown_with_how_to_install(monkeypatch):
    monkeypatch.setattr(diagrams.shutil, "which", lambda _: None)
    d = kd.diagrams.show("kd")
    with pytest.raises(DotNotFound, match="apt install graphviz"):
        d.svg()
    bundle = d._repr_mimebundle_()
    assert set(bundle) == {"text/plain"}
    assert "apt install graphviz" in bundle["text/plain"]
    assert 'digraph "kd"' in bundle["text/plain"]


def _captured_glue(monkeypatch, *args, **kwargs):
    calls = []
    monkeypatch.setattr("IPython.display.display", lambda *a, **k: calls.append((a, k)))
    book.glue(*args, **kwargs)
    ((a, k),) = calls
    return a[0], k


def test_glue_writes_what_myst_nb_reads(monkeypatch):
    data, kw = _captured_glue(monkeypatch, "ch01_gain", 1.5)
    assert data == {book.GLUE_PREFIX + "text/plain": "1.5"}
    assert kw == {
        "raw": True,
        "metadata": {
            "scrapbook": {"name": "ch01_gain", "mime_prefix": book.GLUE_PREFIX}
        },
    }
    # The same as myst_nb.glue writes for the same value, where myst-nb exists.
    myst = pytest.importorskip("myst_nb.ext.glue")
    assert myst.GLUE_PREFIX == book.GLUE_PREFIX


def test_glue_keeps_numbers_numbers_and_strings_unquoted(monkeypatch):
    import numpy as np

    key = book.GLUE_PREFIX + "text/plain"
    assert _captured_glue(monkeypatch, "a", np.float64(0.25))[0][key] == "0.25"
    assert _captured_glue(monkeypatch, "b", np.int64(3))[0][key] == "3"
    assert _captured_glue(monkeypatch, "c", "dkd")[0][key] == "dkd"
    shown, kw = _captured_glue(monkeypatch, "d", 2, display=True)
    assert (
        shown == {"text/plain": "2"}
        and kw["metadata"]["scrapbook"]["mime_prefix"] == ""
    )


def test_glue_refuses_what_it_cannot_paste():
    with pytest.raises(ValueError, match="identifier"):
        book.glue("not a name", 1)
    with pytest.raises(TypeError, match="a number or a string, not list"):
        book.glue("x", [1, 2])
    with pytest.raises(TypeError, match="not bool"):
        book.glue("x", True)
