"""Non-blocking reads and writes on raw file descriptors, for the event loop.

Both the proxy's own stdio and the pipes of host child processes go through here,
and every relayed message crosses it twice, so it is kept lean:

- reads ask for 64 KiB: asyncio's pipe transports ask for 256 KiB, an allocation
  above malloc's mmap threshold that costs about 100 us per small message;
- the descriptor stays registered with the event loop, and its readiness
  callback reads (for the relay's own pipes, the selector itself runs it),
  instead of a wait being set up and torn down around each read as
  ``anyio.wait_readable`` does.

This is the one module that reaches below anyio, to the asyncio loop it runs on;
``relay_loop`` makes that loop, with a selector that runs the readers of the
relay's pipes itself and polls briefly before it sleeps (see ``RelaySelector``).
"""

from __future__ import annotations

import asyncio  # noqa: TID251 - the readiness callbacks anyio does not expose
import contextlib
import math
import os
import select
import selectors
import time
import weakref
from collections import deque
from collections.abc import Callable

# Bytes asked of the kernel per read: large enough for a typical message in one
# read, small enough to stay under malloc's mmap threshold.
READ_CHUNK_BYTES = 64 * 1024

# Polls in a row that found input for direct readers, after which what those
# wrote goes out even though more input keeps coming (see ``RelaySelector``).
MAX_HELD_POLLS = 16


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
    """Hands each chunk read from one non-blocking descriptor to ``on_chunk`` as
    soon as the descriptor is readable, and ``b""`` at the end of the stream.

    No task is woken and no future made for a chunk, so a consumer that can
    finish a message on the spot (see ``LineFeed`` in the gateway) relays it for
    a fraction of the cost of a task switch. Under ``relay_loop`` the selector
    itself runs the read (see ``RelaySelector``); under any other loop, the
    loop's readable callback does. ``on_chunk`` returns False to pause reading
    until ``resume`` is called.
    """

    def __init__(self, fd: int, on_chunk: Callable[[bytes], bool]) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._selector = _RELAY_SELECTORS.get(self._loop)
        self._on_chunk = on_chunk
        self._registered = False
        self._ended = False

    def resume(self) -> None:
        """Start, or go on, reading."""
        if not self._registered and not self._ended:
            if self._selector is not None:
                self._selector.add_direct_reader(self.fd, self._on_readable)
            else:
                self._loop.add_reader(self.fd, self._on_readable)
            self._registered = True

    def close(self) -> None:
        """Stop watching the descriptor for good (it is not closed here)."""
        self._ended = True
        self._pause()

    def _pause(self) -> None:
        if self._registered:
            if self._selector is not None:
                self._selector.remove_direct_reader(self.fd)
            else:
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
    at the end of that turn (or, written by the direct readers of a
    ``RelaySelector``, when it flushes their held writes): each write to a
    pipe may wake its reader, and on a virtual machine a wake-up costs tens of
    microseconds. What the pipe does not take is written when the descriptor is
    writable; a writer with more than ``high_water_bytes`` queued waits until the
    reader catches up. Errors surface on the next ``write``.
    """

    def __init__(self, fd: int, high_water_bytes: int = 1024 * 1024) -> None:
        self.fd = fd
        self._loop = asyncio.get_running_loop()
        self._selector = _RELAY_SELECTORS.get(self._loop)
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
            selector = self._selector
            if selector is not None and selector.dispatching:
                selector.after_dispatch.append(self._flush)
            else:
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


# TODO(throughput): with 16 calls in flight on a two-core machine the proxy makes
# 0.27x-0.36x of a direct connection's calls/s, short of the 0.4x target. Most of its
# CPU per call goes to the per-message machinery here and in the gateway (reads, line
# splitting, decoding, writes) rather than to the checks: a build without the checks
# made 0.36x-0.41x, and 0.40x-0.42x compiled with Cython. Reaching the target with the
# checks in place needs this machinery in native code (see the README's performance
# notes).
class RelaySelector(selectors.EpollSelector):
    """The relay's epoll selector: it runs direct readers itself, and after
    activity polls for up to ``spin_s`` before it lets the thread sleep.

    Direct readers. asyncio turns every readiness report into a key, then a
    handle that its loop runs on a later pass, and a write queued there is
    flushed by yet another handle after one more pass: two turns of the loop for
    each message relayed. The callback of a descriptor added with
    ``add_direct_reader`` is instead run by ``select`` as soon as epoll reports
    it. While direct readers leave the loop nothing to do (no callback, no new
    timer), the poll goes on without a turn of the loop. Other descriptors are
    reported to the loop as usual; a direct descriptor must not also be given
    to the loop's ``add_reader`` or ``add_writer``.

    Held writes. The writers that direct readers wrote to (``FdWriter`` queues
    their flush on ``after_dispatch``) are flushed when a poll finds no more
    input, before the loop gets control, before a sleep, and at the latest
    after ``MAX_HELD_POLLS`` polls in a row that found input. A server that
    sleeps until its next request is woken once for what came in the meantime
    instead of once for each message: with 16 calls in flight this took the
    echo server's CPU per call through the proxy from about 10 to 6.5 us. No
    write waits for anything but the polls that the proxy makes anyway.

    Polling. Every relayed call crosses the proxy twice, and each crossing used
    to end with the proxy asleep in ``epoll_wait``: waking it again costs the
    scheduler's wake-up latency, and the code it then runs finds cold caches. A
    client's next request and a server's answer usually come within a few
    hundred microseconds, so polling that long keeps the proxy awake for them.
    The price is at most ``spin_s`` of CPU after each burst of activity, and
    none while the proxy is idle: a wait that ended without activity (a timer)
    is followed by a plain sleep. Between polls the thread yields the CPU, so
    that on a machine with more busy processes than cores the client and the
    servers are not kept waiting by the poll.
    """

    def __init__(self, spin_s: float = 0.0) -> None:
        super().__init__()
        self.spin_s = spin_s
        # ``EpollSelector``'s epoll object and table of keys, for ``_poll``: both
        # attributes it has set under these names since Python 3.4, and that
        # typeshed does not declare. The table changes in place.
        attributes = vars(self)
        self._epoll: select.epoll = attributes["_selector"]
        self._keys: dict[int, selectors.SelectorKey] = attributes["_fd_to_key"]
        # True while direct readers run; ``after_dispatch`` runs after them.
        self.dispatching = False
        self.after_dispatch: list[Callable[[], None]] = []
        self._direct: dict[int, Callable[[], None]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_ready: deque[object] | None = None
        self._loop_timers: list[object] | None = None
        self._active = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report exceptions of direct readers to ``loop``'s exception handler
        (they are raised from ``select`` otherwise), and go on polling after
        direct readers ran as long as ``loop`` has no callback to run."""
        self._loop = loop
        # asyncio keeps the callbacks it is about to run in this deque (it has
        # since Python 3.4); without it, ``select`` returns after each dispatch.
        ready: object = getattr(loop, "_ready", None)
        self._loop_ready = ready if isinstance(ready, deque) else None
        # And its timers in this list: a timer set by a direct reader ends the
        # poll, so that the loop can work out its next wait again.
        timers: object = getattr(loop, "_scheduled", None)
        self._loop_timers = timers if isinstance(timers, list) else None

    def add_direct_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Run ``callback`` from ``select`` whenever ``fd`` is readable."""
        self.register(fd, selectors.EVENT_READ)
        self._direct[fd] = callback

    def remove_direct_reader(self, fd: int) -> None:
        del self._direct[fd]
        self.unregister(fd)

    def select(
        self, timeout: float | None = None
    ) -> list[tuple[selectors.SelectorKey, int]]:
        would_sleep = timeout is None or timeout > 0
        if would_sleep and self._active and self.spin_s > 0:
            now = time.perf_counter()
            deadline = None if timeout is None else now + timeout
            end = now + self.spin_s
            timers = self._loop_timers
            timer_count = len(timers) if timers is not None else 0
            held = 0
            while now < end and (deadline is None or now < deadline):
                ready = self._poll(0)
                if ready is None:
                    if self.after_dispatch:
                        # The input ran dry: what the readers wrote goes out now.
                        self._flush_held()
                        held = 0
                    else:
                        # A client or server that is ready to run gets this CPU
                        # first: on a busy machine the poll must not hold up the
                        # very process whose message it waits for.
                        os.sched_yield()
                elif (
                    ready
                    or self._loop_ready is None
                    or self._loop_ready
                    or timers is None
                    or len(timers) != timer_count
                ):
                    self._flush_held()
                    return ready
                else:
                    # All of it went to direct readers, and they left the loop
                    # nothing to run and no new timer: poll on, afresh.
                    held += 1
                    if held >= MAX_HELD_POLLS:
                        self._flush_held()
                        held = 0

                    end = time.perf_counter() + self.spin_s

                now = time.perf_counter()

            self._flush_held()
            if deadline is not None:
                timeout = max(0.0, deadline - now)

        if timeout is None:
            ready = self._poll(-1)
        else:
            # epoll waits in milliseconds: round up, to wait at least ``timeout``.
            ready = self._poll(math.ceil(timeout * 1e3) * 1e-3 if timeout > 0 else 0)

        self._flush_held()
        if would_sleep:
            self._active = ready is not None
        elif ready is not None:
            self._active = True

        return ready or []

    def _flush_held(self) -> None:
        """Run the flushes that direct readers queued, in order."""
        if self.after_dispatch:
            flushes, self.after_dispatch = self.after_dispatch, []
            for flush in flushes:
                flush()

    def _poll(self, timeout: float) -> list[tuple[selectors.SelectorKey, int]] | None:
        """One ``epoll_wait`` of up to ``timeout`` seconds (-1: no limit). Runs
        the direct readers among the descriptors ready (the flushes they queue
        are left to ``select``), and returns the loop's share of the events;
        None when no descriptor was ready at all. The loop gets control back
        even when its share is empty: a reader may have scheduled a callback or
        woken a task.

        ``EpollSelector.select``, unrolled: it makes a key and a tuple of
        events for every ready descriptor, which direct readers need neither of.
        """
        try:
            events = self._epoll.poll(timeout, max(len(self._keys), 1))
        except InterruptedError:
            return None

        if not events:
            return None

        rest: list[tuple[selectors.SelectorKey, int]] = []
        direct = self._direct
        self.dispatching = True
        try:
            for fd, mask in events:
                # Looked up now: an earlier callback may have removed it.
                callback = direct.get(fd)
                if callback is None:
                    key = self._keys.get(fd)
                    if key is not None:
                        rest.append((key, _selector_events(mask) & key.events))
                    continue

                try:
                    callback()
                except Exception as exc:
                    if self._loop is None:
                        raise

                    self._loop.call_exception_handler(
                        {"message": "direct reader failed", "exception": exc}
                    )
        finally:
            self.dispatching = False

        return rest


def _selector_events(mask: int) -> int:
    """``selectors``' events for an epoll event mask, as ``EpollSelector`` maps
    them: anything but input counts as writable, anything but output as
    readable (so a hang-up or an error wakes both)."""
    events = 0
    if mask & ~select.EPOLLIN:
        events |= selectors.EVENT_WRITE
    if mask & ~select.EPOLLOUT:
        events |= selectors.EVENT_READ
    return events


_RELAY_SELECTORS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, RelaySelector
] = weakref.WeakKeyDictionary()


def relay_loop(spin_s: float) -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory of asyncio loops on a ``RelaySelector`` that polls for
    ``spin_s`` before sleeping; it does not poll when ``spin_s`` is 0 or the
    process may use only one CPU, where polling would hold up the very process
    it waits for."""

    def new_loop() -> asyncio.AbstractEventLoop:
        may_poll = len(os.sched_getaffinity(0)) >= 2
        selector = RelaySelector(spin_s if may_poll else 0.0)
        loop = asyncio.SelectorEventLoop(selector)
        selector.bind(loop)
        _RELAY_SELECTORS[loop] = selector
        return loop

    return new_loop
