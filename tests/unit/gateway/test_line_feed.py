"""``LineFeed``: messages taken where they arrive, the rest in order by a task."""

from __future__ import annotations

import json

import anyio
import pytest

from mcp_sandbox_proxy.gateway import lines as lines_module
from mcp_sandbox_proxy.gateway.jsonrpc import FrameTooLarge, LineSplitter, Message
from mcp_sandbox_proxy.gateway.lines import LineFeed

pytestmark = pytest.mark.anyio


def line(method: str) -> bytes:
    """A JSON-RPC notification named ``method``, as one line."""
    return json.dumps({"jsonrpc": "2.0", "method": method}).encode()


def lines(*methods: str) -> bytes:
    return b"".join(line(m) + b"\n" for m in methods)


def quick_feed(taken: list[str], declined: set[str]) -> LineFeed:
    """A feed that takes every message but those named in ``declined``."""

    def take_now(message: Message) -> bool:
        if message["method"] in declined:
            return False

        taken.append(message["method"])
        return True

    return LineFeed(LineSplitter(max_bytes=200), take_now)


async def test_messages_are_taken_at_once_and_partial_lines_wait() -> None:
    taken: list[str] = []
    feed = quick_feed(taken, set())
    whole = lines("a", "b", "c")
    cut = len(lines("a", "b")) + 5

    assert feed.push(whole[:cut])
    assert taken == ["a", "b"]
    feed.push(whole[cut:])
    assert taken == ["a", "b", "c"]


async def test_blank_lines_are_dropped_and_the_rest_go_to_the_task_as_they_came() -> (
    None
):
    """Blank lines are nothing to handle; a line that is not JSON-RPC and one too
    large reach the task as they are, for it to answer."""
    feed = quick_feed([], set())
    feed.push(b"\n  \r\nnot json\n" + b"x" * 201 + b"\n")

    assert await feed.next_line() == b"not json"
    assert isinstance(await feed.next_line(), FrameTooLarge)


async def test_a_declined_message_holds_back_every_line_after_it() -> None:
    """Order is kept: the lines after a declined one go to the task too, and
    while the task handles a line, nothing overtakes it."""
    taken: list[str] = []
    feed = quick_feed(taken, {"slow"})

    feed.push(lines("fast1", "slow", "fast2"))
    assert taken == ["fast1"]
    assert await feed.next_line() == line("slow")
    feed.push(lines("fast3"))  # the task still handles "slow"
    assert taken == ["fast1"]
    assert await feed.next_line() == line("fast2")
    assert await feed.next_line() == line("fast3")

    async with anyio.create_task_group() as group:

        async def wait_for_the_end() -> None:
            assert await feed.next_line() is None

        group.start_soon(wait_for_the_end)
        await anyio.sleep(0.01)
        # The task waits with nothing in hand: messages are taken at once again.
        feed.push(lines("fast4"))
        assert taken == ["fast1", "fast4"]
        feed.push(b"")


async def test_reading_pauses_while_too_much_waits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = line("f" * 60), line("s")
    monkeypatch.setattr(lines_module, "MAX_WAITING_BYTES", len(first) + 5)
    resumed: list[bool] = []
    feed = LineFeed(LineSplitter(), lambda _: False, lambda: resumed.append(True))

    assert feed.push(first + b"\n")
    assert not feed.push(second + b"\n"), "more than the bound waits: pause"
    assert await feed.next_line() == first
    assert resumed == [True], "no more than half the bound left: resume"


async def test_a_failing_handler_costs_its_message_and_nothing_else() -> None:
    """A bug in the quick handler is logged; the line is not handed on (it may be
    half handled), and the lines after it are handled as usual."""
    taken: list[str] = []

    def take_now(message: Message) -> bool:
        if message["method"] == "bug":
            raise RuntimeError("a bug")

        taken.append(message["method"])
        return True

    feed = LineFeed(LineSplitter(), take_now)
    feed.push(lines("a", "bug", "b"))
    feed.push(b"")

    assert taken == ["a", "b"]
    assert await feed.next_line() is None
