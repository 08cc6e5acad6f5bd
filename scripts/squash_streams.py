"""Squash an executed notebook's stream outputs the way a terminal shows them.

Usage: python scripts/squash_streams.py NOTEBOOK.ipynb ...   (rewritten in place)

A kernel sends stdout/stderr in many small messages; a progress bar (tqdm) is
hundreds of them, each redrawing the line after a carriage return. Stored as they
come, they bloat the executed notebook and the book shows every redraw on a line
of its own. Per cell, this merges each stream (stdout, stderr) into its first
output and keeps what a terminal would show: the text after the last "\\r" of
each line. nbval merges streams the same way before it compares, so its checks
are unaffected.

It also hides, in the rendered book only (the `remove-cell` tag), a notebook's
default `parameters` cell when papermill injected the values it actually ran
with right after it: the page then shows the profile that produced its numbers,
once.
"""

import re
import sys

import nbformat

# nbval's own rule, so that a squashed output compares equal to what nbval makes
# of the same messages: drop a line's text up to a "\r" that does not end it.
_CARRIAGE_RETURN = re.compile(r"^.*\r(?=[^\n])", re.MULTILINE)


def terminal_text(text: str) -> str:
    """Keep, of each line, what follows its last carriage return."""
    return _CARRIAGE_RETURN.sub("", text)


def squash(outputs: list) -> list:
    merged: list = []
    streams: dict = {}
    for output in outputs:
        if output.get("output_type") != "stream":
            merged.append(output)
        elif output["name"] in streams:
            streams[output["name"]]["text"] += output["text"]
        else:
            output["text"] = str(output["text"])
            streams[output["name"]] = output
            merged.append(output)
    for output in streams.values():
        output["text"] = terminal_text(output["text"])
    return merged


def hide_default_parameters(cells: list) -> None:
    """Tag the `parameters` cell `remove-cell` when injected values follow it."""
    tags = [c.get("metadata", {}).get("tags", []) for c in cells]
    for i in range(len(cells) - 1):
        if "parameters" in tags[i] and "injected-parameters" in tags[i + 1]:
            cells[i].metadata["tags"] = [*tags[i], "remove-cell"]


def main(paths: list[str]) -> None:
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = squash(cell.outputs)
        hide_default_parameters(nb.cells)
        nbformat.write(nb, path)


if __name__ == "__main__":
    main(sys.argv[1:])
