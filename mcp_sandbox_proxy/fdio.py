"""Non-blocking reads and writes on raw file descriptors, for the event loop.

Both the proxy's own stdio and the pipes of host child processes go through here,
and every relayed message crosses it twice, so it is kept lean:

- reads ask for 64 KiB: asyncio's pipe transports ask for 256 KiB, an allocation
  above malloc's mmap threshold that costs about 100 us per small message;
- the descriptor stays registered with the event loop, and its readiness
  callback reads, instead of a wait being set up and torn down around each read
  as ``anyio.wait_readable`` does.

This is the one module that reaches below anyio, to the asyncio loop it runs on;
``polling_loop`` makes that loop, with a selector that polls briefly before it
sleeps (see ``PollingSelector``).
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - the readiness callbacks anyio does not expose
import contextlib
import os
import selectors
import time
from collections import deque
from collections.abc import Callable
from typing import Any

# Bytes asked of the kernel per read: large enough for a typical message in one
# read, small enough to stay under malloc's mmap threshold.
READ_CHUNK_BYTES = 64 * 1024


def _read_chunk(fd: int) -> bytes | None:
    """What a readable descriptor has: ``b""`` at the end of the stream (a closed
    or broken pipe too), None when nothing was there after all."""
    try:
        return os.read(fd, READ_CHUNK_BYTES)
    except BlockingIOError:
        return None
    except OSError:
        return b""


class FdReader:
    """Reads chunks from one non-blocking descriptor.

    The loop's readiness callback does the read itself and queues the chunk, so
    a message costs one ``read`` and one wake-up of the waiting task: no second
    read that only finds the pipe empty, and no second readiness report for data
    the task has not yet taken. Past ``high_water_bytes`` queued, reading pauses
    until the task catches up.
    """

    def __init__(self, fd: int, high_water_bytes: int = 1024 * 1024) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._chunks: deque[bytes] = deque()
        self._queued_bytes = 0
        self._high_water = high_water_bytes
        self._waiter: asyncio.Future[None] | None = None
        self._registered = False
        self._ended = False

    async def read(self) -> bytes:
        """The next bytes available; ``b""`` at end of stream or on error."""
        while not self._chunks:
            if self._ended:
                return b""

            self._register()
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

        chunk = self._chunks.popleft()
        self._queued_bytes -= len(chunk)
        return chunk

    def _on_readable(self) -> None:
        chunk = _read_chunk(self.fd)
        if chunk is None:
            return

        if chunk:
            self._chunks.append(chunk)
            self._queued_bytes += len(chunk)
            if self._queued_bytes > self._high_water:
                self._unregister()
        else:
            self._ended = True
            self._unregister()

        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _register(self) -> None:
        if not self._registered and not self._ended:
            self._loop.add_reader(self.fd, self._on_readable)
            self._registered = True

    def _unregister(self) -> None:
        if self._registered:
            self._loop.remove_reader(self.fd)
            self._registered = False

    def close(self) -> None:
        """Stop watching the descriptor (it is not closed here)."""
        self._ended = True
        self._chunks.clear()
        self._unregister()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class FdFeed:
    """Hands each chunk read from one non-blocking descriptor to ``on_chunk`` in
    the event loop's readable callback itself, and ``b""`` at the end of the
    stream.

    No task is woken and no future made for a chunk, so a consumer that can
    finish a message on the spot (see ``LineFeed`` in the gateway) relays it for
    a fraction of the cost of a task switch. ``on_chunk`` returns False to pause
    reading until ``resume`` is called.
    """

    def __init__(self, fd: int, on_chunk: Callable[[bytes], bool]) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._on_chunk = on_chunk
        self._registered = False
        self._ended = False

    def resume(self) -> None:
        """Start, or go on, reading."""
        if not self._registered and not self._ended:
            self._loop.add_reader(self.fd, self._on_readable)
            self._registered = True

    def close(self) -> None:
        """Stop watching the descriptor for good (it is not closed here)."""
        self._ended = True
        self._pause()

    def _pause(self) -> None:
        if self._registered:
            self._loop.remove_reader(self.fd)
            self._registered = False

    def _on_readable(self) -> None:
        chunk = _read_chunk(self.fd)
        if chunk is None:
            return

        if not chunk:
            self.close()

        if not self._on_chunk(chunk):
            self._pause()


class FdWriter:
    """Writes to one non-blocking descriptor, in order, coalescing small writes.

    Messages written during one turn of the event loop go out in one ``os.write``
    at the end of that turn: each write to a pipe may wake its reader, and on a
    virtual machine a wake-up costs tens of microseconds. What the pipe does not
    take is written when the descriptor is writable; a writer with more than
    ``high_water_bytes`` queued waits until the reader catches up. Errors surface
    on the next ``write``.
    """

    def __init__(self, fd: int, high_water_bytes: int = 1024 * 1024) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._queued = bytearray()
        self._high_water = high_water_bytes
        self._waiters: list[asyncio.Future[None]] = []
        self._error: OSError | None = None
        self._scheduled = False
        self._watching = False
        self._closed = False

    @property
    def ready(self) -> bool:
        """True when ``write_nowait`` may be used: no error, and room queued."""
        return self._error is None and len(self._queued) <= self._high_water

    def write_nowait(self, data: bytes) -> None:
        """Queue ``data`` after everything written before, without waiting for
        room (the caller checked ``ready``); raises ``OSError``."""
        if self._error is not None:
            raise self._error

        self._queued += data
        if not self._scheduled and not self._watching:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    async def write(self, data: bytes) -> None:
        """Queue ``data`` after everything written before; raises ``OSError``."""
        self.write_nowait(data)
        if len(self._queued) > self._high_water:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter
            if self._error is not None:
                raise self._error

    def _flush(self) -> None:
        self._scheduled = False
        if self._closed:
            return

        try:
            written = os.write(self.fd, self._queued) if self._queued else 0
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._error = exc
            self._queued.clear()
            written = 0

        del self._queued[:written]
        if self._queued and not self._watching:
            self._loop.add_writer(self.fd, self._flush)
            self._watching = True
        elif not self._queued and self._watching:
            self._loop.remove_writer(self.fd)
            self._watching = False

        if len(self._queued) <= self._high_water:
            self._flush_waiters()

    def close(self) -> None:
        """Write what the pipe takes now, drop the rest, stop watching the descriptor
        (which is not closed here)."""
        if self._queued and self._error is None:
            with contextlib.suppress(OSError):
                del self._queued[: os.write(self.fd, self._queued)]

        self._queued.clear()
        self._closed = True
        if self._watching:
            self._loop.remove_writer(self.fd)
            self._watching = False

        self._error = self._error or BrokenPipeError("writer closed")
        self._flush_waiters()

    def _flush_waiters(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class PollingSelector(selectors.EpollSelector):
    """An epoll selector that, right after activity, polls for up to ``spin_s``
    before it lets the thread sleep.

    Every relayed call crosses the proxy twice, and each crossing used to end
    with the proxy asleep in ``epoll_wait``: waking it again costs the
    scheduler's wake-up latency, and the code it then runs finds cold caches. A
    client's next request and a server's answer usually come within a few
    hundred microseconds, so polling that long keeps the proxy awake for them.
    The price is at most ``spin_s`` of CPU after each burst of activity, and
    none while the proxy is idle: a wait that ended without activity (a timer)
    is followed by a plain sleep. Between polls the thread yields the CPU, so
    that on a machine with more busy processes than cores the client and the
    servers are not kept waiting by the poll.
    """

    def __init__(self, spin_s: float) -> None:
        super().__init__()
        self.spin_s = spin_s
        self._active = False

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        would_sleep = timeout is None or timeout > 0
        if would_sleep and self._active:
            spin_s = self.spin_s if timeout is None else min(self.spin_s, timeout)
            end = time.perf_counter() + spin_s
            while time.perf_counter() < end:
                ready = super().select(0)
                if ready:
                    return ready

                # A client or server that is ready to run gets this CPU first:
                # on a busy machine the poll must not hold up the very process
                # whose message it waits for.
                os.sched_yield()

        ready = super().select(timeout)
        if would_sleep:
            self._active = bool(ready)
        elif ready:
            self._active = True

        return ready


def polling_loop(spin_s: float) -> Callable[[], Any]:
    """A factory of asyncio loops whose selector polls for ``spin_s`` before
    sleeping; the plain loop when ``spin_s`` is 0 or the process may use only
    one CPU, where polling would hold up the very process it waits for."""

    def new_loop() -> asyncio.AbstractEventLoop:
        if spin_s <= 0 or len(os.sched_getaffinity(0)) < 2:
            return asyncio.new_event_loop()

        return asyncio.SelectorEventLoop(PollingSelector(spin_s))

    return new_loop
