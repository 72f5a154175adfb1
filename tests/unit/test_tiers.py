"""Tier choice and per-key decisions, table-driven."""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from rewards.notifications import tiers
from rewards.notifications.planner import due_days
from rewards.notifications.tiers import (
    EXPIRED_BEFORE_DELIVERY,
    Decision,
    Status,
    decide,
    loggable_points,
    notification_type,
    recovery_decision,
    tier_due,
)

DEFAULT = (30, 7, 1)
CUSTOM = (60, 14, 3, 1)


@pytest.mark.parametrize(
    ("days_left", "tiers", "expected"),
    [
        (31, DEFAULT, None),  # too early for any reminder
        (30, DEFAULT, 30),
        (29, DEFAULT, 30),  # a missed day-30 run still catches up with the 30-day tier
        (8, DEFAULT, 30),
        (7, DEFAULT, 7),
        (5, DEFAULT, 7),  # missed the 7-day run: the 7-day tier, never the stale 30-day one
        (2, DEFAULT, 7),
        (1, DEFAULT, 1),
        (0, DEFAULT, 1),  # expiring later today: the most urgent tier
        (-1, DEFAULT, None),  # already expired
        (61, CUSTOM, None),
        (60, CUSTOM, 60),
        (15, CUSTOM, 60),
        (14, CUSTOM, 14),
        (4, CUSTOM, 14),
        (3, CUSTOM, 3),
        (2, CUSTOM, 3),
        (1, CUSTOM, 1),
    ],
)
def test_the_most_urgent_tier_that_covers_the_days_left_is_due(
    days_left: int, tiers: tuple[int, ...], expected: int | None
) -> None:
    assert tier_due(days_left, tiers) == expected


@pytest.mark.parametrize(
    ("tier", "name"),
    [
        (30, "EXPIRATION_30_DAYS"),
        (7, "EXPIRATION_7_DAYS"),
        (1, "EXPIRATION_1_DAY"),
        (60, "EXPIRATION_60_DAYS"),
    ],
)
def test_notification_types_keep_the_seed_names(tier: int, name: str) -> None:
    assert notification_type(tier) == name


@pytest.mark.parametrize(
    ("email", "opted_in", "expected"),
    [
        ("ann@example.com", True, Decision(Status.PENDING)),
        ("ann@example.com", False, Decision(Status.SKIPPED, "user opted out")),
        (None, False, Decision(Status.SKIPPED, "user opted out")),  # opt-out wins
        (None, True, Decision(Status.FAILED, "missing email")),
        ("   ", True, Decision(Status.FAILED, "missing email")),
        ("not-an-email", True, Decision(Status.FAILED, "invalid format")),
        ("bob@@example.com", True, Decision(Status.FAILED, "invalid format")),
        ("a b@example.com", True, Decision(Status.FAILED, "invalid format")),
        ("jane@", True, Decision(Status.FAILED, "invalid format")),
        (" padded@example.com ", True, Decision(Status.PENDING)),
    ],
)
def test_decisions_follow_the_seed_reasons(
    email: str | None, opted_in: bool, expected: Decision
) -> None:
    assert decide(email, opted_in, 100) == expected


@pytest.mark.parametrize(
    ("points", "status"),
    [(2**31 - 1, Status.PENDING), (2**31, Status.FAILED), (3_000_000_000, Status.FAILED)],
)
def test_a_sum_too_large_for_the_log_fails_that_key_with_the_amount(
    points: int, status: Status
) -> None:
    decision = decide("ann@example.com", True, points)
    assert decision.status is status
    if status is Status.FAILED:
        assert decision.reason is not None
        assert decision.reason.startswith("too many points: ")
        assert f"{points:,}" in decision.reason


def test_an_opted_out_member_with_too_many_points_is_skipped() -> None:
    assert decide("ann@example.com", False, 2**40) == Decision(Status.SKIPPED, "user opted out")


def test_points_are_capped_to_what_the_log_column_holds() -> None:
    assert loggable_points(2**31 - 1) == 2**31 - 1
    assert loggable_points(3_000_000_000) == 2**31 - 1


def test_due_days_cover_the_run_date_to_the_largest_tier() -> None:
    as_of = datetime(2030, 3, 1, 9, 0)
    days = due_days(as_of, ZoneInfo("UTC"), DEFAULT)
    assert [d.days_left for d in days] == list(range(31))
    assert days[0].day == date(2030, 3, 1)
    assert days[0].starts == as_of  # only what expires after the run
    assert days[0].ends == datetime(2030, 3, 2)
    assert {d.notification_type for d in days[8:]} == {"EXPIRATION_30_DAYS"}
    assert {d.notification_type for d in days[2:8]} == {"EXPIRATION_7_DAYS"}
    assert {d.notification_type for d in days[:2]} == {"EXPIRATION_1_DAY"}


def test_due_days_follow_the_programme_time_zone_and_daylight_saving() -> None:
    paris = ZoneInfo("Europe/Paris")
    as_of = datetime(2030, 3, 30, 8, 0)  # 09:00 in Paris, the day before clocks go forward
    days = due_days(as_of, paris, DEFAULT)
    assert days[0].day == date(2030, 3, 30)
    assert days[1].starts == datetime(2030, 3, 30, 23, 0)  # Paris midnight, UTC+1
    assert days[1].ends == datetime(2030, 3, 31, 22, 0)  # a 23-hour day; then UTC+2
    assert days[2].starts == datetime(2030, 3, 31, 22, 0)


def test_late_evening_utc_can_be_tomorrow_in_the_programme_zone() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    as_of = datetime(2030, 5, 1, 16, 0)  # already 2 May, 01:00 in Tokyo
    assert due_days(as_of, tokyo, DEFAULT)[0].day == date(2030, 5, 2)


@pytest.mark.parametrize(
    ("sent", "days_left", "points_left", "expected"),
    [
        ("EXPIRATION_7_DAYS", 7, 100, None),
        ("EXPIRATION_1_DAY", 0, 100, None),  # expiring later today: still true
        ("EXPIRATION_1_DAY", 0, 0, Decision(Status.FAILED, EXPIRED_BEFORE_DELIVERY)),
        ("EXPIRATION_7_DAYS", -2, 0, Decision(Status.FAILED, EXPIRED_BEFORE_DELIVERY)),
        ("EXPIRATION_7_DAYS", 5, 0, Decision(Status.SKIPPED, "no points left to expire")),
        ("EXPIRATION_7_DAYS", 1, 100, Decision(Status.SKIPPED, "superseded by EXPIRATION_1_DAY")),
        ("EXPIRATION_30_DAYS", 6, 100, Decision(Status.SKIPPED, "superseded by EXPIRATION_7_DAYS")),
        (
            "EXPIRATION_90_DAYS",
            60,
            100,
            Decision(Status.SKIPPED, "no reminder is due that far ahead"),
        ),
    ],
)
def test_an_interrupted_reminder_is_resent_only_while_it_is_still_true(
    sent: str, days_left: int, points_left: int, expected: Decision | None
) -> None:
    assert recovery_decision(sent, days_left, (30, 7, 1), points_left) == expected


# -- the fast path of the address check ---------------------------------------------------------

ADDRESS_CHARS = "abcAZ09._+-@!é#"


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.from_regex(tiers._PLAIN_ADDRESS, fullmatch=True),
        st.emails(),
        st.text(alphabet=ADDRESS_CHARS, max_size=40),
        st.builds(
            "{}@{}.{}".format,
            st.text(alphabet=ADDRESS_CHARS, min_size=1, max_size=70),
            st.text(alphabet="abz09-.", min_size=1, max_size=40),
            st.sampled_from(["com", "test", "local", "onion", "arpa", "invalid", "io", "x"]),
        ),
    )
)
def test_what_the_fast_path_accepts_the_full_validation_accepts(address: str) -> None:
    if tiers._plainly_valid(address):
        validate_email(address, check_deliverability=False)  # raises if it disagrees


@pytest.mark.parametrize(
    ("address", "plain"),
    [
        ("ann.lee+points@example.com", True),
        ("ann@mail.example.co.uk", True),
        ("ann@host.test", False),  # a special-use domain: the full validation refuses it
        ("ann@localhost", False),
        ("Ann@Example.COM", False),  # valid, but left to the full validation
        ("ann..lee@example.com", False),
        ("ann@-example.com", False),
    ],
)
def test_the_fast_path_takes_only_plain_addresses(address: str, plain: bool) -> None:
    assert tiers._plainly_valid(address) is plain
    if not plain:
        assert tiers.is_valid_email(address) is _fully_valid(address)


def _fully_valid(address: str) -> bool:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True
