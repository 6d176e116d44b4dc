"""The console in a real headless browser: Debian's chromium driven by Playwright (a pytest plugin,
registered in ``tests/conftest.py``, with the helpers the browser tests share).

Screenshots go to ``$CHARGEWATCH_SCREENSHOT_DIR`` or ``<tmp>/chargewatch-console-screenshots``
(outside the repository), one per test, named after it. Without /usr/bin/chromium the browser tests
skip, except under CI (``CI`` set), where a missing browser is a failure: .ci/run installs it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import READ_TOKEN

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(os.environ.get("CHARGEWATCH_SCREENSHOT_DIR")
                   or Path(tempfile.gettempdir()) / "chargewatch-console-screenshots")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("the console browser tests need /usr/bin/chromium (apt-get install chromium)")
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the dev extra)")
    with sync_api.sync_playwright() as playwright:
        # playwright's own browser builds cannot be downloaded here: always the system chromium.
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, request) -> Iterator[Any]:
    """A fresh browser page; after the test, a screenshot, and a failure for any script error, CSP
    violation or failed request the page saw."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    # The one expected error status: a refused sign-in answers 401.
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 and not (
        r.status == 401 and r.url.endswith("/console/sign-in")) else None)
    yield page
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    errors = [e for e in errors if not e.startswith("Failed to load resource")]  # told by status above
    assert errors == [], errors


def sign_in(page: Any, base_url: str, path: str = "/console/fleet") -> None:
    page.goto(base_url + path)
    page.get_by_label("Read token").fill(READ_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


def wait_for_charts(page: Any) -> None:
    page.wait_for_function(
        "[...document.querySelectorAll('[data-chart]')].every(el => el.dataset.drawn === 'true')")


def stat(page: Any, name: str) -> str:
    return page.locator(f'[data-stat="{name}"]').inner_text().strip()
