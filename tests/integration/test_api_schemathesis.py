"""Property-based: schemathesis drives the running server from its own ``/openapi.json``.

Each operation gets valid and invalid requests (positive and negative generation,
derandomized to keep runs stable) with the admin token and with the client
token, on both databases, and every answer must
pass: no 5xx; a status, a content type and headers the schema documents; a body
that matches the documented schema. The semantic checks (schema-valid data must
be accepted, invalid data refused) are left out: the schema cannot say that an
opaque cursor or an unsubscribe token must be one the server signed, that an
email must be deliverable-looking, or that ``10.0`` points is not a whole number
to this API.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from rewards.api.app import create_app
from rewards.config import load_settings
from tests.integration.api_server import ADMIN, CLIENT, LiveApi

pytest_plugins = ["tests.integration.api_server"]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
EXAMPLES = 25


def operation_labels() -> list[str]:
    """``METHOD /path`` of every operation, from an app built (not served) at collection."""
    app = create_app(load_settings(database_url="sqlite://"))
    schema = schemathesis.openapi.from_dict(app.openapi())
    labels: list[str] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        labels.append(result.ok().label)
    return labels


@pytest.mark.parametrize("token", ["admin", "client"])
@pytest.mark.parametrize("label", operation_labels())
def test_generated_requests_get_no_server_error_and_schema_valid_answers(
    live_api: LiveApi, label: str, token: str
) -> None:
    schema = schemathesis.openapi.from_url(live_api.url("/openapi.json"))
    operation = schema.find_operation_by_label(label)
    assert operation is not None, label
    cases = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
    )

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def generated(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(headers=ADMIN if token == "admin" else CLIENT, checks=CHECKS)

    generated()
