"""Copying bytes both ways between a sandbox's connection and its destination:
counted, with each side's end of stream passed on, and bounded by idleness."""

from __future__ import annotations

import anyio
from anyio.abc import ByteReceiveStream, ByteStream, TaskGroup

# Read size of one copy step; large enough for bulk transfers in few steps.
CHUNK_BYTES = 64 * 1024
# Errors that mean one side went away (reset, closed under us): the relay ends.
_GONE = (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError)


class Relay:
    """One connection's relay; ``bytes_up`` went to the destination."""

    def __init__(self, *, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self.bytes_up = 0
        self.bytes_down = 0
        self.idled_out = False
        self._last_activity = anyio.current_time()

    async def run(
        self, client_in: ByteReceiveStream, client: ByteStream, upstream: ByteStream
    ) -> None:
        """Copy until both sides ended, one side broke, or nothing moved for long."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch_idleness, group.cancel_scope)
            async with anyio.create_task_group() as copies:
                copies.start_soon(self._copy, client_in, upstream, True, copies)
                copies.start_soon(self._copy, upstream, client, False, copies)

            group.cancel_scope.cancel()

    async def _copy(
        self,
        source: ByteReceiveStream,
        sink: ByteStream,
        upstream: bool,
        copies: TaskGroup,
    ) -> None:
        try:
            while True:
                chunk = await source.receive(CHUNK_BYTES)
                await sink.send(chunk)
                self._count(len(chunk), upstream)
        except anyio.EndOfStream:
            pass
        except _GONE:
            copies.cancel_scope.cancel()
            return

        try:
            await sink.send_eof()
        except _GONE:
            copies.cancel_scope.cancel()

    def _count(self, size: int, upstream: bool) -> None:
        if upstream:
            self.bytes_up += size
        else:
            self.bytes_down += size

        self._last_activity = anyio.current_time()

    async def _watch_idleness(self, scope: anyio.CancelScope) -> None:
        while True:
            idle_until = self._last_activity + self.idle_timeout_s
            if anyio.current_time() >= idle_until:
                self.idled_out = True
                scope.cancel()
                return

            await anyio.sleep(idle_until - anyio.current_time())
