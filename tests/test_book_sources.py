"""The book's sources parse: the bibliography, and every citation names an entry in it.

A syntax error in ``references.bib`` only shows when Sphinx starts, after every notebook
has run; these checks catch it in seconds.
"""

import json
import re
from pathlib import Path

import pytest
from pybtex.database import parse_file
from pybtex.scanner import PybtexSyntaxError

ROOT = Path(__file__).resolve().parents[1]
BIB = ROOT / "book" / "references.bib"
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # not tab, not newline
CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")


def _sources():
    for path in sorted((ROOT / "book").glob("*.md")):
        yield path, path.read_text(encoding="utf-8")
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        text = "\n".join(
            "".join(c["source"]) for c in cells if c["cell_type"] == "markdown"
        )
        yield path, text


def test_bibliography_parses_with_unique_keys():
    entries = parse_file(str(BIB)).entries
    assert len(entries) > 0
    keys = re.findall(r"^@\w+\{([^,]+),", BIB.read_text(encoding="utf-8"), flags=re.M)
    assert len(keys) == len(entries), "an entry was swallowed by an unclosed brace"
    assert len(set(keys)) == len(keys)


def test_every_citation_is_in_the_bibliography():
    known = set(parse_file(str(BIB)).entries)
    missing = {}
    for path, text in _sources():
        for group in CITE.findall(text):
            for key in (k.strip() for k in group.split(",")):
                if key not in known:
                    missing.setdefault(path.name, []).append(key)
    assert not missing, f"citations with no bibliography entry: {missing}"


@pytest.mark.parametrize(
    "bad", ["@misc{a,\n  title = {x}\n\n@misc{b,\n title={y}\n}\n"]
)
def test_an_unclosed_entry_is_caught(tmp_path, bad):
    path = tmp_path / "bad.bib"
    path.write_text(bad)
    with pytest.raises(PybtexSyntaxError):
        parse_file(str(path))


_LIST_START = re.compile(r"^\s{0,3}([-+*]|\d+[.)])\s")


def _lists_inside_inline_math(text: str) -> list[str]:
    """Lines that start like a list item while an inline ``$...$`` is open.

    Markdown splits blocks before it reads inline math, so such a line becomes
    a list item and the formula is cut in two (raw TeX on the page).
    """
    found, open_inline, in_block, in_fence = [], False, False, False
    for line in text.split("\n"):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        if stripped.startswith("$$"):
            # a display block: "$$ ... $$" on one line, or its opening/closing line
            if not (len(stripped) > 2 and stripped.endswith("$$")):
                in_block = not in_block
            continue
        if in_block:
            continue
        if not stripped:
            open_inline = False  # a blank line ends the paragraph
            continue
        if open_inline and _LIST_START.match(line):
            found.append(stripped)
        singles = len(re.findall(r"(?<![\\$])\$(?!\$)", line))
        open_inline ^= singles % 2 == 1
    return found


def test_no_inline_formula_is_broken_by_a_line_that_starts_a_list():
    broken = {}
    for path, text in _sources():
        lines = _lists_inside_inline_math(text)
        if lines:
            broken[path.name] = lines
    assert not broken, f"move the leading '+'/'-' to the previous line: {broken}"


def test_the_list_check_finds_a_split_formula():
    text = "are $a\n+ b$: Eq. (5)\n\n$$\nx\n+ y\n$$\n- a list item $c$"
    assert _lists_inside_inline_math(text) == ["+ b$: Eq. (5)"]


def test_no_control_characters_in_the_sources():
    """A TeX macro written in a plain (not raw) Python string loses its backslash:
    "\\boldsymbol" becomes a backspace and "oldsymbol" (a MathJax error on the page)."""
    found = {}
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for i, cell in enumerate(cells):
            bad = CONTROL.findall("".join(cell["source"]))
            if bad:
                found[f"{path.name} cell {i}"] = sorted({hex(ord(b)) for b in bad})
    for path in sorted((ROOT / "book").glob("*.md")):
        if CONTROL.search(path.read_text(encoding="utf-8")):
            found[path.name] = "control characters"
    assert not found, f"control characters (a lost backslash?): {found}"


def test_every_chapter_has_the_colab_install_cell_from_config():
    """One URL (``_config.yml``'s repository.url) feeds every install cell."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "colab_cell", ROOT / "scripts" / "colab_cell.py"
    )
    colab = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(colab)
    url = colab.repository_url()
    assert colab.chapters()
    for path in colab.chapters():
        assert colab.stale(path, url) is None, path.name
        nb = json.loads(path.read_text())
        first_code = next(c for c in nb["cells"] if c["cell_type"] == "code")
        assert colab.TAG in first_code["metadata"].get("tags", []), path.name
        # the URL appears nowhere else in the notebook
        rest = "".join("".join(c["source"]) for c in nb["cells"] if c is not first_code)
        assert url not in rest, path.name
    # a cell written for another URL is stale
    assert colab.stale(colab.chapters()[0], url + "-elsewhere") is not None
