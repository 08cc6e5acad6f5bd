"""Numbers from a run, glued into a chapter's prose.

``glue("kd_gain", 1.234)`` in a code cell stores the value in the cell's output,
where Jupyter Book's ``{glue:text}`` role finds it: the prose then reads
``{glue:text}`kd_gain:.2f``` and shows the number this execution computed, so no
measured number is ever typed into a chapter. It writes the same output as
``myst_nb.glue`` without needing myst-nb, so the notebooks also run on Colab and
in a plain JupyterLab, where the value is simply not shown.
"""

from __future__ import annotations

import numbers

__all__ = ["glue"]

GLUE_PREFIX = "application/papermill.record/"


def glue(name: str, value: object, display: bool = False) -> None:
    """Store ``value`` under ``name`` for ``{glue:text}`` (numbers keep their type,
    so a format spec such as ``:.2f`` applies; strings are stored unquoted)."""
    from IPython.display import display as ipy_display  # only inside a kernel

    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"glue name {name!r} must be an identifier")
    if isinstance(value, bool) or not isinstance(value, numbers.Real | str):
        raise TypeError(
            f"glue {name!r}: a number or a string, not {type(value).__name__}"
        )
    if isinstance(value, str):
        text = value
    elif isinstance(value, numbers.Integral):
        text = repr(int(value))  # numpy integers print as plain integers
    else:
        text = repr(float(value))
    prefix = "" if display else GLUE_PREFIX
    ipy_display(
        {prefix + "text/plain": text},
        raw=True,
        metadata={"scrapbook": {"name": name, "mime_prefix": prefix}},
    )
