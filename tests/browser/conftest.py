"""Browser tests: Playwright driving Debian's Chromium (never ``playwright install``).

The browser is the system's ``/usr/bin/chromium`` (``apt-get install chromium``);
``.ci/run`` installs it when it is missing and sets ``REWARDS_REQUIRE_BROWSER=1``, so
there a missing browser fails the run; elsewhere these tests are skipped without it.
These tests run last in the session:
pytest-playwright keeps its event loop for the rest of the session once a browser
has started, and code that runs ``asyncio.run`` in the main thread (the job's
inline dispatcher, in many tests) must not find it there.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

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


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    if not shutil.which(CHROMIUM):
        reason = f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        if os.environ.get("REWARDS_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}
