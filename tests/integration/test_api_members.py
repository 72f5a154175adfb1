"""Members and accounts over real HTTP: create, read, update, and the ways each can fail."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.api_server import (
    LiveApi,
    assert_problem,
    create_user,
    json_of,
    open_account,
)

pytest_plugins = ["tests.integration.api_server"]

USER_KEYS = {"id", "email", "name", "emailNotifications", "createdAt"}
ACCOUNT_KEYS = {"id", "userId", "createdAt"}


def assert_utc_stamp(value: Any) -> None:
    assert isinstance(value, str)
    assert value.endswith("Z"), value


# -- success paths ---------------------------------------------------------------------------


def test_creating_a_member_returns_it_with_reminders_on(live_api: LiveApi) -> None:
    response = live_api.client.post("/users", json={"email": "ann@example.com", "name": "Ann Lee"})
    user = json_of(response, 201)
    assert set(user) == USER_KEYS
    assert user["email"] == "ann@example.com"
    assert user["name"] == "Ann Lee"
    assert user["emailNotifications"] is True
    assert isinstance(user["id"], str)
    assert user["id"]
    assert_utc_stamp(user["createdAt"])
    assert response.headers["location"] == f"/users/{user['id']}"


def test_a_member_may_be_created_with_the_clients_own_id_and_reminders_off(
    live_api: LiveApi,
) -> None:
    user = create_user(live_api, id="shop:42", emailNotifications=False)
    assert (user["id"], user["emailNotifications"]) == ("shop:42", False)


def test_the_email_domain_is_normalised(live_api: LiveApi) -> None:
    assert create_user(live_api, email="Ann@EXAMPLE.com")["email"] == "Ann@example.com"


def test_reading_a_member_returns_what_was_created(live_api: LiveApi) -> None:
    user = create_user(live_api)
    assert json_of(live_api.client.get(f"/users/{user['id']}"), 200) == user


def test_patch_changes_only_the_fields_given(live_api: LiveApi) -> None:
    user = create_user(live_api)
    patched = json_of(live_api.client.patch(f"/users/{user['id']}", json={"name": "Ann B."}), 200)
    assert patched == {**user, "name": "Ann B."}
    assert json_of(live_api.client.get(f"/users/{user['id']}"), 200) == patched


def test_patch_turns_reminders_off(live_api: LiveApi) -> None:
    user = create_user(live_api)
    body = {"emailNotifications": False}
    patched = json_of(live_api.client.patch(f"/users/{user['id']}", json=body), 200)
    assert patched == {**user, "emailNotifications": False}


def test_patch_changes_the_email(live_api: LiveApi) -> None:
    user = create_user(live_api)
    body = {"email": "new@example.com"}
    patched = json_of(live_api.client.patch(f"/users/{user['id']}", json=body), 200)
    assert patched == {**user, "email": "new@example.com"}


def test_opening_an_account_returns_it(live_api: LiveApi) -> None:
    user = create_user(live_api)
    response = live_api.client.post(f"/users/{user['id']}/accounts")
    account = json_of(response, 201)
    assert set(account) == ACCOUNT_KEYS
    assert account["userId"] == user["id"]
    assert_utc_stamp(account["createdAt"])
    assert response.headers["location"] == f"/accounts/{account['id']}"


def test_an_account_may_be_opened_with_the_clients_own_id(live_api: LiveApi) -> None:
    user = create_user(live_api)
    response = live_api.client.post(f"/users/{user['id']}/accounts", json={"id": "card-7"})
    assert json_of(response, 201)["id"] == "card-7"


def test_reading_an_account_returns_what_was_opened(live_api: LiveApi) -> None:
    user = create_user(live_api)
    account_id = open_account(live_api, user["id"])
    account = json_of(live_api.client.get(f"/accounts/{account_id}"), 200)
    assert set(account) == ACCOUNT_KEYS
    assert (account["id"], account["userId"]) == (account_id, user["id"])


# -- failures --------------------------------------------------------------------------------


def test_a_duplicate_member_id_is_a_conflict(live_api: LiveApi) -> None:
    create_user(live_api, id="taken")
    response = live_api.client.post("/users", json={"id": "taken", "email": "b@example.com"})
    assert "taken" in assert_problem(response, 409)["detail"]
    assert json_of(live_api.client.get("/users/taken"), 200)["email"] == "ann@example.com"


def test_a_duplicate_account_id_is_a_conflict(live_api: LiveApi) -> None:
    user = create_user(live_api)
    live_api.client.post(f"/users/{user['id']}/accounts", json={"id": "card-7"})
    response = live_api.client.post(f"/users/{user['id']}/accounts", json={"id": "card-7"})
    assert_problem(response, 409)


@pytest.mark.parametrize(
    "email", ["not-an-email", "a@b", "@example.com", "ann@", "ann @example.com", "", 42]
)
def test_an_invalid_email_is_refused_on_create(live_api: LiveApi, email: object) -> None:
    response = live_api.client.post("/users", json={"email": email})
    assert "email" in assert_problem(response, 422)["detail"]


@pytest.mark.parametrize("email", ["not-an-email", "a@b", "ann@", ""])
def test_an_invalid_email_is_refused_on_patch(live_api: LiveApi, email: str) -> None:
    user = create_user(live_api)
    response = live_api.client.patch(f"/users/{user['id']}", json={"email": email})
    assert "email" in assert_problem(response, 422)["detail"]
    assert json_of(live_api.client.get(f"/users/{user['id']}"), 200) == user


@pytest.mark.parametrize(
    "body",
    [
        {"id": "has space"},
        {"id": ""},
        {"id": "x" * 65},
        {"name": "x" * 201},
        {"emailNotifications": "yes please"},
        {"emailNotifications": None},
    ],
)
def test_malformed_member_fields_are_refused(live_api: LiveApi, body: dict[str, Any]) -> None:
    assert_problem(live_api.client.post("/users", json=body), 422)


def test_an_explicit_null_email_creates_a_member_without_one(live_api: LiveApi) -> None:
    user = json_of(live_api.client.post("/users", json={"email": None}), 201)
    assert user["email"] is None


def test_patching_the_email_to_null_removes_it(live_api: LiveApi) -> None:
    user = create_user(live_api)
    patched = json_of(live_api.client.patch(f"/users/{user['id']}", json={"email": None}), 200)
    assert patched == {**user, "email": None}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/users", {"email": "ann@example.com", "nickname": "Annie"}),
        ("PATCH", "/users/{user}", {"createdAt": "2020-01-01T00:00:00Z"}),
        ("PATCH", "/users/{user}", {"id": "another-id"}),
        ("POST", "/users/{user}/accounts", {"id": "card-1", "userId": "someone-else"}),
    ],
)
def test_unknown_fields_are_refused(
    live_api: LiveApi, method: str, path: str, body: dict[str, Any]
) -> None:
    user = create_user(live_api)
    response = live_api.client.request(method, path.format(user=user["id"]), json=body)
    assert_problem(response, 422)
    assert json_of(live_api.client.get(f"/users/{user['id']}"), 200) == user


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/users/nobody", None),
        ("PATCH", "/users/nobody", {"name": "x"}),
        ("PATCH", "/users/nobody", {}),
        ("POST", "/users/nobody/accounts", None),
        ("GET", "/users/nobody/expiring-points", None),
        ("GET", "/users/nobody/notifications", None),
        ("GET", "/accounts/nothing", None),
    ],
)
def test_unknown_members_and_accounts_are_not_found(
    live_api: LiveApi, method: str, path: str, body: dict[str, Any] | None
) -> None:
    response = live_api.client.request(method, path, json=body)
    assert "does not exist" in assert_problem(response, 404)["detail"]
