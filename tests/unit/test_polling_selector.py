"""``PollingSelector``: the poll before each sleep, on real pipes."""

from __future__ import annotations

import os
import selectors
import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from mcp_sandbox_proxy.fdio import PollingSelector, polling_loop

SPIN_S = 0.001


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    yield read_fd, write_fd
    os.close(read_fd)
    os.close(write_fd)


def test_ready_descriptors_are_reported_at_once(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    selector = PollingSelector(SPIN_S)
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
    selector = PollingSelector(SPIN_S)
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
    seen: list[str] = []

    async def which_selector() -> None:
        import asyncio

        loop: Any = asyncio.get_running_loop()
        seen.append(type(loop._selector).__name__)

    for spin_s in (SPIN_S, 0.0):
        options = {"loop_factory": polling_loop(spin_s)}
        anyio.run(which_selector, backend_options=options)

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0})
    options = {"loop_factory": polling_loop(SPIN_S)}
    anyio.run(which_selector, backend_options=options)

    assert seen[0] == "PollingSelector"
    assert "PollingSelector" not in seen[1:]


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
    selector = PollingSelector(0.02)
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
