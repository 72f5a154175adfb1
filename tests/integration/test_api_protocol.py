"""What every endpoint shares: JSON parsing, the body limit, tokens, errors, docs and health."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from sqlalchemy import Connection, Engine, event, func, select

from rewards.api.deps import DB_CONCURRENCY, HEALTH_CONCURRENCY, OneHop
from rewards.db import create_db_engine
from rewards.ids import new_id
from rewards.tables import users
from tests.integration.api_server import (
    ADMIN_TOKEN,
    CLIENT_TOKEN,
    LiveApi,
    assert_problem,
    available,
    create_user,
    json_of,
    ledger_totals,
    open_account,
    running_api,
)
from tests.integration.test_api_ledger import run_together
from tests.smtp_server import free_port, running_smtp_server

pytest_plugins = ["tests.integration.api_server"]

LIMIT = 64 * 1024
JSON = {"content-type": "application/json"}
TOKEN_AREAS = ("/users", "/accounts", "/admin")
ADMIN_ENDPOINTS = [
    ("GET", "/admin/notifications"),
    ("GET", "/admin/notifications/stats"),
    ("GET", "/admin/job-runs"),
    ("GET", "/admin/ledger-anomalies"),
    ("POST", "/admin/jobs/check-expiring-points"),
]


@pytest.fixture
def account(live_api: LiveApi) -> str:
    return open_account(live_api, create_user(live_api)["id"])


def chunks(total: int, size: int = 4096) -> Iterator[bytes]:
    """A body of ``total`` bytes sent without Content-Length (chunked transfer encoding)."""
    body = b'{"points": 10, "description": "' + b"x" * total
    for start in range(0, len(body), size):
        yield body[start : start + size]


# -- request bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"{bad", b'{"points": 10', b"{'points': 10}", b"\xff\xfe{}"])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/users"),
        ("PATCH", "/users/{user}"),
        ("POST", "/users/{user}/accounts"),
        ("POST", "/accounts/{account}/earn"),
        ("POST", "/accounts/{account}/redeem"),
    ],
)
def test_a_body_that_is_not_json_is_a_bad_request(
    live_api: LiveApi, method: str, path: str, body: bytes
) -> None:
    user = create_user(live_api)["id"]
    url = path.format(user=user, account=open_account(live_api, user))
    response = live_api.client.request(method, url, content=body, headers=JSON)
    assert "JSON" in assert_problem(response, 400)["detail"]


def test_the_job_trigger_refuses_a_body_that_is_not_json(live_api: LiveApi) -> None:
    response = live_api.admin.post(
        "/admin/jobs/check-expiring-points", content=b'{"asOf": ', headers=JSON
    )
    assert_problem(response, 400)


@pytest.mark.parametrize("path", ["/users", "/accounts/{account}/earn"])
def test_a_declared_body_over_64_kib_is_refused(
    live_api: LiveApi, engine: Engine, account: str, path: str
) -> None:
    body = b'{"points": 10, "description": "' + b"x" * LIMIT + b'"}'
    response = live_api.client.post(path.format(account=account), content=body, headers=JSON)
    assert "64 KiB" in assert_problem(response, 413)["detail"]
    assert ledger_totals(engine, account) == (0, 0, 0)


def test_a_body_of_exactly_64_kib_is_read(live_api: LiveApi, account: str) -> None:
    head = b'{"points": 10, "description": "'
    body = head + b"x" * (LIMIT - len(head) - 2) + b'"}'
    assert len(body) == LIMIT
    response = live_api.client.post(f"/accounts/{account}/earn", content=body, headers=JSON)
    assert "description" in assert_problem(response, 422)["detail"]  # too long, not too large


def test_a_small_chunked_body_is_read(live_api: LiveApi, account: str) -> None:
    response = live_api.client.post(
        f"/accounts/{account}/earn", content=iter([b'{"points":', b" 10}"]), headers=JSON
    )
    assert response.status_code == 201, response.text
    assert "content-length" not in response.request.headers


def test_a_chunked_body_over_64_kib_is_refused(
    live_api: LiveApi, engine: Engine, account: str
) -> None:
    response = live_api.client.post(
        f"/accounts/{account}/earn", content=chunks(LIMIT + 1), headers=JSON
    )
    assert "content-length" not in response.request.headers
    assert "64 KiB" in assert_problem(response, 413)["detail"]


def test_a_chunked_body_over_64_kib_is_refused_by_the_unsubscribe_endpoint(
    live_api: LiveApi,
) -> None:
    response = live_api.anonymous.post(
        "/unsubscribe?token=whatever",
        content=chunks(LIMIT + 1),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 413)


# -- tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        f"Bearer {CLIENT_TOKEN}x",
        f"Basic {CLIENT_TOKEN}",
        f"Token {CLIENT_TOKEN}",
        CLIENT_TOKEN,
        "Bearer \u00e9\u00e8".encode("latin-1"),
    ],
)
@pytest.mark.parametrize("path", ["/users/someone", "/admin/notifications"])
def test_a_missing_or_garbled_token_is_unauthorized(
    live_api: LiveApi, path: str, authorization: str | bytes | None
) -> None:
    if isinstance(authorization, str):
        authorization = authorization.encode()
    headers = {} if authorization is None else {b"Authorization": authorization}
    response = live_api.anonymous.get(path, headers=headers)
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_bearer_scheme_is_case_insensitive(live_api: LiveApi) -> None:
    user = create_user(live_api)["id"]
    response = live_api.anonymous.get(
        f"/users/{user}", headers={"Authorization": f"bearer {CLIENT_TOKEN}"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(("method", "path"), ADMIN_ENDPOINTS)
def test_the_client_token_is_forbidden_on_operator_endpoints(
    live_api: LiveApi, method: str, path: str
) -> None:
    response = live_api.client.request(method, path)
    assert "admin token" in assert_problem(response, 403)["detail"]


def test_the_admin_token_also_works_on_client_endpoints(live_api: LiveApi) -> None:
    user = create_user(live_api)["id"]
    account = json_of(live_api.admin.post(f"/users/{user}/accounts"), 201)["id"]
    assert available(live_api, account) == 0


def test_operator_endpoints_accept_the_admin_token(live_api: LiveApi) -> None:
    response = live_api.anonymous.get(
        "/admin/job-runs", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
    )
    assert json_of(response, 200) == {"items": []}


# -- errors -------------------------------------------------------------------------------------


def test_an_unknown_route_is_a_problem(live_api: LiveApi) -> None:
    assert_problem(live_api.client.get("/no/such/thing"), 404)


def test_an_unsupported_method_is_a_problem(live_api: LiveApi) -> None:
    assert_problem(live_api.client.delete("/users"), 405)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users/a%00b", None),
        ("GET", "/accounts/a%00b/balance", None),
        ("POST", "/users", {"name": "Ann\u0000Lee"}),
        ("PATCH", "/users/{user}", {"name": "Ann\u0000Lee"}),
        ("POST", "/accounts/{account}/earn", {"points": 5, "description": "order\u0000 17"}),
        ("GET", "/admin/notifications?userId=a%00b", None),
    ],
)
def test_text_with_a_nul_character_is_no_server_error(
    live_api: LiveApi,
    method: str,
    path: str,
    body: dict[str, Any] | None,
) -> None:
    user = create_user(live_api)["id"]
    url = path.format(user=user, account=open_account(live_api, user))
    response = live_api.admin.request(method, url, json=body)
    assert response.status_code < 500, response.text


def test_a_write_is_committed_before_its_response_is_sent(
    live_api: LiveApi, engine: Engine
) -> None:
    def slow_commit(_: Connection) -> None:
        time.sleep(0.5)

    event.listen(engine, "commit", slow_commit)
    try:
        created = json_of(live_api.client.post("/users", json={"name": "Ann"}), 201)
        read_back = live_api.client.get(f"/users/{created['id']}")
    finally:
        event.remove(engine, "commit", slow_commit)
    assert read_back.status_code == 200, read_back.text


@pytest.mark.parametrize("operation", ["earn", "redeem"])
def test_points_are_committed_before_the_response_is_sent(
    live_api: LiveApi, engine: Engine, account: str, operation: str
) -> None:
    """Earn and redeem run their work in one hop to a worker thread (rewards.api.deps.OneHop);
    the commit is part of the hop, so a read right after the 201 sees the points."""
    json_of(live_api.client.post(f"/accounts/{account}/earn", json={"points": 50}), 201)

    def slow_commit(_: Connection) -> None:
        time.sleep(0.5)

    event.listen(engine, "commit", slow_commit)
    try:
        json_of(live_api.client.post(f"/accounts/{account}/{operation}", json={"points": 20}), 201)
        left = available(live_api, account)
    finally:
        event.remove(engine, "commit", slow_commit)
    assert left == {"earn": 70, "redeem": 30}[operation]


@pytest.mark.parametrize(
    ("path", "bound"),
    [("/healthz", HEALTH_CONCURRENCY), ("/accounts/{account}/balance", DB_CONCURRENCY)],
)
def test_a_burst_holds_no_more_connections_than_its_kind_is_allowed(
    live_api: LiveApi, engine: Engine, account: str, path: str, bound: int
) -> None:
    """Requests beyond the bound wait on the event loop, not in threads contending for the
    interpreter lock (rewards.api.deps); every one of the burst is still answered."""
    lock = threading.Lock()
    held = most = 0

    def checkout(*_: object) -> None:
        nonlocal held, most
        with lock:
            held += 1
            most = max(most, held)
        time.sleep(0.05)  # keep it a while, so that the burst's requests overlap

    def checkin(*_: object) -> None:
        nonlocal held
        with lock:
            held -= 1

    event.listen(engine, "checkout", checkout)
    event.listen(engine, "checkin", checkin)
    try:
        responses = run_together(30, lambda: live_api.client.get(path.format(account=account)))
    finally:
        event.remove(engine, "checkout", checkout)
        event.remove(engine, "checkin", checkin)
    assert [r.status_code for r in responses] == [200] * 30
    assert 1 < most <= bound


def test_work_in_one_hop_commits_all_of_it_or_nothing(engine: Engine) -> None:
    hop = OneHop(engine)
    user = new_id()

    def write_then_fail(conn: Connection) -> None:
        conn.execute(users.insert().values(id=user))
        raise RuntimeError("the work failed half-way")

    with pytest.raises(RuntimeError, match="half-way"):
        anyio.run(hop.write, write_then_fail)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(users.c.id == user)) == 0

    # A read commits what it wrote on the way (other writers' changes applied to lots).
    anyio.run(hop.read, lambda conn: conn.execute(users.insert().values(id=user)))
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(users.c.id == user)) == 1


# -- health, docs, schema -------------------------------------------------------------------------


def test_health_needs_no_token_and_says_the_database_answers(live_api: LiveApi) -> None:
    assert json_of(live_api.anonymous.get("/healthz"), 200) == {"status": "ok", "database": "ok"}


def test_health_answers_503_and_logs_why_when_the_database_does_not_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server whose PostgreSQL is not there: a problem for the prober, the reason in the
    log for the operator (where, and what the driver said; never a password)."""
    url = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/rewards"
    engine = create_db_engine(url)
    caplog.set_level(logging.WARNING, logger="rewards.api.routes.health")
    try:
        with running_smtp_server() as smtp, running_api(engine, url, smtp) as api:
            body = assert_problem(api.anonymous.get("/healthz"), 503)
    finally:
        engine.dispose()
    assert body["detail"] == "the database does not answer"
    [record] = [r for r in caplog.records if r.name == "rewards.api.routes.health"]
    logged = record.getMessage()
    assert "database unavailable (postgresql+psycopg://postgres:***@127.0.0.1:" in logged, logged
    assert "Connection refused" in logged, logged
    assert "s3cret" not in logged


def test_the_docs_page_is_served(live_api: LiveApi) -> None:
    response = live_api.anonymous.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in response.text
    assert "/openapi.json" in response.text


EXPECTED_OPERATIONS = {
    ("post", "/users"),
    ("get", "/users/{userId}"),
    ("patch", "/users/{userId}"),
    ("post", "/users/{userId}/accounts"),
    ("get", "/users/{userId}/expiring-points"),
    ("get", "/users/{userId}/notifications"),
    ("get", "/accounts/{accountId}"),
    ("post", "/accounts/{accountId}/earn"),
    ("post", "/accounts/{accountId}/redeem"),
    ("get", "/accounts/{accountId}/balance"),
    ("get", "/accounts/{accountId}/lots"),
    ("get", "/accounts/{accountId}/ledger"),
    ("get", "/admin/notifications"),
    ("get", "/admin/notifications/stats"),
    ("get", "/admin/job-runs"),
    ("get", "/admin/ledger-anomalies"),
    ("post", "/admin/jobs/check-expiring-points"),
    ("post", "/admin/members/opt-out"),
    ("get", "/balance"),
    ("get", "/unsubscribe"),
    ("post", "/unsubscribe"),
    ("post", "/resubscribe"),
    ("get", "/healthz"),
    ("get", "/metrics"),
}


def openapi(api: LiveApi) -> dict[str, Any]:
    schema: dict[str, Any] = json_of(api.anonymous.get("/openapi.json"), 200)
    return schema


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield method, path, operation


def test_the_openapi_schema_lists_every_operation(live_api: LiveApi) -> None:
    schema = openapi(live_api)
    assert schema["openapi"].startswith("3.")
    assert schema["info"]["title"] == "rewards"
    assert {(m, p) for m, p, _ in operations(schema)} == EXPECTED_OPERATIONS


def test_the_openapi_schema_says_which_operations_need_a_bearer_token(live_api: LiveApi) -> None:
    schema = openapi(live_api)
    [(scheme_name, scheme)] = schema["components"]["securitySchemes"].items()
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    secured = {
        (m, p) for m, p, op in operations(schema) if {scheme_name: []} in op.get("security", [])
    }
    assert secured == {
        (m, p) for m, p in EXPECTED_OPERATIONS if p.startswith(("/users", "/accounts", "/admin"))
    }


def test_the_openapi_schema_documents_the_problem_responses(live_api: LiveApi) -> None:
    schema = openapi(live_api)
    for method, path, operation in operations(schema):
        if not path.startswith(TOKEN_AREAS):
            continue
        responses = operation["responses"]
        assert "401" in responses, (method, path)
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                assert set(response.get("content", {})) == {"application/problem+json"}, (
                    method,
                    path,
                    status,
                )
