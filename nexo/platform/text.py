"""Is client text storable and echoable? Pure checks shared by HTTP bodies and WebSocket frames.

JSON may spell a UTF-16 surrogate on its own (``"\\ud800"``); Python's parser
turns it into a ``str`` that cannot be encoded as UTF-8, so any database write
or any frame echoing it fails. RFC 7493 (I-JSON) §2.1 forbids such strings:
Nexo refuses them as invalid JSON wherever they appear. ``U+0000`` is valid
Unicode but PostgreSQL ``text`` cannot hold it, so a message body with it is
refused on every backend alike (docs/messaging.md "Message bodies").
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(value: Any) -> bool:
    """True if any string in ``value`` (a parsed JSON document: keys too) holds a lone surrogate.

    The parser pairs valid surrogate escapes into one code point, so any
    surrogate left in a string is a lone one. Iterative: a document nested as
    deep as the parser allows does not overflow the stack here.
    """
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item) is not None:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def may_hold_escapes(raw: str | bytes) -> bool:
    """False when JSON text has no backslash, so no lone surrogate and no U+0000 (fast path).

    Valid UTF-8 cannot encode a surrogate, and a strict JSON parser refuses a raw
    control character inside a string, so both can only come from a ``\\u`` escape.
    A one-character search is a ``memchr``: several times faster than looking for ``\\u``.
    """
    if isinstance(raw, bytes):
        return b"\\" in raw
    return "\\" in raw


def body_problem(body: str) -> str | None:
    """Why a message body cannot be stored, or ``None`` when it can."""
    if "\x00" in body:
        return "body must not contain U+0000 (NUL)"
    if _SURROGATE.search(body) is not None:
        return "body must be valid Unicode text (it holds a lone surrogate)"
    return None


def echoable(value: object, max_length: int = 64) -> str | None:
    """``value`` if it is a short printable ASCII string, safe to echo back to a client; else ``None``."""
    if isinstance(value, str) and len(value) <= max_length and value.isascii() and value.isprintable():
        return value
    return None
