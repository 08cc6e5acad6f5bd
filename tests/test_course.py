"""The course apparatus of every chapter (issue 18), checked on the sources.

Each chapter opens with objectives, prerequisites and a time estimate; has 4-8
exercises labelled by kind and difficulty, each with one worked solution; draws
the diagrams of the methods it teaches; and types no measured number into its
prose. The exercises' code solutions run with the chapter in ``make test``.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import pytest

import kdutils as kd
from kdutils.diagrams import DIAGRAMS
from kdutils.pipelines.registry import PIPELINES

ROOT = Path(__file__).resolve().parents[1]
TOC = (ROOT / "_toc.yml").read_text()
CHAPTERS = re.findall(r"^ *- file: (notebooks/\S+)", TOC, re.M)

KINDS = ("derivation", "code", "experiment")
EXERCISE = re.compile(r"^(`{3,}|:{3,})\{exercise\}\s*(?P<title>.*)$", re.M)
TITLE = re.compile(r"\((?P<kind>" + "|".join(KINDS) + r"), (?P<stars>★{1,3})\)$")
LABEL = re.compile(r"^:label:\s*(\S+)", re.M)
SOLUTION = re.compile(
    r"^(`{3,}|:{3,})\{solution(?P<gate>-start)?\}\s*(?P<label>\S+)", re.M
)
SOLUTION_END = re.compile(r"^(`{3,}|:{3,})\{solution-end\}", re.M)
SHOW = re.compile(r"""kd\.diagrams\.show\(\s*["']([\w.]+)["']\s*\)""")

# A measured quantity typed into prose: a percentage, accuracy points, a time,
# a speed-up or an epoch count. (Glue it, or print it from the run, instead.)
TYPED = re.compile(
    r"(?<![\w.§$\\{])(\d+(?:[.,]\d+)?)\s*"
    r"(?:\\?%|percent\b|points?\b|pp\b|s\b|sec\b|seconds?\b|min\b|minutes?\b"
    r"|h\b|hours?\b|epochs?\b|×(?!\s*\d))"
)
# A cell may declare that a typed figure is a fixed fact, not a measurement
# (another paper's recipe, a setting), with an HTML comment that the page does
# not show:  <!-- not measured: 240 epochs; 30 epochs -->
NOT_MEASURED = re.compile(r"<!--\s*not measured:(.*?)-->", re.S)
DEV_LOG = re.compile(
    r"what we cut|to fit (the|this chapter's) budget|cache mechanics", re.I
)


@functools.cache  # each test reads the chapters; parse each once (never mutated)
def cells(name: str) -> list[dict]:
    return json.loads((ROOT / f"{name}.ipynb").read_text())["cells"]


def source(cell: dict) -> str:
    return "".join(cell["source"])


def markdown(name: str) -> list[str]:
    return [source(c) for c in cells(name) if c["cell_type"] == "markdown"]


def test_every_chapter_is_found():
    assert len(CHAPTERS) >= 15, CHAPTERS


@pytest.mark.parametrize("name", CHAPTERS)
def test_objectives_prerequisites_and_time(name):
    head = "\n".join(markdown(name)[:3])
    assert "**Objectives.**" in head, f"{name}: no objectives at the top"
    objectives = head.split("**Objectives.**", 1)[1].split("**Prerequisites.**", 1)[0]
    n = len(re.findall(r"^\s*\d+\.\s", objectives, re.M))
    assert 3 <= n <= 5, f"{name}: {n} objectives (3-5 expected)"
    assert "**Prerequisites.**" in head, f"{name}: no prerequisites at the top"
    assert "**Time.**" in head, f"{name}: no time estimate at the top"


@pytest.mark.parametrize("name", CHAPTERS)
def test_exercises_have_kinds_difficulties_and_one_solution_each(name):
    text = "\n".join(markdown(name))
    labels, kinds = [], set()
    for block in re.split(r"(?=^(?:`{3,}|:{3,})\{exercise\})", text, flags=re.M)[1:]:
        title = EXERCISE.match(block)["title"].strip()
        m = TITLE.search(title)
        assert m, f"{name}: exercise {title!r} does not end in '(kind, ★..★★★)'"
        kinds.add(m["kind"])
        label = LABEL.search(block)
        assert label, f"{name}: exercise {title!r} has no :label:"
        labels.append(label[1])
    assert 4 <= len(labels) <= 8, f"{name}: {len(labels)} exercises (4-8 expected)"
    assert len(kinds) >= 2, f"{name}: every exercise is of kind {kinds}"
    stem = Path(name).stem[:2]
    for label in labels:
        assert label.startswith(f"ex-{stem}-"), (
            f"{name}: label {label!r} not ex-{stem}-..."
        )
    solved = [m["label"] for m in SOLUTION.finditer(text)]
    assert sorted(solved) == sorted(labels), f"{name}: solutions {solved} vs {labels}"
    gated = sum(1 for m in SOLUTION.finditer(text) if m["gate"])
    assert gated == len(SOLUTION_END.findall(text)), f"{name}: unclosed solution-start"
    assert len(set(labels)) == len(labels), f"{name}: duplicate labels"


def _code_solutions(name: str) -> dict[str, list[str]]:
    """The code cells between each ``solution-start`` and its ``solution-end``."""
    out: dict[str, list[str]] = {}
    current = None
    for cell in cells(name):
        text = source(cell)
        if cell["cell_type"] == "markdown":
            # A cell may close one solution and open the next: take them in order.
            events = [
                (m.start(), m["label"]) for m in SOLUTION.finditer(text) if m["gate"]
            ]
            events += [(m.start(), None) for m in SOLUTION_END.finditer(text)]
            for _, label in sorted(events):
                current = label
                if label is not None:
                    out[label] = []
        elif current is not None:
            out[current].append(text)
    return out


@pytest.mark.parametrize("name", CHAPTERS)
def test_code_exercises_have_solutions_that_run_and_check(name):
    text = "\n".join(markdown(name))
    code_solutions = _code_solutions(name)
    for block in re.split(r"(?=^(?:`{3,}|:{3,})\{exercise\})", text, flags=re.M)[1:]:
        title = EXERCISE.match(block)["title"].strip()
        if TITLE.search(title)["kind"] != "code":
            continue
        label = LABEL.search(block)[1]
        code = "\n".join(code_solutions.get(label, []))
        assert code, f"{name}: code exercise {label} has no code cells in its solution"
        assert re.search(r"\bassert\b|assert_close|allclose", code), (
            f"{name}: the solution of {label} checks nothing"
        )


@pytest.mark.parametrize("name", CHAPTERS)
def test_no_measured_number_is_typed_into_prose(name):
    for i, text in enumerate(markdown(name)):
        allowed = [
            part.strip()
            for m in NOT_MEASURED.finditer(text)
            for part in m[1].split(";")
            if part.strip()
        ]
        for fact in allowed:
            assert fact in NOT_MEASURED.sub("", text), (
                f"{name}, markdown cell {i}: 'not measured' names {fact!r}, "
                "which the cell no longer contains"
            )
        prose = NOT_MEASURED.sub("", text)
        for fact in allowed:
            prose = prose.replace(fact, "")
        hits = [
            prose[max(0, m.start() - 30) : m.end() + 10] for m in TYPED.finditer(prose)
        ]
        assert not hits, f"{name}, markdown cell {i}: typed figures {hits}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_each_closing_section_appears_once(name):
    """A chapter ends with its takeaways, exercises and references, each once
    (a stale copy of an old closing cell would render them twice)."""
    heads = [
        line.strip()
        for text in markdown(name)
        for line in text.splitlines()
        if line.startswith("## ")
    ]
    for section in ("## Takeaways", "## Exercises", "## References"):
        assert heads.count(section) == 1, (
            f"{name}: {heads.count(section)} x {section!r}"
        )


@pytest.mark.parametrize("name", CHAPTERS)
def test_no_development_log_in_the_chapters(name):
    for text in markdown(name):
        m = DEV_LOG.search(text)
        assert not m, f"{name}: {m[0]!r} belongs in book/experiments.md"


def _shown() -> dict[str, str]:
    shown = {}
    for name in CHAPTERS:
        for cell in cells(name):
            if cell["cell_type"] == "code":
                for d in SHOW.findall(source(cell)):
                    shown.setdefault(d, name)
    return shown


def test_every_method_and_pipeline_has_a_diagram():
    missing = sorted(set(kd.METHODS) - set(DIAGRAMS))
    assert not missing, f"methods without a diagram: {missing}"
    missing = sorted(
        p.split(".")[-1] for p in PIPELINES if p.split(".")[-1] not in DIAGRAMS
    )
    assert not missing, f"pipelines without a diagram: {missing}"


def test_every_diagram_is_shown_in_a_chapter_and_every_chapter_shows_one():
    shown = _shown()
    unknown = sorted(set(shown) - set(DIAGRAMS))
    assert not unknown, f"chapters show diagrams that do not exist: {unknown}"
    unshown = sorted(set(DIAGRAMS) - set(shown))
    assert not unshown, f"diagrams no chapter shows: {unshown}"
    for name in CHAPTERS:
        if Path(name).stem in ("13_comparison", "14_outlook"):
            continue  # they compare the methods the other chapters drew
        assert name in shown.values(), f"{name} shows no diagram"


def test_survey_figures_are_redrawn():
    for n in range(1, 10):
        key = "kd" if n == 2 else f"survey_fig{n}"
        assert key in DIAGRAMS, f"the survey's Fig. {n} is not redrawn"
        assert f"Fig. {n}" in DIAGRAMS[key][0], f"{key}'s title does not cite Fig. {n}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_cell_has_a_unique_id(name):
    # nbformat 4.5 requires cell ids; a cell added without one draws a warning
    # today and will be an error in a later nbformat.
    ids = [c.get("id") for c in cells(name)]
    assert None not in ids, f"{name}: {ids.count(None)} cells without an id"
    assert len(set(ids)) == len(ids), f"{name}: duplicate cell ids"


GLUE_USE = re.compile(r"\{glue:(?:text|)\}`(\w+)")
GLUE_CALL = re.compile(r"""kd\.glue\(\s*(f?)["']([^"']+)["']""")


@pytest.mark.parametrize("name", CHAPTERS)
def test_every_glued_name_in_the_prose_is_glued_by_a_code_cell(name):
    """A ``{glue:text}`` name that no cell glues renders as a warning, and
    ``make test`` builds the book with warnings as errors only after every
    notebook has run: caught here, on the sources, in a second."""
    code = "\n".join(source(c) for c in cells(name) if c["cell_type"] == "code")
    patterns = []
    for m in GLUE_CALL.finditer(code):
        fmt, text = m[1], m[2]
        if fmt:  # an f-string: each {field} stands for any identifier part
            parts = re.split(r"\{[^}]*\}", text)
            patterns.append(re.compile(r"\w+".join(map(re.escape, parts)) + r"\Z"))
        else:
            patterns.append(re.compile(re.escape(text) + r"\Z"))
    # names kept in a dict or list and glued in a loop (``kd.glue(name, v)``)
    literals = set(re.findall(r"""["'](\w+)["']""", code))
    used = {u for text in markdown(name) for u in GLUE_USE.findall(text)}
    missing = sorted(
        u for u in used if u not in literals and not any(p.match(u) for p in patterns)
    )
    assert not missing, f"{name}: the prose uses glue names no cell glues: {missing}"
