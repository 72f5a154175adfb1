"""SMTP backend: a small pool of persistent connections, retries for what may pass.

Within one ``async with`` block (one job run) up to ``smtp_concurrency``
connections are opened on first use and reused for every message, so a run of
thousands of reminders does not pay a TCP + TLS + AUTH handshake per email.

Each failure is classified once (:func:`classify`):

- *transient* — a 4xx reply, a refused, dropped or timed-out connection: retried
  with exponential backoff up to ``smtp_retries`` times, on a fresh connection
  when the old one is gone;
- *permanent* — a 5xx reply (a mailbox that does not exist, a refused login, a
  server that cannot take the message): reported at once, retrying would not help.

Either way the outcome says what the server said (``"550 5.1.1 mailbox
unavailable"``), or what went wrong on the way (``"connection refused: ..."``),
and ``send`` never raises for one message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from rewards.config import Settings, SmtpSecurity
from rewards.notifications.delivery.base import Outcome
from rewards.notifications.delivery.smtp_client import (
    SmtpConnectError,
    SmtpConnection,
    SmtpDisconnected,
    SmtpError,
    SmtpNotSupported,
    SmtpRecipientsRefused,
    SmtpReplyError,
)
from rewards.notifications.messages import RenderedMessage

log = logging.getLogger(__name__)


class Failure(Exception):
    """One classified delivery failure; ``detail`` goes to ``NotificationLog.failureReason``."""

    def __init__(self, detail: str, *, transient: bool) -> None:
        super().__init__(detail)
        self.detail = detail
        self.transient = transient


def _refusal(code: int, text: str) -> Failure:
    """A server's reply as a failure: ``"451 4.3.0 try again later"``; 4xx may pass."""
    return Failure(f"{code} {' '.join(text.split())}".strip(), transient=400 <= code < 500)


def classify(exc: BaseException) -> Failure:
    """Name a failure and say whether trying again later might work."""
    if isinstance(exc, SmtpRecipientsRefused):
        if not exc.refused:
            return Failure("all recipients refused", transient=False)
        worst = max(exc.refused.values(), key=lambda r: r.code)
        return _refusal(worst.code, worst.text)
    if isinstance(exc, SmtpReplyError):
        return _refusal(exc.reply.code, exc.reply.text)
    if isinstance(exc, TimeoutError):
        return Failure(f"timed out: {exc}" if str(exc) else "timed out", transient=True)
    if isinstance(exc, SmtpConnectError):
        refused = isinstance(exc.__cause__, ConnectionRefusedError)
        prefix = "connection refused" if refused else "cannot connect"
        return Failure(f"{prefix}: {exc}", transient=True)
    if isinstance(exc, SmtpDisconnected | ConnectionError):
        detail = str(exc).removeprefix("connection lost: ")
        return Failure(f"connection lost: {detail}", transient=True)
    if isinstance(exc, SmtpNotSupported):
        return Failure(f"not supported by the server: {exc}", transient=False)
    if isinstance(exc, OSError):
        return Failure(f"network error: {exc}", transient=True)
    if isinstance(exc, ValueError):  # e.g. an address that is not ASCII
        return Failure(f"unsendable message: {exc}", transient=False)
    return Failure(f"{type(exc).__name__}: {exc}", transient=False)


@dataclass
class _Slot:
    """A place in the pool: a connection once opened, None until then or after a failure."""

    connection: SmtpConnection | None = None


class SmtpSender:
    """Delivers over SMTP through a pool of persistent connections.

    ``backoff_initial`` and ``backoff_max`` (seconds) shape the wait between
    retries: ``initial, 2 * initial, 4 * initial, ...`` capped at ``max``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backoff_initial: float = 0.5,
        backoff_max: float = 5.0,
    ) -> None:
        self._settings = settings
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._pool: asyncio.LifoQueue[_Slot] | None = None
        self._slots: list[_Slot] = []

    async def _open(self) -> SmtpConnection:
        s = self._settings
        password = s.smtp_password.get_secret_value() if s.smtp_password else None
        return await SmtpConnection.open(
            s.smtp_host,
            s.smtp_port,
            timeout=s.smtp_timeout,
            tls=s.smtp_security is SmtpSecurity.TLS,
            starttls=s.smtp_security is SmtpSecurity.STARTTLS,
            username=s.smtp_user or None,
            password=password if s.smtp_user else None,
        )

    async def __aenter__(self) -> SmtpSender:
        # A LIFO pool hands out the most recently used slot first, so a small batch
        # keeps reusing one open connection instead of opening others.
        self._slots = [_Slot() for _ in range(self._settings.smtp_concurrency)]
        self._pool = asyncio.LifoQueue()
        for slot in reversed(self._slots):
            self._pool.put_nowait(slot)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.gather(
            *(
                slot.connection.quit(self._settings.smtp_timeout)
                for slot in self._slots
                if slot.connection is not None
            )
        )
        self._slots = []
        self._pool = None

    def _require_open(self) -> None:
        if self._pool is None:
            raise RuntimeError("use the SMTP sender as 'async with sender:' around sending")

    @contextlib.asynccontextmanager
    async def _lease(self) -> AsyncIterator[_Slot]:
        """A slot from the pool; a connection that failed mid-way is closed and dropped."""
        assert self._pool is not None, "checked by send()"
        slot = await self._pool.get()
        try:
            yield slot
        except (SmtpReplyError, SmtpRecipientsRefused):
            raise  # a refusal leaves the session usable (it was reset)
        except BaseException:
            if slot.connection is not None:
                slot.connection.close()  # timed out or dropped: the session state is unknown
                slot.connection = None
            raise
        finally:
            self._pool.put_nowait(slot)

    async def send(self, message: RenderedMessage) -> Outcome:
        """Deliver one message, retrying transient failures; never raises for a failure.

        ``Outcome.seconds`` counts from the first attempt (not the wait for a free
        connection) to the end, backoff included.
        """
        self._require_open()
        started: float | None = None
        pending = list(message.recipients)

        async def attempt() -> None:
            nonlocal started, pending
            try:
                async with self._lease() as slot:
                    if started is None:
                        started = time.perf_counter()
                    if slot.connection is None or not slot.connection.is_open:
                        slot.connection = await self._open()
                    refused = await slot.connection.send(
                        message.sender, pending, message.data, timeout=self._settings.smtp_timeout
                    )
            except (SmtpError, OSError, TimeoutError, ValueError) as exc:
                raise classify(exc) from exc
            if refused:
                # Accepted for some recipients: retry only the others, never re-send to all.
                pending = list(refused)
                worst = max(refused.values(), key=lambda r: r.code)
                raise _refusal(worst.code, worst.text)

        try:
            try:
                await attempt()  # most messages go at the first attempt: no retry machinery
            except Failure as failure:
                if not failure.transient or self._settings.smtp_retries < 1:
                    raise
                pause = min(self._backoff_initial, self._backoff_max)
                log.info("SMTP attempt 1 failed (%s); retrying in %.2fs", failure, pause)
                await asyncio.sleep(pause)
                await self._retrying()(attempt)
        except Failure as failure:
            return Outcome(False, failure.detail, _since(started))
        except Exception as exc:  # a bug, not a delivery problem: log it, report it, go on
            log.exception("unexpected error sending %s", message.message_id)
            return Outcome(False, f"{type(exc).__name__}: {exc}", _since(started))
        return Outcome(True, None, _since(started))

    def _retrying(self) -> AsyncRetrying:
        """The attempts after the first and its pause: ``2 * initial, 4 * initial, ...``."""
        return AsyncRetrying(
            stop=stop_after_attempt(self._settings.smtp_retries),
            wait=wait_exponential(multiplier=2 * self._backoff_initial, max=self._backoff_max),
            retry=retry_if_exception(lambda exc: isinstance(exc, Failure) and exc.transient),
            before_sleep=_log_retry,
            reraise=True,
        )


def _since(started: float | None) -> float:
    return 0.0 if started is None else time.perf_counter() - started


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    sleep = state.next_action.sleep if state.next_action else 0.0
    log.info("SMTP attempt %d failed (%s); retrying in %.2fs", state.attempt_number, exc, sleep)
