"""The built site as a reader's browser shows it: each guide page opened in headless
Chromium (Debian's ``chromium`` package) renders its code blocks, and every image it shows
loads. Builds the site into a temporary folder, serves it on 127.0.0.1 from a thread for
the length of the test, and leaves screenshots of the landing page and of the app developer
guide in ``$STAMEN_SITE_SHOTS`` (default ``/tmp/stamen-site/``), outside the repository.

Skipped, saying so, when Chromium is not installed (``apt-get install -y chromium``).
Run alone: ``pytest tests/docs/test_site_render.py``.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote, urljoin, urlparse

import pytest
from helpers.paths import ROOT
from helpers.static_server import static_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(os.environ.get("STAMEN_SITE_SHOTS", "/tmp/stamen-site"))
#: The pages a reader comes for (under docs/): each is checked for its code blocks, its
#: images and its markup; the API reference pages too.
PAGES = (
    "index.md",
    "researcher.md",
    "app-developer.md",
    "operator.md",
    "experiments.md",
    "privacy.md",
    "how-it-works.md",
    "results.md",
    "benchmarks.md",
    *(f"reference/{p.name}" for p in sorted((ROOT / "docs" / "reference").glob("*.md"))),
)
#: Chromium as this machine's closed network needs it (no background connections).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"
    ),
]


class _Handler(SimpleHTTPRequestHandler):
    """Serves the built site and records every request's path and status."""

    log: list[tuple[str, int]]

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        self.log.append((unquote(urlparse(self.path).path), int(code)))

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """The site built in strict mode and served on 127.0.0.1: its base URL and the log of
    requests (path, status) the server answered."""
    folder = tmp_path_factory.mktemp("site")
    mkdocs = Path(sys.executable).parent / "mkdocs"
    built = subprocess.run(
        [str(mkdocs), "build", "--strict", "--quiet", "--site-dir", str(folder)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    log: list[tuple[str, int]] = []
    with static_server(folder, type("Handler", (_Handler,), {"log": log})) as url:
        yield url, log


def _chromium(tmp_path: Path, *args: str) -> str:
    done = subprocess.run(
        [CHROMIUM or "chromium", *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _url(base: str, page: str) -> str:
    return base if page == "index.md" else urljoin(base, page.removesuffix(".md") + "/")


def _code_blocks(page: str) -> list[str]:
    """The first line of each fenced block of a source page (Mermaid diagrams aside)."""
    lines = (ROOT / "docs" / page).read_text(encoding="utf-8").splitlines()
    firsts, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not fence:
            i += 1
            continue
        body = []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence[1]):
            body.append(lines[i])
            i += 1
        i += 1
        first = next((line for line in body if line.strip()), "")
        if fence[2] != "mermaid" and first:
            firsts.append(" ".join(first.split()))
    return firsts


def _text(dom: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", dom)).split())


@pytest.mark.parametrize("page", PAGES)
def test_each_page_renders_its_code_blocks_and_images(
    page: str, site: tuple[str, list[tuple[str, int]]], tmp_path: Path
) -> None:
    base, log = site
    url = _url(base, page)
    before = len(log)
    dom = _chromium(tmp_path, "--dump-dom", url)
    requests = log[before:]
    assert '<article class="md-content__inner' in dom, f"{url}: no article rendered"
    # A stray tag in the Markdown (a bare <title>) swallows the rest of the page as text.
    assert dom.count("<title>") == 1 and "&lt;/p&gt;" not in dom, f"{url}: markup shown as text"
    assert 'class="md-footer' in dom, f"{url}: the page stops before its footer"
    # A list the Markdown did not indent enough shows its "- " markers inside a paragraph.
    flat = [p[:80] for p in re.findall(r"<p>(.*?)</p>", dom, re.S) if re.search(r"\n\s*- \S", p)]
    assert not flat, f"{url}: list items rendered as paragraph text: {flat}"
    text = _text(dom)
    blocks = _code_blocks(page)
    assert dom.count('<div class="highlight">') + dom.count("<pre") >= len(blocks)
    missing = [first for first in blocks if first not in text]
    assert not missing, f"{url}: code blocks not shown: {missing}"
    images = re.findall(r'<img[^>]*\ssrc="([^"]+)"', dom)
    local = [unquote(urlparse(urljoin(url, src)).path) for src in images]
    local = [p for p, src in zip(local, images, strict=True) if not urlparse(src).netloc]
    served = dict(requests)
    broken = [p for p in local if served.get(p) != 200]
    assert not broken, f"{url}: images that did not load: {broken}"
    failed = [(p, status) for p, status in requests if status >= 400]
    assert not failed, f"{url}: requests the site could not answer: {failed}"
    if page == "benchmarks.md":
        assert len(local) == len(list((ROOT / "docs" / "images" / "benchmarks").glob("*.png")))
    if page == "how-it-works.md":  # the architecture and the two data flows, served locally
        assert {"architecture.svg", "round.svg", "recommendation.svg"} <= {
            Path(p).name for p in local
        }


@pytest.mark.parametrize("page", ["index.md", "app-developer.md", "how-it-works.md"])
def test_screenshots_for_a_person_to_judge(
    page: str, site: tuple[str, list[tuple[str, int]]], tmp_path: Path
) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / (page.removesuffix(".md") + ".png")
    shot.unlink(missing_ok=True)
    _chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", _url(site[0], page))
    assert shot.is_file() and shot.stat().st_size > 10_000, shot
