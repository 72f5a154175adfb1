"""The one way this service builds a Jinja2 environment, for emails and for member pages.

Strict: a template that names a value its caller does not supply fails at once
(``StrictUndefined``) instead of showing a member a blank. HTML templates
(``*.html``, ``*.html.j2``) are autoescaped, so a member's name cannot inject markup.
"""

from __future__ import annotations

from collections.abc import Sequence

import jinja2


def strict_environment(loaders: Sequence[jinja2.BaseLoader]) -> jinja2.Environment:
    """An environment that searches ``loaders`` in order; see the module's docstring."""
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(list(loaders)),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "html.j2")),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
