"""Browser tests: Playwright driving Debian's Chromium (never ``playwright install``).

The browser is the system's ``/usr/bin/chromium`` (``apt-get install chromium``);
``.ci/run`` installs it when it is missing and sets ``REWARDS_REQUIRE_BROWSER=1``, so
there a missing browser fails the run; elsewhere these tests are skipped without it.
The browser lives for one test module: Playwright's synchronous API leaves its event
loop marked as running in the main thread while it is open, and code that runs
``asyncio.run`` there (the tests of the SMTP client, for one) must not find it; so
it is stopped after the module, and these tests run last in a worker's session.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

CHROMIUM = os.environ.get("REWARDS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    browser = [i for i in items if str(i.path).startswith(here)]
    if browser:
        items[:] = [i for i in items if i not in browser] + browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Chromium for one module's tests, closed (and Playwright's loop with it) after them."""
    if not shutil.which(CHROMIUM):
        reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("REWARDS_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
