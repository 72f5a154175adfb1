"""Micro-benchmark of building reminder emails: the old ``EmailMessage`` way against ``render()``.

    python bench/messages.py                 # 20,000 messages each way, best of 3 runs
    python bench/messages.py -n 2000 --check # smoke size: exit 1 if the two ways disagree
    python bench/messages.py --profile       # plus cProfile's top functions of render()

Both ways build the same messages for the same generated members (mostly ASCII
names, some accented, Cyrillic, CJK or emoji, some with commas and quotes, some
long, some missing) in one process, and each step is timed over all of them:

* **link signing**: the balance and unsubscribe tokens (old: ``make_link_token``
  twice; new: the builder's cached signers);
* **other context values**: the rest of the template context (dates, wording);
* **templates**: rendering subject, text and HTML from a prepared context;
* **assembly**: from rendered texts to what the SMTP client sends, envelope
  included (old: ``EmailMessage`` headers, ``set_content``/``add_alternative``,
  then aiosmtplib's ``flatten_message`` and ``extract_sender``/``extract_recipients``
  as ``SmtpSender.send_message`` did; new: ``MessageBuilder.compose``);
* **total**: the whole of it (old: ``build()`` + flatten + envelope; new: ``render()``).

The old way is a copy of the builder as it was before ``render()``
(:class:`OldMessageBuilder`), kept here for comparison only. Timings use the real
clock; the check uses a fixed one so both ways sign the same tokens and date the
same ``Date``, and compares, for every message checked, each header (the ``To``
display name decoded as RFC 2047 says) and both parts, as parsed from the new bytes.
"""

from __future__ import annotations

import argparse
import cProfile
import email
import email.policy
import pstats
import random
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime, timedelta
from email.header import decode_header, make_header
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any, Protocol

from aiosmtplib.email import extract_recipients, extract_sender, flatten_message

from rewards.config import Settings
from rewards.ids import new_id
from rewards.members.links import LinkPurpose, link_url, make_link_token
from rewards.notifications.messages import (
    ONE_CLICK,
    POLICY,
    TEMPLATE_NAMES,
    InvalidRecipient,
    MessageBuilder,
    Reminder,
    Texts,
    create_environment,
    format_date,
    format_points,
    when_phrase,
)

NOW = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
SETTINGS = Settings(
    email_from="Acme Rewards <rewards@acme.example>",
    public_url="https://rewards.example.com",
    secret_key="bench-secret-bench-secret-bench-secret",
    templates_dir=None,
)

FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Hamilton", "Thompson"]
OTHER_NAMES = [
    "José García", "Zoë Ødegård", "Łukasz Wróbel", "Nguyễn Văn An", "Александр Пушкин",
    "Αλέξανδρος Παπαδόπουλος", "山田 太郎", "李小龙", "Ada 👩‍💻 Lovelace", "O'Brien, Pat",
    'Ada "AL" Lovelace', "Dr. Grace M. Hopper", "Maria Teresa de los Ángeles García López",
]  # fmt: skip


def members(count: int, seed: int) -> list[Reminder]:
    """``count`` reminders, one per member, a realistic mix of names."""
    rng = random.Random(seed)
    reminders = []
    for i in range(count):
        roll = rng.random()
        if roll < 0.10:
            name = None
        elif roll < 0.75:
            name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        elif roll < 0.95:
            name = rng.choice(OTHER_NAMES)
        else:
            name = " ".join(rng.choice(FIRST + LAST) for _ in range(rng.randint(4, 12)))
        days_left = rng.choice((30, 7, 1))
        reminders.append(
            Reminder(
                log_id=new_id(),
                user_id=new_id(),
                email=f"{rng.choice(FIRST).lower()}.{rng.choice(LAST).lower()}{i}@example.com",
                name=name,
                points=rng.randint(1, 250_000),
                expiration_date=date(2026, 11, 27) + timedelta(days=days_left),
                notification_type=f"EXPIRATION_{days_left}_DAYS",
                days_left=days_left,
            )
        )
    return reminders


def _utc_now() -> datetime:
    return datetime.now(UTC)


class OldMessageBuilder:
    """``MessageBuilder.build()`` as it was before ``render()``: for comparison only.

    A token per link from ``make_link_token`` (a signer class and a serializer
    each), and an ``EmailMessage`` whose every header the ``email`` package parses
    on the way in and folds on the way out.
    """

    def __init__(self, settings: Settings, clock: Callable[[], datetime] = _utc_now) -> None:
        env = create_environment(settings.templates_dir)
        self._templates = {part: env.get_template(name) for part, name in TEMPLATE_NAMES.items()}
        self._from = settings.email_from
        self._sender_name = "Acme Rewards"
        self._domain = "acme.example"
        self._public_url = settings.public_url.rstrip("/")
        self._secret = settings.secret_key.get_secret_value()
        self._clock = clock

    def link(self, purpose: LinkPurpose, user_id: str, now: datetime) -> str:
        token = make_link_token(self._secret, purpose, user_id, now=now)
        return link_url(self._public_url, purpose, token)

    def links(self, user_id: str, now: datetime) -> dict[LinkPurpose, str]:
        return {purpose: self.link(purpose, user_id, now) for purpose in LinkPurpose}

    def context(self, reminder: Reminder, now: datetime) -> dict[str, Any]:
        name = " ".join(reminder.name.split()) if reminder.name else None
        links = self.links(reminder.user_id, now)
        return {
            "name": name or None,
            "email": reminder.email,
            "points": reminder.points,
            "points_text": f"{reminder.points:,}",
            "points_phrase": format_points(reminder.points),
            "expiration_date": reminder.expiration_date,
            "date_text": format_date(reminder.expiration_date),
            "days_left": reminder.days_left,
            "when": when_phrase(reminder.days_left),
            "notification_type": reminder.notification_type,
            "balance_url": links[LinkPurpose.BALANCE],
            "unsubscribe_url": links[LinkPurpose.UNSUBSCRIBE],
            "sender_name": self._sender_name,
            "public_url": self._public_url,
        }

    def texts(self, context: dict[str, Any]) -> Texts:
        subject, text, html = (self._templates[part].render(context) for part in TEMPLATE_NAMES)
        return Texts(" ".join(subject.split()), text, html)

    def assemble(
        self, reminder: Reminder, context: dict[str, Any], texts: Texts, now: datetime
    ) -> EmailMessage:
        message = EmailMessage(policy=POLICY)
        message["From"] = self._from
        try:
            message["To"] = Address(display_name=context["name"] or "", addr_spec=reminder.email)
        except Exception as exc:
            raise InvalidRecipient(f"invalid format: {reminder.email!r}: {exc}") from exc
        message["Subject"] = texts.subject
        message["Date"] = format_datetime(now if now.tzinfo else now.replace(tzinfo=UTC))
        message["Message-ID"] = f"<{reminder.log_id}@{self._domain}>"
        message["List-Unsubscribe"] = f"<{context['unsubscribe_url']}>"
        message["List-Unsubscribe-Post"] = ONE_CLICK
        message["X-Rewards-Notification"] = reminder.log_id
        message.set_content(texts.text)
        message.add_alternative(texts.html, subtype="html")
        return message

    def build(self, reminder: Reminder) -> EmailMessage:
        now = self._clock()
        context = self.context(reminder, now)
        return self.assemble(reminder, context, self.texts(context), now)


def to_wire(message: EmailMessage) -> tuple[str | None, list[str], bytes]:
    """What ``SmtpSender`` did with an ``EmailMessage``: the envelope and the flattened bytes."""
    return extract_sender(message), extract_recipients(message), flatten_message(message)


# --- timing -------------------------------------------------------------------------------


def best_of(runs: int, items: Sequence[Any], step: Callable[[Any], object]) -> float:
    """The fastest of ``runs`` passes of ``step`` over ``items``, in µs per item.

    Results are dropped as they come, as a sender would, so a pass does not pile
    up garbage for the collector to walk.
    """
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        for item in items:
            step(item)
        times.append(time.perf_counter() - started)
    return min(times) / len(items) * 1e6


class Way(Protocol):
    """What both builders offer for the steps they share."""

    def links(self, user_id: str, now: datetime) -> dict[LinkPurpose, str]: ...

    def context(self, reminder: Reminder, now: datetime) -> dict[str, Any]: ...

    def texts(self, context: dict[str, Any]) -> Texts: ...


Inputs = list[tuple[Reminder, dict[str, Any], Texts]]


def shared_steps(
    way: Way, reminders: Sequence[Reminder], inputs: Inputs, runs: int, now: datetime
) -> dict[str, float]:
    signing = best_of(runs, reminders, lambda r: way.links(r.user_id, now))
    signed = way.links("someone", now)
    way.links = lambda user_id, now: signed  # type: ignore[method-assign]
    try:  # the context without its signing
        values = best_of(runs, reminders, lambda r: way.context(r, now))
    finally:
        del way.links
    return {
        "link signing (2 tokens)": signing,
        "other context values": values,
        "templates (3)": best_of(runs, inputs, lambda i: way.texts(i[1])),
    }


def measure(reminders: Sequence[Reminder], runs: int) -> dict[str, dict[str, float]]:
    old, new = OldMessageBuilder(SETTINGS), MessageBuilder(SETTINGS)
    now = _utc_now()
    old_inputs = [(r, c, old.texts(c)) for r in reminders for c in [old.context(r, now)]]
    new_inputs = [(r, c, new.texts(c)) for r in reminders for c in [new.context(r, now)]]
    results = {
        "old": shared_steps(old, reminders, old_inputs, runs, now),
        "new": shared_steps(new, reminders, new_inputs, runs, now),
    }
    results["old"]["header/body assembly"] = best_of(
        runs, old_inputs, lambda i: to_wire(old.assemble(i[0], i[1], i[2], now))
    )
    results["new"]["header/body assembly"] = best_of(
        runs, new_inputs, lambda i: new.compose(i[0], i[1], i[2], now)
    )
    results["old"]["total"] = best_of(runs, reminders, lambda r: to_wire(old.build(r)))
    results["new"]["total"] = best_of(runs, reminders, new.render)
    sample = reminders[: max(1, len(reminders) // 10)]
    results["new"]["build() (render + parse)"] = best_of(1, sample, new.build)
    return results


def report(results: dict[str, dict[str, float]], count: int, runs: int) -> None:
    print(f"{count:,} messages each way, best of {runs} runs; µs per message")
    print(f"{'step':<28}{'old':>10}{'new':>10}{'speed-up':>10}")
    old, new = results["old"], results["new"]
    for step in ("link signing (2 tokens)", "other context values", "templates (3)"):
        print(f"{step:<28}{old[step]:>10.1f}{new[step]:>10.1f}{old[step] / new[step]:>9.1f}x")
    for step in ("header/body assembly", "total"):
        print(f"{step:<28}{old[step]:>10.1f}{new[step]:>10.1f}{old[step] / new[step]:>9.1f}x")
    print(f"{'messages per second':<28}{1e6 / old['total']:>10,.0f}{1e6 / new['total']:>10,.0f}")
    steps = sum(v for k, v in new.items() if k not in ("total", "build() (render + parse)"))
    print(f"{'(new: sum of the steps)':<28}{'':>10}{steps:>10.1f}")
    print(f"{'build() (render + parse)':<28}{'':>10}{new['build() (render + parse)']:>10.1f}")


# --- checking -----------------------------------------------------------------------------


def rfc2047_display_name(data: bytes) -> str:
    """The ``To`` display name as RFC 2047 reads it (the parser keeps spaces it should drop)."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii").replace("\r\n ", " ")
    [to] = [line for line in head.split("\r\n") if line.startswith("To: ")]
    phrase = to.removeprefix("To: ").rpartition(" <")[0]
    if "=?" in phrase:
        return str(make_header(decode_header(phrase)))
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    return str(parsed["To"].addresses[0].display_name)


def differences(reminders: Sequence[Reminder]) -> list[str]:
    """Where the new bytes, parsed, say something else than the old ``EmailMessage``."""
    old = OldMessageBuilder(SETTINGS, clock=lambda: NOW)
    new = MessageBuilder(SETTINGS, clock=lambda: NOW)
    problems = []
    for reminder in reminders:
        before = old.build(reminder)
        rendered = new.render(reminder)
        after = email.message_from_bytes(rendered.data, policy=email.policy.default)
        assert isinstance(after, EmailMessage)
        found = []
        for name in (
            "From", "Subject", "Date", "Message-ID", "List-Unsubscribe", "List-Unsubscribe-Post",
            "X-Rewards-Notification", "MIME-Version",
        ):  # fmt: skip
            if str(after[name]) != str(before[name]):
                found.append(f"{name}: {str(before[name])!r} became {str(after[name])!r}")
        [was], [now] = before["To"].addresses, after["To"].addresses
        if (was.display_name, was.addr_spec) != (
            rfc2047_display_name(rendered.data),
            now.addr_spec,
        ):
            found.append(f"To: {str(before['To'])!r} became {str(after['To'])!r}")
        for subtype in ("plain", "html"):
            was_part, now_part = before.get_body((subtype,)), after.get_body((subtype,))
            assert isinstance(was_part, EmailMessage)
            assert isinstance(now_part, EmailMessage)
            if now_part.get_content().replace("\r\n", "\n") != was_part.get_content():
                found.append(f"the text/{subtype} part")
        sender, recipients, _ = to_wire(before)
        if (rendered.sender, list(rendered.recipients)) != (sender, recipients):
            found.append(
                f"envelope {sender, recipients} became {rendered.sender, rendered.recipients}"
            )
        if max(len(line) for line in rendered.data.split(b"\r\n")) > 998:
            found.append("a line longer than 998 octets")
        problems += [f"{reminder.log_id} ({reminder.name!r}): {what}" for what in found]
    return problems


def profile(reminders: Sequence[Reminder]) -> None:
    builder = MessageBuilder(SETTINGS)
    profiler = cProfile.Profile()
    profiler.enable()
    for reminder in reminders:
        builder.render(reminder)
    profiler.disable()
    print(f"\ncProfile of render() over {len(reminders):,} messages (top 15 by own time):")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("-n", "--messages", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3, help="passes per step; the best counts")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--check", action="store_true", help="compare every message (default: the first 1,000)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile render() afterwards")
    args = parser.parse_args()

    reminders = members(args.messages, args.seed)
    checked = reminders if args.check else reminders[:1000]
    problems = differences(checked)
    for problem in problems[:20]:
        print(f"DIFFERENT {problem}", file=sys.stderr)
    report(measure(reminders, args.runs), len(reminders), args.runs)
    print(f"checked {len(checked):,} messages: {len(problems)} differences")
    if args.profile:
        profile(reminders)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
