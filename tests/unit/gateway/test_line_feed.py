"""``LineFeed``: lines taken where they arrive, the rest in order by a task."""

from __future__ import annotations

import anyio
import pytest

from mcp_sandbox_proxy.gateway import lines as lines_module
from mcp_sandbox_proxy.gateway.jsonrpc import FrameTooLarge, LineSplitter
from mcp_sandbox_proxy.gateway.lines import Line, LineFeed

pytestmark = pytest.mark.anyio


def quick_feed(taken: list[Line], declined: set[bytes]) -> LineFeed:
    """A feed that takes every line but those in ``declined``, and, as the
    proxy's own feeds do, leaves oversized lines to the task."""

    def take_now(line: Line) -> bool:
        if isinstance(line, FrameTooLarge) or line in declined:
            return False

        taken.append(line)
        return True

    return LineFeed(LineSplitter(max_bytes=64), take_now)


async def test_lines_are_taken_at_once_and_partial_lines_wait() -> None:
    taken: list[Line] = []
    feed = quick_feed(taken, set())

    assert feed.push(b"a\nb\nc")
    assert taken == [b"a", b"b"]
    feed.push(b"d\n")
    assert taken == [b"a", b"b", b"cd"]


async def test_a_declined_line_holds_back_every_line_after_it() -> None:
    """Order is kept: the lines after a declined one go to the task too, and
    while the task handles a line, nothing overtakes it."""
    taken: list[Line] = []
    feed = quick_feed(taken, {b"slow"})

    feed.push(b"fast1\nslow\nfast2\n")
    assert taken == [b"fast1"]
    assert await feed.next_line() == b"slow"
    feed.push(b"fast3\n")  # the task still handles "slow"
    assert taken == [b"fast1"]
    assert await feed.next_line() == b"fast2"
    assert await feed.next_line() == b"fast3"

    async with anyio.create_task_group() as group:

        async def wait_for_more() -> None:
            assert await feed.next_line() is None

        group.start_soon(wait_for_more)
        await anyio.sleep(0.01)
        # The task waits with nothing in hand: lines are taken at once again.
        feed.push(b"fast4\n")
        assert taken == [b"fast1", b"fast4"]
        feed.push(b"")


async def test_oversized_lines_reach_the_task_as_such() -> None:
    feed = quick_feed([], set())
    splitter_bound = 64
    feed.push(b"x" * (splitter_bound + 1) + b"\n")

    assert isinstance(await feed.next_line(), FrameTooLarge)


async def test_reading_pauses_while_too_much_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(lines_module, "MAX_WAITING_BYTES", 10)
    resumed: list[bool] = []
    feed = LineFeed(LineSplitter(), lambda line: False, lambda: resumed.append(True))

    assert feed.push(b"1234567\n")
    assert not feed.push(b"8901\n"), "11 bytes wait: pause"
    assert await feed.next_line() == b"1234567"
    assert resumed == [True], "4 bytes left, no more than half: resume"


async def test_a_failing_handler_costs_its_line_and_nothing_else() -> None:
    """A bug in the quick handler is logged; the line is not handed on (it may be
    half handled), and the lines after it are handled as usual."""
    taken: list[Line] = []

    def take_now(line: Line) -> bool:
        if line == b"bug":
            raise RuntimeError("a bug")

        taken.append(line)
        return True

    feed = LineFeed(LineSplitter(), take_now)
    feed.push(b"a\nbug\nb\n")
    feed.push(b"")

    assert taken == [b"a", b"b"]
    assert await feed.next_line() is None
