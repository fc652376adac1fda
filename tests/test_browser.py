"""The built smoke book as a reader sees it: headless Chromium (Playwright, the system's
/usr/bin/chromium) opens every page from a server on 127.0.0.1, with every other request refused,
so the book must work offline. No page logs an error; the menu button shows the table of contents
at phone width; every figure is a loaded image, linked to its full size and readable at the
column's width; formulas render; no page is wider than the window.

Without Playwright or Chromium the module is skipped, unless the environment variable CI is set:
then it fails (.ci/run installs both)."""
from __future__ import annotations

import functools
import http.server
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}
MIN_FONT_PT = 8        # plots.MIN_FONT: the smallest text in a figure
MIN_TEXT_PX = 9        # ... must read at least this tall at the column's width

# Resolves once the page has loaded, its images have decoded and MathJax (if any) has typeset.
SETTLED = """async () => {
  await Promise.all(Array.from(document.images).map(img => img.decode().catch(() => null)));
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) { await MathJax.startup.promise; }
  return true;
}"""


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (it is pinned in requirements.txt)"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser():
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{missing}; CI is set, so the browser check may not be skipped")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@dataclass
class Site:
    root: Path     # _build/html
    base: str      # http://127.0.0.1:<port>/

    def pages(self) -> list[str]:
        """Every HTML page of the book, as paths relative to the root."""
        return sorted(p.relative_to(self.root).as_posix() for p in self.root.rglob("*.html")
                      if not p.relative_to(self.root).parts[0].startswith("_"))

    def chapters(self) -> list[str]:
        return [p for p in self.pages() if p.startswith("book/executed/")]


@pytest.fixture(scope="module")
def site(browser, built_book):
    root = built_book / "_build" / "html"
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield Site(root=root, base=f"http://127.0.0.1:{server.server_address[1]}/")
    server.shutdown()
    server.server_close()


@dataclass
class Visit:
    page: object
    errors: list[str]      # console errors and uncaught exceptions
    outside: list[str]     # requests for anything but the local server (refused)


@pytest.fixture
def visit(browser, site):
    """``visit(path, viewport)`` opens a page of the book in a fresh context and waits until it settles."""
    contexts = []

    def open_page(path: str, viewport: dict = DESKTOP) -> Visit:
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        seen = Visit(page=page, errors=[], outside=[])

        def route(r):
            if r.request.url.startswith(site.base):
                r.continue_()
            else:
                seen.outside.append(r.request.url)
                r.abort()

        page.route("**/*", route)
        page.on("console", lambda m: seen.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: seen.errors.append(f"exception: {e}"))
        page.goto(site.base + path, wait_until="load")
        page.wait_for_load_state("networkidle")
        page.evaluate(SETTLED)
        return seen

    yield open_page
    for context in contexts:
        context.close()


def test_no_page_logs_an_error_or_reaches_outside(site, visit):
    pages = site.pages()
    assert "book/intro.html" in pages and site.chapters()
    problems = {}
    for path in pages:
        seen = visit(path)
        if seen.errors or seen.outside:
            problems[path] = seen.errors + [f"request outside the book: {u}" for u in seen.outside]
    assert not problems, problems


@pytest.mark.parametrize("path", ["book/intro.html", "book/executed/06_vir_main.html"])
def test_the_menu_button_shows_the_contents_at_phone_width(site, visit, path):
    seen = visit(path, PHONE)
    page = seen.page
    button = page.locator(".bd-header-article .primary-toggle")
    assert button.is_visible()
    toc = page.locator("#pst-primary-sidebar-modal")
    assert not toc.is_visible()
    button.click()
    toc.wait_for(state="visible", timeout=5000)
    assert page.evaluate("() => document.querySelector('#pst-primary-sidebar-modal').open")
    links = page.locator("#pst-primary-sidebar-modal nav.bd-docs-nav a.reference")
    hrefs = links.evaluate_all("links => links.filter(a => a.checkVisibility()).map(a => a.getAttribute('href'))")
    shown = {href.split("#")[0].rsplit("/", 1)[-1] or Path(path).name for href in hrefs}   # "#": this page
    expected = {Path(p).name for p in site.chapters()} | {"bibliography.html"}
    assert expected <= shown, f"not in the menu: {sorted(expected - shown)}"
    page.keyboard.press("Escape")
    toc.wait_for(state="hidden", timeout=5000)
    assert not seen.errors, seen.errors


def test_the_menu_button_hides_the_sidebar_on_a_wide_screen(visit):
    page = visit("book/intro.html", DESKTOP).page
    sidebar = page.locator("#pst-primary-sidebar")
    assert sidebar.is_visible()
    page.locator(".bd-header-article .primary-toggle").click()
    page.wait_for_function("() => document.querySelector('#pst-primary-sidebar').classList.contains('pst-sidebar-hidden')")
    assert not page.locator("#pst-primary-sidebar-modal").is_visible()


def test_every_figure_is_a_loaded_image_readable_in_the_column_and_linked_to_its_full_size(site, visit):
    figures = 0
    for path in site.chapters():
        page = visit(path, DESKTOP).page
        images = page.evaluate("""() => Array.from(document.querySelectorAll('.bd-article img')).map(img => ({
            src: img.getAttribute('src'), alt: img.getAttribute('alt') || '', natural: img.naturalWidth,
            shown: img.clientWidth, cssWidth: img.style.width, output: !!img.closest('.cell_output'),
            link: img.closest('a') ? img.closest('a').getAttribute('href') : null}))""")
        for img in images:
            where = f"{path}: {img['src']}"
            assert img["natural"] > 0, f"{where} did not load"
            if not img["output"]:
                continue
            figures += 1
            assert img["alt"] and ".png" not in img["alt"], f"{where}: alt text {img['alt']!r} does not say what it shows"
            assert img["link"] and img["link"].endswith(".png"), f"{where}: no link to the full-size image"
            full = page.request.get(urljoin(page.url, img["link"]))
            assert full.ok and full.body()[:4] == b"\x89PNG", f"{where}: the full-size image {img['link']} is not served"
            assert img["cssWidth"].endswith("px"), f"{where}: no print width (report.show_image sets it)"
            inches = float(img["cssWidth"][:-2]) / 96
            smallest = img["shown"] * MIN_FONT_PT / (72 * inches)
            assert smallest >= MIN_TEXT_PX, (f"{where}: {inches:.1f} in wide, shown {img['shown']} px wide: "
                                             f"its {MIN_FONT_PT} pt text reads {smallest:.1f} px tall")
    assert figures >= 1


def test_formulas_render_offline(site, visit):
    with_math = [p for p in site.pages() if 'class="math notranslate' in (site.root / p).read_text()]
    assert with_math, "no page has a formula"
    for path in with_math:
        seen = visit(path, DESKTOP)
        source = seen.page.evaluate("() => Array.from(document.scripts).map(s => s.src).filter(s => s.includes('mathjax'))")
        assert source and all(s.startswith(site.base) for s in source), f"{path}: MathJax from {source}"
        counts = seen.page.evaluate("""() => [document.querySelectorAll('.math').length,
            document.querySelectorAll('.math mjx-container').length, document.querySelectorAll('mjx-merror').length]""")
        assert counts[1] >= counts[0] > 0 and counts[2] == 0, f"{path}: formulas, rendered, errors = {counts}"
        assert not seen.outside, seen.outside


@pytest.mark.parametrize("viewport", [PHONE, DESKTOP], ids=["phone", "desktop"])
def test_no_page_is_wider_than_the_window_and_table_captions_fit_the_column(site, visit, viewport):
    for path in site.chapters():
        page = visit(path, viewport).page
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{path} at {viewport['width']} px: the page is {width[0]} px wide"
        captions = page.evaluate("""() => Array.from(document.querySelectorAll('.cell_output table caption')).map(c =>
            [c.getBoundingClientRect().width, c.closest('.output').clientWidth, c.textContent.slice(0, 60)])""")
        for caption, column, text in captions:
            assert caption <= column + 1, f"{path}: caption {text!r} is {caption:.0f} px in a {column} px column"
