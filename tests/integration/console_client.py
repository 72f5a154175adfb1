"""An operator's side of the console over plain HTTP: sign in, read pages, post their forms.

The console answers HTML; :class:`Page` reads it as a person would (the text, the
links, the forms with their hidden fields, the table rows), so the tests say what
an operator sees rather than how the markup is built.

PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import httpx

SIGN_IN = "/console/sign-in"


@dataclass
class Form:
    method: str
    action: str
    fields: dict[str, str] = field(default_factory=dict)
    """Hidden fields (the CSRF token among them) and text areas, as the page fills them."""
    buttons: list[str] = field(default_factory=list)


class Page(HTMLParser):
    """What a reader of a page sees: its text, links, forms, table rows and tags."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__()
        self.response = response
        self.words: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.forms: list[Form] = []
        self.rows: list[list[str]] = []
        self.tags: list[tuple[str, dict[str, str]]] = []
        self._href: str | None = None
        self._link_words: list[str] = []
        self._cell: list[str] | None = None
        self._hidden = 0
        self._button: list[str] | None = None
        self._textarea: tuple[str, list[str]] | None = None
        self.feed(response.text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        self.tags.append((tag, values))
        if tag in ("style", "title", "script", "textarea"):
            self._hidden += 1
            if tag == "textarea":
                self._textarea = (values.get("name", ""), [])
        elif tag == "a":
            self._href, self._link_words = values.get("href", ""), []
        elif tag == "form":
            self.forms.append(Form(values.get("method", "get").lower(), values.get("action", "")))
        elif tag == "input" and values.get("type") == "hidden" and self.forms:
            self.forms[-1].fields[values.get("name", "")] = values.get("value", "")
        elif tag == "button":
            self._button = []
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("style", "title", "script", "textarea"):
            self._hidden = max(0, self._hidden - 1)
            if tag == "textarea" and self._textarea is not None and self.forms:
                name, parts = self._textarea
                self.forms[-1].fields[name] = "".join(parts)
                self._textarea = None
        elif tag == "a" and self._href is not None:
            self.links.append((" ".join(self._link_words), self._href))
            self._href = None
        elif tag == "button" and self._button is not None:
            if self.forms:
                self.forms[-1].buttons.append(" ".join(self._button))
            self._button = None
        elif tag in ("td", "th") and self._cell is not None and self.rows:
            self.rows[-1].append(" ".join(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._textarea[1].append(data)
        if self._hidden:
            return
        words = data.split()
        self.words += words
        if self._href is not None:
            self._link_words += words
        if self._cell is not None:
            self._cell += words
        if self._button is not None:
            self._button += words

    @property
    def text(self) -> str:
        return " ".join(self.words)

    @property
    def status(self) -> int:
        return self.response.status_code

    def link(self, text: str) -> str:
        """The href of the first link that reads ``text``."""
        found = [h for t, h in self.links if t == text]
        assert found, f"no link {text!r} among {[t for t, _ in self.links]}"
        return found[0]

    def form(self, action: str | None = None, button: str | None = None) -> Form:
        """The form posting to ``action`` (a prefix) or with a button reading ``button``."""
        for f in self.forms:
            if (action is None or f.action.startswith(action)) and (
                button is None or button in f.buttons
            ):
                return f
        raise AssertionError(f"no form {action!r}/{button!r} among {self.forms}")

    @property
    def is_sign_in(self) -> bool:
        return any(f.action == SIGN_IN for f in self.forms) and "Admin token" in self.text


def csrf_of(page: Page) -> str:
    for f in page.forms:
        if "csrf" in f.fields:
            return f.fields["csrf"]
    raise AssertionError("no form with a CSRF token on the page")


class ConsoleClient:
    """A browser-less operator: keeps the cookies, reads pages, posts forms."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30.0, follow_redirects=False)

    def close(self) -> None:
        self.http.close()

    def get(
        self,
        path: str,
        query: Mapping[str, Any] | None = None,
        *,
        follow: bool = True,
        **params: Any,
    ) -> Page:
        params = {**(query or {}), **params}
        response = self.http.get(path, params=params or None, follow_redirects=follow)
        return Page(response)

    def post(self, path: str, data: dict[str, Any], *, follow: bool = True, **kw: Any) -> Page:
        return Page(self.http.post(path, data=data, follow_redirects=follow, **kw))

    def submit(
        self,
        page: Page,
        action: str,
        fields: Mapping[str, str] | None = None,
        *,
        follow: bool = True,
        **values: str,
    ) -> Page:
        """Post the page's form for ``action`` with its hidden fields, ``fields`` and ``values``."""
        form = page.form(action)
        return self.post(form.action, {**form.fields, **(fields or {}), **values}, follow=follow)

    def sign_in(self, token: str, name: str = "Ann Operator", *, next_url: str = "") -> Page:
        page = self.get(SIGN_IN)
        values = {"token": token, "name": name}
        if next_url:
            values["next"] = next_url
        return self.submit(page, SIGN_IN, values)

    @property
    def session_cookie(self) -> str | None:
        for cookie in self.http.cookies.jar:
            if cookie.name == "rewards_console":
                return cookie.value
        return None


def set_cookie_attributes(response: httpx.Response, name: str) -> dict[str, str]:
    """The attributes of the ``Set-Cookie`` header for ``name`` (lower-cased keys)."""
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(name + "="):
            parts = [p.strip() for p in header.split(";")]
            attributes = {"value": parts[0].split("=", 1)[1]}
            for part in parts[1:]:
                key, _, value = part.partition("=")
                attributes[key.lower()] = value or "true"
            return attributes
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.get_list('set-cookie')}")


def numbers(text: str) -> list[int]:
    return [int(n.replace(",", "")) for n in re.findall(r"\d[\d,]*", text)]
