"""The console's templates and the headers of every console answer.

One strict, autoescaping Jinja2 environment (:func:`rewards.templating.strict_environment`)
over ``templates/``, loaded when the app is built, so a broken template stops the
server at start. Every page carries :data:`CONSOLE_HEADERS`: no caching (the
pages show members' data), no referrer, no framing by other pages, and a content
security policy that lets a page load only the console's own stylesheet and
script — no inline script or style, nothing from elsewhere. The email preview,
which is the email's own HTML with its inline styles, is served by itself under
:data:`PREVIEW_HEADERS`: sandboxed, no script, framed only by the console.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from fastapi.responses import HTMLResponse

from rewards.notifications.messages import format_points
from rewards.templating import strict_environment

CONSOLE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
        " frame-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}
PREVIEW_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": (
        "sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:;"
        " form-action 'none'; frame-ancestors 'self'; base-uri 'none'"
    ),
}

STATIC_FILES: Mapping[str, str] = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}


def load_static() -> dict[str, bytes]:
    """The console's assets, read once from the package: the service serves them itself."""
    folder = resources.files("rewards.console") / "static"
    return {name: (folder / name).read_bytes() for name in STATIC_FILES}


class ConsolePages:
    """The console's templates, rendered with the programme's zone for every time shown."""

    def __init__(self, zone: ZoneInfo, programme: str) -> None:
        env = strict_environment([jinja2.PackageLoader("rewards.console", "templates")])
        env.filters["when"] = self.when
        env.filters["day"] = self.day
        env.filters["num"] = number
        env.filters["points"] = format_points
        env.filters["seconds"] = seconds
        env.filters["short"] = short
        env.filters["tail"] = tail
        env.globals["zone"] = zone.key
        env.globals["programme"] = programme
        self._env = env
        self._zone = zone
        self._templates = {
            name: env.get_template(name)
            for name in env.list_templates()
            if name.endswith(".html.j2") and not name.startswith("_")
        }

    def when(self, moment: datetime | None) -> str:
        """A stored (naive UTC) instant in the programme's zone: ``2026-11-25 09:00:03``."""
        if moment is None:
            return "—"
        local = moment.replace(tzinfo=UTC).astimezone(self._zone)
        return local.strftime("%Y-%m-%d %H:%M:%S")

    def day(self, moment: datetime | date | None) -> str:
        if moment is None:
            return "—"
        return moment.strftime("%a %d %b %Y")

    def render(self, template: str, status_code: int = 200, /, **context: Any) -> HTMLResponse:
        html = self._templates[template].render(**context)
        return HTMLResponse(html, status_code=status_code, headers=dict(CONSOLE_HEADERS))


def number(value: int | float | None) -> str:
    return "—" if value is None else f"{value:,}"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def short(value: str | None, length: int = 60) -> str:
    if not value:
        return ""
    return value if len(value) <= length else value[: length - 1] + "…"


def tail(value: str, length: int = 12) -> str:
    """The end of a long id (where generated ids differ): ``…0000-0023``."""
    return value if len(value) <= length else "…" + value[-(length - 1) :]
