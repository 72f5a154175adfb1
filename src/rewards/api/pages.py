"""Member pages: HTML a member opens from a link in an email, with no login.

The signed token in the page's URL is the credential (:mod:`rewards.members.links`),
so every answer of a member page, a refusal included, carries :data:`PRIVATE_HEADERS`:
``Cache-Control: no-store`` (no copy kept in a browser or shared cache),
``Referrer-Policy: no-referrer`` (the URL never travels to another site), and a
content security policy that lets the page load nothing from elsewhere.

The pages are Jinja2 templates in ``templates/``, all on one layout
(``base.html.j2``) in the look of the reminder email and narrow enough for a
phone; the environment is the strict, autoescaping one of every template here
(:func:`rewards.templating.strict_environment`). Templates are loaded when the
app is built, so a broken one stops the server at start, not a member at the door.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import jinja2
from fastapi import Query, Request, Response
from fastapi.responses import HTMLResponse

from rewards.api.errors import problem
from rewards.templating import strict_environment

BALANCE = "balance.html.j2"
UNSUBSCRIBE_CONFIRM = "unsubscribe-confirm.html.j2"
UNSUBSCRIBED = "unsubscribed.html.j2"
RESUBSCRIBED = "resubscribed.html.j2"
REFUSED = "refused.html.j2"
TEMPLATE_NAMES = (BALANCE, UNSUBSCRIBE_CONFIRM, UNSUBSCRIBED, RESUBSCRIBED, REFUSED)

PRIVATE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    ),
}

LinkToken = Annotated[
    str, Query(min_length=1, max_length=1000, description="The signed token from the email.")
]


class Pages:
    """The member pages' templates, rendered into responses that carry :data:`PRIVATE_HEADERS`.

    ``programme`` is the name members know the programme by (the emails' sender name);
    every page shows it.
    """

    def __init__(self, programme: str) -> None:
        env = strict_environment([jinja2.PackageLoader("rewards.api", "templates")])
        self._templates = {name: env.get_template(name) for name in TEMPLATE_NAMES}
        self._programme = programme

    def render(self, template: str, status_code: int = 200, /, **context: Any) -> HTMLResponse:
        """The page ``template`` (one of :data:`TEMPLATE_NAMES`) filled with ``context``."""
        html = self._templates[template].render(programme=self._programme, **context)
        return HTMLResponse(html, status_code=status_code, headers=dict(PRIVATE_HEADERS))

    def refused(self, request: Request, detail: str, advice: str) -> Response:
        """400: a friendly page for a browser, problem+json for any other client.

        ``detail`` says what is wrong (both forms); ``advice``, what the member can do
        instead (the page only).
        """
        if "text/html" in request.headers.get("accept", ""):
            return self.render(REFUSED, 400, detail=detail, advice=advice)
        response = problem(400, detail)
        response.headers.update(PRIVATE_HEADERS)
        return response


def page_responses(refusal: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries of a member page: the page, or a refusal described by ``refusal``."""
    headers = {
        name: {"description": f"Always `{value}`.", "schema": {"type": "string"}}
        for name, value in PRIVATE_HEADERS.items()
    }
    return {
        200: {
            "content": {"text/html": {}},
            "description": "A page for the member",
            "headers": headers,
        },
        400: {
            "content": {"text/html": {}, "application/problem+json": {}},
            "description": refusal,
            "headers": headers,
        },
    }
