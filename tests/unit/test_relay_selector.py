"""``RelaySelector``: direct readers and the poll before each sleep, on real
pipes."""

from __future__ import annotations

import asyncio
import os
import selectors
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from mcp_sandbox_proxy.fdio import MAX_HELD_POLLS, RelaySelector, relay_loop

SPIN_S = 0.001


def open_pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


pipe = pytest.fixture(open_pipe, name="pipe")
second_pipe = pytest.fixture(open_pipe, name="second_pipe")


@pytest.fixture
def bound() -> Iterator[tuple[RelaySelector, asyncio.AbstractEventLoop]]:
    """A selector bound to a loop that is not running: ``select`` is called by
    the test itself, as the loop would call it."""
    selector = RelaySelector(0.5)
    loop = asyncio.SelectorEventLoop(selector)
    selector.bind(loop)
    yield selector, loop
    loop.close()


def wake_up(selector: RelaySelector, write_fd: int) -> None:
    """Give the selector activity (its direct reader takes the byte), so that
    its next wait polls first."""
    os.write(write_fd, b"x")
    assert selector.select(0.1) == []


def test_ready_descriptors_are_reported_at_once(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    selector = RelaySelector(SPIN_S)
    selector.register(read_fd, selectors.EVENT_READ, "reader")
    os.write(write_fd, b"x")

    ready = selector.select(0)

    assert [(key.data, events) for key, events in ready] == [
        ("reader", selectors.EVENT_READ)
    ]
    selector.close()


def test_data_that_comes_while_it_polls_or_sleeps_is_reported(
    pipe: tuple[int, int],
) -> None:
    """After activity it polls, then sleeps; either way a later write wakes it,
    and a wait that times out with nothing reports nothing."""
    read_fd, write_fd = pipe
    selector = RelaySelector(SPIN_S)
    selector.register(read_fd, selectors.EVENT_READ)
    os.write(write_fd, b"first")
    assert selector.select(None)  # activity: the next wait polls first
    os.read(read_fd, 16)

    later = threading.Timer(0.05, os.write, (write_fd, b"second"))
    later.start()
    ready = selector.select(5.0)
    later.join()

    assert [key.fd for key, _ in ready] == [read_fd]
    os.read(read_fd, 16)
    assert selector.select(0.01) == []
    selector.close()


def test_the_proxy_loop_polls_only_when_it_may_and_runs_anyio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[str, float]] = []

    async def which_selector() -> None:
        loop: Any = asyncio.get_running_loop()
        seen.append((type(loop._selector).__name__, loop._selector.spin_s))

    for spin_s in (SPIN_S, 0.0):
        options = {"loop_factory": relay_loop(spin_s)}
        anyio.run(which_selector, backend_options=options)

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    options = {"loop_factory": relay_loop(SPIN_S)}
    anyio.run(which_selector, backend_options=options)

    assert seen == [
        ("RelaySelector", SPIN_S),
        ("RelaySelector", 0.0),
        ("RelaySelector", 0.0),  # one CPU: polling would hold up the peers
    ]


def test_the_poll_yields_the_cpu_between_polls(
    pipe: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine with more busy processes than cores, polling must let a
    runnable client or server have the CPU: each empty poll is followed by a
    yield, and data that arrives ends the poll without one."""
    read_fd, write_fd = pipe
    yields: list[int] = []
    real_yield = os.sched_yield

    def counted_yield() -> None:
        yields.append(1)
        real_yield()

    monkeypatch.setattr(os, "sched_yield", counted_yield)
    selector = RelaySelector(0.02)
    selector.register(read_fd, selectors.EVENT_READ)
    os.write(write_fd, b"first")
    assert selector.select(None)
    os.read(read_fd, 16)

    assert selector.select(0.02) == []  # a whole poll that finds nothing
    assert len(yields) > 1

    os.write(write_fd, b"second")
    assert selector.select(None)  # activity again: the next wait polls first
    os.read(read_fd, 16)
    yields.clear()
    os.write(write_fd, b"third")
    assert selector.select(None)  # its first poll finds data: no yield
    assert yields == []
    selector.close()


def test_a_poll_ends_by_the_timeout_it_was_given(pipe: tuple[int, int]) -> None:
    """The loop's next timer must not wait for the poll to end."""
    read_fd, write_fd = pipe
    selector = RelaySelector(5.0)
    selector.register(read_fd, selectors.EVENT_READ)
    os.write(write_fd, b"x")
    assert selector.select(None)
    os.read(read_fd, 16)

    started = time.perf_counter()
    assert selector.select(0.05) == []
    assert 0.04 < time.perf_counter() - started < 2.0
    selector.close()


def test_direct_readers_run_in_select_and_the_rest_goes_to_the_loop(
    pipe: tuple[int, int], second_pipe: tuple[int, int]
) -> None:
    direct_fd, direct_write_fd = pipe
    loop_fd, loop_write_fd = second_pipe
    selector = RelaySelector(SPIN_S)
    read: list[bytes] = []
    selector.add_direct_reader(direct_fd, lambda: read.append(os.read(direct_fd, 16)))
    selector.register(loop_fd, selectors.EVENT_READ, "loop's")
    os.write(direct_write_fd, b"direct")
    os.write(loop_write_fd, b"loop")

    ready = selector.select(1.0)

    assert read == [b"direct"]
    assert [(key.data, events) for key, events in ready] == [
        ("loop's", selectors.EVENT_READ)
    ]
    selector.remove_direct_reader(direct_fd)
    os.write(direct_write_fd, b"again")
    assert selector.select(0) == [(selector.get_key(loop_fd), selectors.EVENT_READ)]
    assert read == [b"direct"]
    selector.close()


def test_flushes_queued_by_direct_readers_run_after_all_of_them(
    pipe: tuple[int, int], second_pipe: tuple[int, int]
) -> None:
    events: list[str] = []
    selector = RelaySelector(SPIN_S)

    def reader(name: str, fd: int) -> None:
        os.read(fd, 16)
        assert selector.dispatching
        events.append(f"read {name}")
        selector.after_dispatch.append(lambda: events.append(f"flush {name}"))

    for name, (read_fd, write_fd) in (("one", pipe), ("two", second_pipe)):
        selector.add_direct_reader(read_fd, lambda n=name, fd=read_fd: reader(n, fd))
        os.write(write_fd, b"x")

    assert selector.select(1.0) == []

    assert sorted(events[:2]) == ["read one", "read two"]
    assert sorted(events[2:]) == ["flush one", "flush two"]
    assert not selector.dispatching and selector.after_dispatch == []
    selector.close()


def test_a_reader_removed_by_an_earlier_one_is_not_run(
    pipe: tuple[int, int], second_pipe: tuple[int, int]
) -> None:
    selector = RelaySelector(SPIN_S)
    ran: list[int] = []

    def reader(fd: int, other: int) -> None:
        ran.append(fd)
        os.read(fd, 16)
        selector.remove_direct_reader(other)

    selector.add_direct_reader(pipe[0], lambda: reader(pipe[0], second_pipe[0]))
    selector.add_direct_reader(second_pipe[0], lambda: reader(second_pipe[0], pipe[0]))
    os.write(pipe[1], b"x")
    os.write(second_pipe[1], b"x")

    selector.select(1.0)

    assert len(ran) == 1
    selector.close()


def test_a_failing_reader_is_reported_to_the_loop_and_the_others_run(
    bound: tuple[RelaySelector, asyncio.AbstractEventLoop],
    pipe: tuple[int, int],
    second_pipe: tuple[int, int],
) -> None:
    selector, loop = bound
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    ran: list[str] = []

    def failing() -> None:
        os.read(pipe[0], 16)
        raise ValueError("broken reader")

    selector.add_direct_reader(pipe[0], failing)
    selector.add_direct_reader(
        second_pipe[0], lambda: ran.append(os.read(second_pipe[0], 16).decode())
    )
    os.write(pipe[1], b"x")
    os.write(second_pipe[1], b"fine")

    selector.select(1.0)

    assert ran == ["fine"]
    assert [str(context["exception"]) for context in reported] == ["broken reader"]


def test_a_failing_reader_of_an_unbound_selector_raises(
    pipe: tuple[int, int],
) -> None:
    selector = RelaySelector(SPIN_S)

    def failing() -> None:
        os.read(pipe[0], 16)
        raise ValueError("broken reader")

    selector.add_direct_reader(pipe[0], failing)
    os.write(pipe[1], b"x")
    with pytest.raises(ValueError, match="broken reader"):
        selector.select(1.0)
    selector.close()


def test_it_polls_on_after_direct_readers_that_leave_the_loop_nothing(
    bound: tuple[RelaySelector, asyncio.AbstractEventLoop],
    pipe: tuple[int, int],
) -> None:
    """Messages that direct readers relay on their own never cost the loop a
    pass: one ``select`` takes all of them, until its timeout."""
    selector, _loop = bound
    read_fd, write_fd = pipe
    chunks: list[bytes] = []
    selector.add_direct_reader(read_fd, lambda: chunks.append(os.read(read_fd, 16)))
    wake_up(selector, write_fd)
    chunks.clear()

    writes = [threading.Timer(delay, os.write, (write_fd, b"m")) for delay in (0, 0.02)]
    for timer in writes:
        timer.start()
    ready = selector.select(0.3)
    for timer in writes:
        timer.join()

    assert ready == []
    assert b"".join(chunks) == b"mm"


@pytest.mark.parametrize("schedules", ["a callback", "a timer"])
def test_a_reader_that_gives_the_loop_work_ends_the_poll(
    bound: tuple[RelaySelector, asyncio.AbstractEventLoop],
    pipe: tuple[int, int],
    schedules: str,
) -> None:
    selector, loop = bound
    read_fd, write_fd = pipe

    armed = False

    def reader() -> None:
        os.read(read_fd, 16)
        if not armed:
            return

        if schedules == "a callback":
            loop.call_soon(lambda: None)
        else:
            loop.call_later(0.01, lambda: None)

    selector.add_direct_reader(read_fd, reader)
    wake_up(selector, write_fd)
    armed = True
    os.write(write_fd, b"x")

    started = time.perf_counter()
    assert selector.select(5.0) == []
    assert time.perf_counter() - started < 1.0


def test_writes_are_held_while_more_input_keeps_coming(
    bound: tuple[RelaySelector, asyncio.AbstractEventLoop],
    pipe: tuple[int, int],
) -> None:
    """What direct readers write goes out when a poll finds no more input, so
    that a peer woken by it finds everything that came in the meantime."""
    selector, _loop = bound
    read_fd, write_fd = pipe
    events: list[str] = []

    def reader() -> None:
        chunk = os.read(read_fd, 16)
        events.append(f"read {chunk.decode()}")
        selector.after_dispatch.append(lambda: events.append(f"flush {chunk.decode()}"))
        if chunk == b"1":
            os.write(write_fd, b"2")  # more input, there by the next poll

    selector.add_direct_reader(read_fd, reader)
    wake_up(selector, write_fd)
    events.clear()
    os.write(write_fd, b"1")

    assert selector.select(0.1) == []
    assert events == ["read 1", "read 2", "flush 1", "flush 2"]


def test_writes_are_held_for_a_bounded_number_of_polls(
    bound: tuple[RelaySelector, asyncio.AbstractEventLoop],
    pipe: tuple[int, int],
) -> None:
    """Input that never runs dry must not keep the writes back for good."""
    selector, _loop = bound
    read_fd, write_fd = pipe
    events: list[str] = []

    def reader() -> None:
        os.read(read_fd, 16)
        events.append("read")
        selector.after_dispatch.append(lambda: events.append("flush"))
        if events.count("read") < 3 * MAX_HELD_POLLS:
            os.write(write_fd, b"x")

    selector.add_direct_reader(read_fd, reader)
    wake_up(selector, write_fd)
    events.clear()
    os.write(write_fd, b"x")

    selector.select(0.2)

    first_flush = events.index("flush")
    assert events[:first_flush] == ["read"] * MAX_HELD_POLLS
    assert events.count("flush") == 3 * MAX_HELD_POLLS
