"""Headless-browser check of the built book, as a reader would see it.

`make test` runs this after building the smoke book, with

- KD_BOOK_HTML: the built HTML folder (required; the module is skipped without it)
- KD_BOOK_SRC: the assembled book source, where the executed notebooks are
  (default: the copies Sphinx keeps under KD_BOOK_HTML/_sources)
- KD_CHROMIUM: the browser binary (default /usr/bin/chromium, Debian's)
- KD_SCREENSHOTS: where full-page screenshots go (default _build/screenshots)

The HTML is served on 127.0.0.1 by a thread of this process. Chromium is driven
through Playwright's Python package with the system binary (no `playwright
install`). Every request to another host is recorded and aborted, so a page that
renders here renders offline: MathJax, fonts and scripts all come from the book.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import re
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

if not os.environ.get("KD_BOOK_HTML"):
    pytest.skip(
        "KD_BOOK_HTML is not set: build the book and run `make test-browser` "
        "(or set KD_BOOK_HTML to a built HTML folder)",
        allow_module_level=True,
    )

from playwright.sync_api import BrowserContext, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

HTML_DIR = Path(os.environ["KD_BOOK_HTML"]).resolve()
SRC_DIR = Path(os.environ.get("KD_BOOK_SRC") or HTML_DIR / "_sources").resolve()
CHROMIUM = os.environ.get("KD_CHROMIUM", "/usr/bin/chromium")
REPO = Path(__file__).absolute().parents[2]
SCREENSHOTS = Path(os.environ.get("KD_SCREENSHOTS") or REPO / "_build" / "screenshots")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "[::1]", "::1"}
TIMEOUT_MS = 30_000

# Chapter pages are the executed notebooks that the book rendered.
CHAPTERS = sorted(p.stem for p in (HTML_DIR / "notebooks").glob("*.html"))

# The text of the main content with code, outputs in <pre> and typeset math
# removed: what is left is prose, where TeX must not show through.
_PROSE_JS = """() => {
  const main = document.querySelector('article.bd-article') ?? document.body;
  const clone = main.cloneNode(true);
  clone.querySelectorAll('pre, code, .highlight, mjx-container, script, style')
       .forEach((e) => e.remove());
  return clone.textContent;
}"""

# Waits until every <img> of the main content has loaded or failed (lazy images
# are made eager first), then reports each one.
_IMAGES_JS = """async () => {
  const main = document.querySelector('article.bd-article') ?? document.body;
  const imgs = Array.from(main.querySelectorAll('img'));
  await Promise.all(imgs.map((img) => {
    img.loading = 'eager';
    if (img.complete) return null;
    return new Promise((resolve) => { img.onload = img.onerror = resolve; });
  }));
  return imgs.map((img) => ({src: img.currentSrc || img.src, width: img.naturalWidth}));
}"""

# Resolves once MathJax has finished its initial typesetting of the page.
# `overflowing`: display equations wider than their box (the content column),
# which the reader sees cut off behind a horizontal scrollbar.
_MATHJAX_JS = """async () => {
  await window.MathJax.startup.promise;
  const main = document.querySelector('article.bd-article') ?? document.body;
  return {
    containers: main.querySelectorAll('mjx-container').length,
    math: main.querySelectorAll('.math').length,
    untypeset: Array.from(main.querySelectorAll('.math'))
      .filter((e) => !e.querySelector('mjx-container'))
      .map((e) => e.textContent.slice(0, 80)),
    errors: Array.from(main.querySelectorAll('mjx-merror'))
      .map((e) => e.getAttribute('data-mjx-error') || e.textContent),
    overflowing: Array.from(main.querySelectorAll('mjx-container[display="true"]'))
      .filter((e) => e.scrollWidth > e.clientWidth + 1)
      .map((e) => e.textContent.slice(0, 80)),
    script: (document.querySelector('script[src*="mathjax"]') || {}).src || null,
  };
}"""


@dataclass
class Visit:
    """What happened while one page loaded."""

    page: Page
    external: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    js_errors: list[str] = field(default_factory=list)


def _is_local(url: str) -> bool:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme in {"data", "blob", "about"}:
        return True
    return parsed.hostname in LOCAL_HOSTS


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    assert (HTML_DIR / "index.html").is_file(), f"no built book at {HTML_DIR}"
    handler = functools.partial(_QuietHandler, directory=str(HTML_DIR))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    assert Path(CHROMIUM).is_file(), (
        f"no browser at {CHROMIUM} (make setup installs it)"
    )
    profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh --user-data-dir
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_FLAGS,
            # The narrowest window that keeps both sidebars: its 624-px content
            # column is what the equation-width check below holds pages to.
            viewport={"width": 1200, "height": 900},
        )
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.fixture
def visit(context: BrowserContext, base_url: str) -> Iterator:
    pages: list[Page] = []

    def _visit(path: str) -> Visit:
        page = context.new_page()
        pages.append(page)
        seen = Visit(page)

        def on_route(route) -> None:
            if _is_local(route.request.url):
                route.continue_()
            else:
                route.abort("blockedbyclient")

        def on_request(request) -> None:
            if not _is_local(request.url):
                seen.external.append(request.url)

        def on_response(response) -> None:
            if response.status >= 400:
                seen.broken.append(f"{response.status} {response.url}")

        def on_failed(request) -> None:
            if _is_local(request.url):
                seen.broken.append(f"failed {request.url}: {request.failure}")

        page.route("**/*", on_route)
        page.on("request", on_request)
        page.on("response", on_response)
        page.on("requestfailed", on_failed)
        page.on("pageerror", lambda exc: seen.js_errors.append(str(exc)))
        response = page.goto(
            f"{base_url}/{path}", wait_until="load", timeout=TIMEOUT_MS
        )
        assert response is not None and response.ok, (
            f"{path}: HTTP {response and response.status}"
        )
        return seen

    yield _visit
    for page in pages:
        page.close()


def _screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _typeset_math(seen: Visit) -> dict:
    try:
        seen.page.wait_for_function(
            "() => window.MathJax?.startup?.promise", timeout=TIMEOUT_MS
        )
    except PlaywrightTimeoutError:
        pytest.fail(
            f"MathJax did not start within {TIMEOUT_MS // 1000} s; "
            f"requests to other hosts: {seen.external}; failed local: {seen.broken}"
        )
    return seen.page.evaluate(_MATHJAX_JS)


def _check_page(seen: Visit, name: str, base_url: str) -> dict:
    """The checks every page passes; returns what was measured for more checks."""
    math = _typeset_math(seen)
    images = seen.page.evaluate(_IMAGES_JS)
    prose = seen.page.evaluate(_PROSE_JS)
    seen.page.wait_for_load_state("networkidle", timeout=TIMEOUT_MS)
    _screenshot(seen.page, name)

    assert math["script"] and math["script"].startswith(base_url), (
        f"MathJax not loaded from the book itself: {math['script']}"
    )
    assert not math["untypeset"], f"math left untypeset: {math['untypeset']}"
    assert not math["errors"], f"TeX errors: {math['errors']}"
    assert not math["overflowing"], (
        "display equations wider than the content column (cut off behind a "
        "scrollbar; split them with aligned): " + "; ".join(math["overflowing"])
    )
    assert math["containers"] >= math["math"]
    raw_tex = re.findall(r"\$|\\begin\{|\\\(|\\\[|\\[A-Za-z]{2,}", prose)
    assert not raw_tex, f"raw TeX visible in the text: {sorted(set(raw_tex))}"
    not_loaded = [img["src"] for img in images if img["width"] <= 0]
    assert not not_loaded, f"images that did not load: {not_loaded}"
    assert not seen.external, f"requests to other hosts: {seen.external}"
    assert not seen.broken, f"local resources that failed: {seen.broken}"
    assert not seen.js_errors, f"JavaScript errors: {seen.js_errors}"
    return {"math": math, "images": images}


def _notebook_facts(stem: str) -> dict:
    """Title, number of image outputs and presence of math of an executed notebook."""
    path = SRC_DIR / "notebooks" / f"{stem}.ipynb"
    assert path.is_file(), f"executed notebook not found: {path}"
    nb = json.loads(path.read_text())
    title = None
    has_math = False
    n_images = 0
    n_solutions = 0
    n_diagrams = 0
    for cell in nb["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code":
            n_diagrams += source.count("kd.diagrams.show(")
        if cell["cell_type"] == "markdown":
            n_solutions += len(re.findall(r"\{solution(?:-start)?\}", source))
            if title is None:
                heading = re.search(r"^#\s+(.+?)\s*#*\s*$", source, flags=re.MULTILINE)
                if heading:
                    title = re.sub(r"[*_`]", "", heading.group(1)).strip()
            has_math = has_math or bool(re.search(r"\$|\\begin\{", source))
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            n_images += any(k.startswith("image/") for k in data)
    assert title, f"{path.name} has no markdown heading to title its page"
    return {
        "title": title,
        "has_math": has_math,
        "n_images": n_images,
        "n_solutions": n_solutions,
        "n_diagrams": n_diagrams,
    }


def test_built_chapters_exist() -> None:
    assert CHAPTERS, f"no chapter pages under {HTML_DIR / 'notebooks'}"


@pytest.mark.parametrize("stem", CHAPTERS)
def test_chapter_page(stem: str, visit, base_url: str) -> None:
    facts = _notebook_facts(stem)
    seen = visit(f"notebooks/{stem}.html")
    found = _check_page(seen, f"notebooks-{stem}", base_url)

    title = seen.page.title()
    assert facts["title"] in title, f"title {title!r} lacks {facts['title']!r}"

    # The download button offers the executed notebook (outputs included).
    links = seen.page.eval_on_selector_all(
        "a[href$='.ipynb']", "els => els.map(e => e.getAttribute('href'))"
    )
    assert any(h.endswith(f"_sources/notebooks/{stem}.ipynb") for h in links), links
    offered = json.loads(
        (HTML_DIR / "_sources" / "notebooks" / f"{stem}.ipynb").read_text()
    )
    assert any(c.get("outputs") for c in offered["cells"]), "not the executed notebook"

    if facts["has_math"]:
        assert found["math"]["containers"] >= 1, (
            "the notebook's equations were not typeset"
        )
    assert len(found["images"]) >= facts["n_images"], (
        f"{facts['n_images']} image outputs in the notebook, "
        f"{len(found['images'])} images on the page"
    )
    if facts["n_diagrams"]:
        _check_diagram(seen.page, stem)
    if facts["n_solutions"]:
        _check_solution_toggle(seen.page, stem, facts["n_solutions"])


def _check_diagram(page: Page, stem: str) -> None:
    """A method diagram (Graphviz SVG) is drawn in a cell's output."""
    sizes = page.eval_on_selector_all(
        ".cell_output img[src$='.svg']",
        "els => els.map(e => [e.naturalWidth, e.getBoundingClientRect().height])",
    )
    assert sizes, f"{stem}: no diagram (SVG image) in any cell output"
    assert all(w > 0 and h > 20 for w, h in sizes), f"{stem}: diagram sizes {sizes}"


def _check_solution_toggle(page: Page, stem: str, expected: int) -> None:
    """Solutions are hidden behind a toggle, and the first opens on a click."""
    solutions = page.locator("div.solution.dropdown")
    assert solutions.count() == expected, (
        f"{stem}: {expected} solutions in the notebook, {solutions.count()} on the page"
    )
    first = solutions.first
    body = first.locator("section, p").last
    assert not body.is_visible(), f"{stem}: a solution is visible before its toggle"
    # The toggle button, not the title's middle: the title links to its exercise.
    first.locator("button.toggle-button").first.click()
    body.wait_for(state="visible", timeout=TIMEOUT_MS)
    _screenshot(page, f"notebooks-{stem}-solution")


def test_first_chapter_has_equation_and_figure(visit, base_url: str) -> None:
    stem = "01_traditional_kd"
    assert stem in CHAPTERS, f"notebooks/{stem}.html was not built"
    seen = visit(f"notebooks/{stem}.html")
    found = _check_page(seen, f"notebooks-{stem}", base_url)
    assert found["math"]["containers"] >= 1, "no typeset equation (mjx-container)"
    assert len(found["images"]) >= 1, "no figure on the page"


def test_intro_page_and_taxonomy_figure(visit, base_url: str) -> None:
    seen = visit("book/intro.html")
    found = _check_page(seen, "book-intro", base_url)
    taxonomy = [img for img in found["images"] if "taxonomy" in img["src"]]
    assert taxonomy, f"no taxonomy figure among {[i['src'] for i in found['images']]}"
    assert all(img["width"] > 0 for img in taxonomy)


def test_index_redirects_to_intro(visit) -> None:
    seen = visit("index.html")
    seen.page.wait_for_url("**/book/intro.html", timeout=TIMEOUT_MS)
    assert not seen.external, f"requests to other hosts: {seen.external}"
