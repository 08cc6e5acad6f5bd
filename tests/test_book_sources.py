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
