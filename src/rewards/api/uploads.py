"""Body size limits per path: the API's 64 KiB, and more for the bulk opt-out lists.

A bulk opt-out list (from the console's upload form or ``POST /admin/members/opt-out``)
may name many thousands of members; every other request keeps the API's limit
(:data:`rewards.api.limits.MAX_BODY_BYTES`).
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from rewards.api.limits import MAX_BODY_BYTES, BodySizeLimit

UPLOAD_BYTES = 4 * 1024 * 1024 + 64 * 1024
"""A 4 MiB list (about 100,000 addresses) and the form around it."""
UPLOAD_PATHS = ("/console/opt-out", "/admin/members/opt-out")


class BodySizeLimits:
    """ASGI middleware: :class:`BodySizeLimit` with a larger limit on a few paths."""

    def __init__(
        self,
        app: ASGIApp,
        limit: int = MAX_BODY_BYTES,
        larger: Mapping[str, int] | None = None,
    ) -> None:
        self.default = BodySizeLimit(app, limit)
        chosen = larger if larger is not None else dict.fromkeys(UPLOAD_PATHS, UPLOAD_BYTES)
        self.larger = {path: BodySizeLimit(app, size) for path, size in chosen.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limited = self.larger.get(scope.get("path", "")) if scope["type"] == "http" else None
        await (limited or self.default)(scope, receive, send)
