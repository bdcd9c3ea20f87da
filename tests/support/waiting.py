"""Bounded waits for evidence that only shows up outside the test's own process."""

from __future__ import annotations

from collections.abc import Callable

import anyio

POLL_INTERVAL_S = 0.02


async def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Return once ``check()`` holds; fail after ``timeout_s``.

    For evidence written by another process (a file, a process table) that no
    event can announce; everything else waits on an ``anyio.Event``.
    """
    with anyio.fail_after(timeout_s):
        while not check():  # noqa: ASYNC110 - polling another process's output
            await anyio.sleep(POLL_INTERVAL_S)
