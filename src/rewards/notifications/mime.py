"""Ready-to-send MIME bytes, written directly instead of through the ``email`` package.

The standard library's ``EmailMessage`` parses every header it is given and
folds every header it writes; for a reminder that costs over a millisecond, fifty
times what rendering its three templates costs. The reminders need only a
small, fixed subset of RFC 5322 / RFC 2045-2047, written here once:

- address and unstructured fields (``To``, ``Subject``), folded at spaces to 76
  columns; words that are not plain printable ASCII become RFC 2047 encoded-words
  (UTF-8, base64), cut between characters;
- fields whose value the caller vouches for (ids, URLs, dates) on one line;
- ``text/*`` parts in UTF-8 with quoted-printable transfer encoding;
- a ``multipart/alternative`` body with a fixed boundary.

Everything is ASCII with CRLF line ends, and no line is longer than 998 octets
as long as the caller's one-line values are. What a receiver parses back out of
these bytes is exactly what was put in; ``tests/unit/test_messages.py`` checks
that for every field and both parts with the ``email`` package's parser (which
misreads one thing, see :func:`encoded_words`).

Quoted-printable rather than base64 for the parts: the text is mostly ASCII, so
it stays readable in the raw message (support, spam filters, anyone debugging a
bounce) and grows by a few percent instead of a third, and every mail client
since the early nineties decodes it. Base64-encoded plain text is something
spam filters score against (SpamAssassin's ``MIME_BASE64_TEXT``).

The boundary is a constant that no encoded part can contain: in quoted-printable
``=`` is always followed by two hex digits or a line end, and base64 has no
``=_``, so ``=_`` inside the boundary rules out a collision without scanning
the parts (the trick most mailers use).
"""

from __future__ import annotations

import re
from binascii import b2a_base64, b2a_qp
from collections.abc import Iterable, Sequence
from email.headerregistry import Address

from email_validator import EmailNotValidError, validate_email

CRLF = "\r\n"
LINE_LENGTH = 76
"""Where header fields fold: RFC 2047's limit for a line holding encoded-words (5322 says 78)."""
MAX_ADDRESS_LENGTH = 254
"""The longest address SMTP carries (RFC 5321's 256-octet path, less its angle brackets)."""
BOUNDARY = "=_rewards-alternative_="

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
DOT_ATOM = re.compile(rf"[{_ATEXT}]+(?:\.[{_ATEXT}]+)*")
"""RFC 5322 ``dot-atom-text``: what an id's halves or a plain address's halves may be."""
_PLAIN_ADDRESS = re.compile(rf"{DOT_ATOM.pattern}@{DOT_ATOM.pattern}")
_ATOM = re.compile(rf"[{_ATEXT}]+")
_ATOMS = re.compile(rf"[{_ATEXT}]+(?: [{_ATEXT}]+)*")
_VISIBLE = re.compile(r"[\x21-\x7e]+")
_VISIBLE_WORDS = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")

_MBOX_FROM = re.compile(rb"^From ", re.MULTILINE)
"""A line that mbox-style relays mangle to ``>From``; written ``=46rom`` (=46 is an F)."""
_ENCODED_WORD_OVERHEAD = len("=?utf-8?b??=")
_LONGEST_PLAIN_WORD = 60
"""Longer words are encoded, so they can be cut: every line then fits :data:`LINE_LENGTH`."""


class InvalidAddress(ValueError):
    """An address that cannot be written in a header or sent over SMTP without SMTPUTF8."""


def addr_spec(address: str) -> str:
    """``address`` as it goes between ``<>`` in a header and in ``RCPT TO``: ASCII only.

    A plain ``local@domain`` (dot-atoms, the usual case) is taken as it is. Anything
    else goes through the ``email`` package's parser, which accepts what RFC 5322
    does (a quoted local part, a domain literal, comments and spaces, which it
    drops); an internationalised domain becomes its ASCII (IDNA) form. Raises
    :class:`InvalidAddress` for what is not an address, a local part that is not
    ASCII (it would need SMTPUTF8), or more than :data:`MAX_ADDRESS_LENGTH` characters.
    """
    if len(address) <= MAX_ADDRESS_LENGTH and _PLAIN_ADDRESS.fullmatch(address):
        return address
    try:
        spec = Address(addr_spec=address).addr_spec
    except Exception as exc:  # ValueError or a HeaderParseError from the parser
        raise InvalidAddress(str(exc)) from exc
    if not spec.isascii():
        try:
            ascii_spec = validate_email(spec, check_deliverability=False).ascii_email
        except EmailNotValidError as exc:
            raise InvalidAddress(str(exc)) from exc
        if ascii_spec is None:
            raise InvalidAddress("the local part is not ASCII (the address needs SMTPUTF8)")
        spec = ascii_spec
    if len(spec) > MAX_ADDRESS_LENGTH:
        raise InvalidAddress(f"longer than the {MAX_ADDRESS_LENGTH} characters SMTP allows")
    return spec


def address_field(name: str, display_name: str, spec: str) -> str:
    """``To: Ada Lovelace <ada@example.com>``, folded, with its CRLF.

    ``spec`` comes from :func:`addr_spec`. A display name of printable ASCII is
    written as atoms, or as one quoted-string when it holds specials such as ``,``
    ``.`` or ``"``; otherwise its plain words stay atoms and each run of the other
    words becomes encoded-words (as the ``email`` package writes it). An empty
    display name leaves the bare address.
    """
    if not display_name:
        return f"{name}: {spec}{CRLF}"
    if _VISIBLE_WORDS.fullmatch(display_name) and "=?" not in display_name:
        phrase = display_name if _ATOMS.fullmatch(display_name) else _quoted(display_name)
        words = phrase.split(" ")
        if max(map(len, words)) <= _LONGEST_PLAIN_WORD:
            return fold(name, [*words, f"<{spec}>"])
    return fold(name, [*_words(display_name, _ATOM, first_line_used=len(name) + 2), f"<{spec}>"])


def unstructured_field(name: str, text: str) -> str:
    """``Subject: ...``, folded, with its CRLF: plain words as they are, the others encoded.

    A line break in ``text`` is written encoded, so it cannot start a header of its own.
    """
    if _VISIBLE_WORDS.fullmatch(text) and "=?" not in text:
        words = text.split(" ")
        if max(map(len, words)) <= _LONGEST_PLAIN_WORD:
            return fold(name, words)
    return fold(name, _words(text, _VISIBLE, first_line_used=len(name) + 2))


def field(name: str, value: str) -> str:
    """``Name: value`` on one line with its CRLF, never folded: for ids, dates and URLs.

    The caller vouches that ``value`` is printable ASCII without line breaks.
    """
    return f"{name}: {value}{CRLF}"


def fold(name: str, words: Sequence[str]) -> str:
    """``Name: w1 w2 ...`` broken into lines of at most :data:`LINE_LENGTH` at the spaces.

    Every space between two words must be a place where folding white space is
    allowed, which it is between atoms, encoded-words and an address, and inside
    a quoted-string. The first word stays on the first line whatever its length.
    """
    lines: list[str] = []
    line = f"{name}:"
    for index, word in enumerate(words):
        if index and len(line) + 1 + len(word) > LINE_LENGTH:
            lines.append(line)
            line = ""
        line = f"{line} {word}"
    lines.append(line)
    return CRLF.join(lines) + CRLF


def _words(text: str, plain: re.Pattern[str], *, first_line_used: int) -> list[str]:
    """``text`` as words to fold: those ``plain`` matches as they are, runs of others encoded.

    A decoder drops the space between two encoded-words (RFC 2047 section 6.2) and
    keeps the one between an encoded-word and a plain word, so the spaces inside a
    run are encoded with it. Text whose spaces are not single ones is encoded whole.
    """
    if "  " in text or text.startswith(" ") or text.endswith(" "):
        return encoded_words(text, first_line_used=first_line_used)
    words: list[str] = []
    run: list[str] = []
    for word in text.split(" "):
        if len(word) <= _LONGEST_PLAIN_WORD and plain.fullmatch(word) and "=?" not in word:
            if run:
                words += encoded_words(
                    " ".join(run), first_line_used=1 if words else first_line_used
                )
                run = []
            words.append(word)
        else:
            run.append(word)
    if run:
        words += encoded_words(" ".join(run), first_line_used=1 if words else first_line_used)
    return words


def encoded_words(text: str, *, first_line_used: int) -> list[str]:
    """``text`` as RFC 2047 encoded-words (``=?utf-8?b?...?=``), cut between characters.

    Each word fits a line of :data:`LINE_LENGTH` (the first one after
    ``first_line_used`` columns), so :func:`fold` puts one or more per line.

    The ``email`` package's parser keeps the space between two encoded-words of a
    display name, against RFC 2047 section 6.2, so it reads a name long enough to
    need several with spaces added; mail clients read it right (so does
    ``email.header.decode_header``). The package writes such names the same way.
    """
    data = text.encode("utf-8")
    words: list[str] = []
    room = _encoded_room(LINE_LENGTH - first_line_used - 1)
    start = 0
    while start < len(data):
        end = min(start + room, len(data))
        while end < len(data) and data[end] & 0xC0 == 0x80:  # inside a character
            end -= 1
        encoded = b2a_base64(data[start:end], newline=False).decode("ascii")
        words.append(f"=?utf-8?b?{encoded}?=")
        start = end
        room = _encoded_room(LINE_LENGTH - 1)
    return words


def _encoded_room(columns: int) -> int:
    """How many octets an encoded-word carries in ``columns``; at least one character's 4."""
    return max((columns - _ENCODED_WORD_OVERHEAD) // 4 * 3, 6)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_part(subtype: str, text: str) -> bytes:
    """A ``text/{subtype}`` part in UTF-8, quoted-printable, headers included.

    Line ends become CRLF, and the body ends with one, as the ``email`` package
    does (``\\n``, ``\\r\\n`` and a lone ``\\r`` each end a line), so the part decodes
    to exactly what ``EmailMessage.set_content(text)`` would give.
    """
    data = text.encode("utf-8")
    if b"\r" in data:
        body = b"\r\n".join(data.splitlines()) + b"\r\n"
    else:
        body = data.replace(b"\n", b"\r\n")
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
    encoded = b2a_qp(body, istext=True)
    if b"From " in encoded:
        encoded = _MBOX_FROM.sub(b"=46rom ", encoded)
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"{CRLF}'
        f"Content-Transfer-Encoding: quoted-printable{CRLF}{CRLF}"
    )
    return head.encode("ascii") + encoded


def multipart_alternative(header_fields: Iterable[str], parts: Sequence[bytes]) -> bytes:
    """The whole message: ``header_fields`` (each with its CRLF), then ``parts``, simplest first.

    Each part ends with a line end, and the line end before a boundary belongs
    to the boundary (RFC 2046), hence the blank line after each part: the parts
    decode with their final line end.
    """
    head = "".join(header_fields) + (
        f"MIME-Version: 1.0{CRLF}"
        f'Content-Type: multipart/alternative; boundary="{BOUNDARY}"{CRLF}{CRLF}'
    )
    delimiter = f"{CRLF}--{BOUNDARY}{CRLF}".encode("ascii")
    return b"".join(
        [
            head.encode("ascii"),
            f"--{BOUNDARY}{CRLF}".encode("ascii"),
            delimiter.join(parts),
            f"{CRLF}--{BOUNDARY}--{CRLF}".encode("ascii"),
        ]
    )
