"""Pagination across several servers: one opaque cursor for many.

A client's list request fans out to every server; the cursor the client gets back
holds, per server, the cursor that server returned, so that each server's own
pagination is relayed page by page.
"""

from __future__ import annotations

import base64
import binascii
import json

CURSOR_PREFIX = "msp1."


class InvalidCursor(ValueError):
    """A cursor the proxy did not issue."""


def encode_cursor(remaining: dict[str, str]) -> str:
    """One opaque cursor for the servers that have more pages."""
    raw = json.dumps(remaining, separators=(",", ":"), sort_keys=True).encode()
    return CURSOR_PREFIX + base64.urlsafe_b64encode(raw).decode()


def decode_cursor(cursor: str) -> dict[str, str]:
    """The per-server cursors inside ``cursor``; raises ``InvalidCursor``."""
    if not cursor.startswith(CURSOR_PREFIX):
        raise InvalidCursor("cursor was not issued by this proxy")

    try:
        value = json.loads(base64.urlsafe_b64decode(cursor[len(CURSOR_PREFIX) :]))
    except (ValueError, binascii.Error) as exc:
        raise InvalidCursor("cursor is malformed") from exc

    if not isinstance(value, dict) or not all(
        isinstance(v, str)
        for v in value.values()  # type: ignore[misc]
    ):
        raise InvalidCursor("cursor is malformed")

    return value  # type: ignore[return-value]
