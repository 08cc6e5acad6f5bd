"""Sphinx extension: drop duplicated inline <script> tags from every page.

Sphinx 7.4 (the last series Jupyter Book 1.x allows) adds an inline script that an
extension registers after the builder started twice, once under the file name
None and once under '' (fixed upstream in sphinx-doc/sphinx#13402, Sphinx 8.2).
sphinx-thebe's `const THEBE_JS_URL = ...` is such a script, so every page threw
"Identifier 'THEBE_JS_URL' has already been declared". This keeps the first of
identical scripts. Loaded through `sphinx: local_extensions:` in _config.yml.
"""

from typing import Any

from sphinx.application import Sphinx


def _key(js: Any) -> tuple:
    attributes = getattr(js, "attributes", {})
    return (
        getattr(js, "filename", js) or "",
        getattr(js, "priority", None),
        tuple(sorted((k, str(v)) for k, v in attributes.items())),
    )


def _dedupe(
    app: Sphinx, pagename: str, templatename: str, context: dict, doctree: Any
) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple] = set()
    unique = []
    for js in scripts:
        key = _key(js)
        if key not in seen:
            seen.add(key)
            unique.append(js)
    # A new list for this page only: the builder's own list is left as it is.
    context["script_files"] = unique


def setup(app: Sphinx) -> dict:
    app.connect("html-page-context", _dedupe, priority=999)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
