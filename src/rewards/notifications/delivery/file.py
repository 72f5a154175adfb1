"""File backend: each message becomes an ``.eml`` file in the outbox folder.

The embedded default (``rewards demo``) and local development use it: the files
open in any mail client. A file is named after the message's ``Message-ID``, so
re-sending a log row overwrites its file instead of adding a second one, and it
is written to a temporary name first and then renamed, so a reader never sees
half a message.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import time
from pathlib import Path

from rewards.notifications.delivery.base import Outcome
from rewards.notifications.messages import RenderedMessage

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def eml_name(message_id: str, data: bytes) -> str:
    """``{local part of the Message-ID}.eml``; a hash of the content when there is no id."""
    message_id = message_id.strip().strip("<>")
    local = message_id.rpartition("@")[0] or message_id
    if not local:
        local = hashlib.sha256(data).hexdigest()[:32]
    return _UNSAFE.sub("_", local).lstrip(".") + ".eml"


def write_eml(outbox: Path, message: RenderedMessage) -> Path:
    """Write one message atomically and return its path; raises ``OSError``."""
    data = message.data
    outbox.mkdir(parents=True, exist_ok=True)
    target = outbox / eml_name(message.message_id, data)
    fd, temp = tempfile.mkstemp(dir=outbox, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


class FileSender:
    """Writes messages to ``outbox_dir``; an ``OSError`` becomes an undelivered outcome."""

    def __init__(self, outbox_dir: Path) -> None:
        self.outbox_dir = outbox_dir

    async def __aenter__(self) -> FileSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, message: RenderedMessage) -> Outcome:
        # Blocking file I/O runs in a thread so the event loop stays responsive.
        return await asyncio.to_thread(self._write, message)

    def _write(self, message: RenderedMessage) -> Outcome:
        started = time.perf_counter()
        try:
            write_eml(self.outbox_dir, message)
        except OSError as exc:
            reason = f"cannot write to outbox {self.outbox_dir}: {exc.strerror or exc}"
            return Outcome(False, reason, time.perf_counter() - started)
        return Outcome(True, None, time.perf_counter() - started)
