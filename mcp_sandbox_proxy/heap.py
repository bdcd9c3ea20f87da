"""Giving freed memory back to the system once the proxy falls quiet.

A burst of calls leaves the C heap larger than what is still in use: buffers of
large messages and request tables are freed, but glibc's ``malloc`` keeps the
pages for reuse, so a proxy that once relayed a busy minute holds about a MiB
more for the rest of its life. ``trim_when_idle`` asks ``malloc_trim`` to return
them after every burst, once no message has come for a while: the trim walks
the heap (up to about a millisecond on a heap churned by large messages, tens of
microseconds after that), so it runs only when nothing waits.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import anyio
import structlog

log = structlog.get_logger(__name__)

# How long the client must be silent before the heap is trimmed.
QUIET_S = 0.1


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``; None where the C library has none (musl)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None

    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


async def trim_when_idle(activity: Callable[[], int], quiet_s: float = QUIET_S) -> None:
    """Trim the heap once after each burst of activity, when ``activity()`` (a
    count that grows with every message) has not moved for ``quiet_s``."""
    trim = _malloc_trim()
    if trim is None:
        log.debug("heap_trim_unavailable")
        return

    seen = activity()
    trimmed = True
    while True:
        await anyio.sleep(quiet_s)
        now = activity()
        if now != seen:
            seen, trimmed = now, False
        elif not trimmed:
            trim(0)
            trimmed = True
