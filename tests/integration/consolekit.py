"""What the console's browser tests share: Debian's chromium under Playwright, a page that
records script errors, signing in by pasting a token, and axe-core's verdict on a page."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

CHROMIUM = "/usr/bin/chromium"
AXE = Path(__file__).resolve().parents[2] / ".tools/ui/node_modules/axe-core/axe.min.js"
XSS_SCRIPT = "<script>window.__pwned = 1</script>"
XSS_IMG = '"><img src=x onerror="window.__pwned = 2">'

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is a dev dependency: make venv installs it"
)
if shutil.which(CHROMIUM) is None:
    pytest.skip("Debian's chromium is not installed: make apt installs it", allow_module_level=True)

needs_axe = pytest.mark.skipif(
    not AXE.exists(), reason="axe-core is not installed: run make ui-deps"
)


class HasUrl(Protocol):
    url: str


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda e: errors.append(str(e)))
    opened.errors = errors
    try:
        yield opened
    finally:
        context.close()


def sign_in(page: Any, server: HasUrl, token: str) -> None:
    page.goto(f"{server.url}/ui")
    assert "/ui/signin" in page.url
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/teams/**")


def axe(page: Any) -> list[str]:
    """The serious and critical violations axe-core finds in the page, as rule ids."""
    # the CSP forbids inline scripts: axe goes in through the DevTools protocol instead
    page.evaluate(AXE.read_text())
    result = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    return [
        f"{v['id']}: {v['nodes'][0]['target']}"
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
