"""Notebooks use only kdutils' public names.

What a chapter calls is the API a reader learns, so it must be exported:
``kd.<name>`` in ``kdutils.__all__``, or ``kd.<module>.<name>`` with the
module in ``kdutils.__all__`` and the name in that module's ``__all__``.
Nothing private (``_name``) and no reaching through a module into another.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import kdutils as kd

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
ACCESS = re.compile(r"(?<![\w.])kd((?:\.\w+)+)")
FROM = re.compile(r"^\s*from kdutils((?:\.\w+)*) import ([\w, ()]+)", re.M)


def _code(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


def _problems(path: list[str]) -> str | None:
    """Why ``kd.<path>`` is not public, or None."""
    if any(p.startswith("_") and not p.endswith("__") for p in path):
        return "a private name"
    if path[0].startswith("__"):  # a module attribute, e.g. kd.__file__
        return None
    if path[0] not in kd.__all__:
        return f"{path[0]!r} is not in kdutils.__all__"
    if len(path) == 1:
        return None
    module = getattr(kd, path[0])
    if not hasattr(module, "__all__"):  # a class or function: an attribute of it
        return None
    if path[1] not in module.__all__:
        return f"{path[1]!r} is not in kdutils.{path[0]}.__all__"
    return None


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[n.stem for n in NOTEBOOKS])
def test_a_chapter_uses_only_public_names(nb):
    code = _code(nb)
    bad = []
    for m in ACCESS.finditer(code):
        path = m.group(1).lstrip(".").split(".")
        why = _problems(path)
        if why:
            bad.append(f"kd.{'.'.join(path[:2])}: {why}")
    for m in FROM.finditer(code):
        mod = m.group(1).lstrip(".").split(".") if m.group(1) else []
        names = [
            n.strip(" ()").split(" as ")[0].strip()
            for n in m.group(2).split(",")
            if n.strip(" ()")
        ]
        for name in names:
            why = _problems([*mod, name]) if mod else _problems([name])
            if why or len(mod) > 1:
                bad.append(
                    f"from kdutils.{'.'.join(mod)} import {name}: {why or 'a module inside a module'}"
                )
    assert not bad, "\n".join(sorted(set(bad)))
