"""The notebooks' Colab install cell, written from the one repository URL.

The repository is named once, as ``repository.url`` in ``_config.yml``: Jupyter
Book's launch button opens the notebooks from it, and every chapter's first code
cell (tagged ``colab-install``) installs kdutils from it. A notebook opened on
Colab cannot read ``_config.yml``, so the cell carries the URL itself; this
script writes it, and ``--check`` (run by the tests) fails when a notebook's
cell differs from what it would write.

    python scripts/colab_cell.py --write     rewrite the cell in every chapter
    python scripts/colab_cell.py --check     exit 1 when a chapter's cell is stale
    python scripts/colab_cell.py --warn      print a warning while the URL is the
                                             placeholder (make book does this)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TAG = "colab-install"
# The URL the project was started with; nobody can install from it until the
# book has a public repository and `_config.yml` names it.
PLACEHOLDER = "https://github.com/kd-companion/kd-companion"

CELL = """\
# Colab only: install kdutils from the book's repository (elsewhere
# this cell does nothing). Written by scripts/colab_cell.py from
# _config.yml.
import sys

if "google.colab" in sys.modules:
    import subprocess

    repo = "{url}"
    pip = [sys.executable, "-m", "pip", "install", "-q", f"git+{{repo}}"]
    if subprocess.run(pip).returncode != 0:
        sys.exit(
            f"Could not install kdutils from {{repo}}: open this "
            "notebook from a checkout of the repository, or upload "
            "the wheel that `make dist` builds and run "
            "`pip install kdutils-*.whl`."
        )"""


def repository_url(root: Path = ROOT) -> str:
    cfg = yaml.safe_load((root / "_config.yml").read_text())
    url = (cfg.get("repository") or {}).get("url", "")
    if not re.fullmatch(r"https://\S+", url or ""):
        raise SystemExit(
            f"_config.yml: repository.url must be an https URL, got {url!r}"
        )
    return url.rstrip("/")


def chapters(root: Path = ROOT) -> list[Path]:
    """The notebooks that _toc.yml lists, in order."""
    toc = (root / "_toc.yml").read_text()
    names = re.findall(r"^\s*- file: (notebooks/\S+)\s*$", toc, re.M)
    return [root / f"{n}.ipynb" for n in names]


def cell_source(url: str) -> str:
    return CELL.format(url=url)


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


def install_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if TAG in c.get("metadata", {}).get("tags", [])]


def stale(path: Path, url: str) -> str | None:
    """Why ``path``'s install cell is not the one for ``url`` (None: it is)."""
    cells = install_cells(json.loads(path.read_text()))
    if len(cells) != 1:
        return f"{len(cells)} cells tagged {TAG!r} (expected 1)"
    if "".join(cells[0]["source"]) != cell_source(url):
        return "its install cell differs from scripts/colab_cell.py's"
    return None


def write(path: Path, url: str) -> bool:
    """Give ``path`` the install cell for ``url``; True when the file changed."""
    text = path.read_text()
    nb = json.loads(text)
    (cell,) = install_cells(nb)
    cell["source"] = _lines(cell_source(url))
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new)
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--write", action="store_true")
    g.add_argument("--check", action="store_true")
    g.add_argument("--warn", action="store_true")
    args = p.parse_args(argv)
    url = repository_url()
    if args.warn:
        if url == PLACEHOLDER:
            print(
                f"warning: _config.yml's repository.url is still the placeholder "
                f"{url}: the Colab button and the notebooks' install cell point "
                "to a repository that does not exist. Set it, then run "
                "`python scripts/colab_cell.py --write`.",
                file=sys.stderr,
            )
        return 0
    if args.write:
        changed = [p.name for p in chapters() if write(p, url)]
        print(f"install cell for {url}: {len(changed)} notebook(s) rewritten")
        return 0
    bad = [(p.name, why) for p in chapters() if (why := stale(p, url))]
    for name, why in bad:
        print(f"{name}: {why}; run `python scripts/colab_cell.py --write`")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
