"""Collision-resistant, roughly time-ordered text ids in the style of Prisma's ``cuid()``.

Clients may supply their own ids; ours are 25 lowercase base-36 characters starting with ``c``.
"""

from __future__ import annotations

import itertools
import os
import secrets
import time

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_counter = itertools.count(secrets.randbelow(36**4))
_fingerprint = None


def _base36(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 36)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _host_fingerprint() -> str:
    global _fingerprint
    if _fingerprint is None:
        _fingerprint = _base36(os.getpid() * 7919 + secrets.randbelow(36**4), 4)
    return _fingerprint


def new_id() -> str:
    """``c`` + time (8) + counter (4) + process fingerprint (4) + randomness (8)."""
    return (
        "c"
        + _base36(int(time.time() * 1000), 8)
        + _base36(next(_counter), 4)
        + _host_fingerprint()
        + _base36(secrets.randbits(42), 8)
    )
