"""A server that crashes, crash-loops or cannot start costs only its own calls."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import anyio
import pytest

from mcp_sandbox_proxy.gateway.pool import RESTART_DELAYS_S
from tests.e2e.reliability.conftest import (
    MakeConfig,
    error_of,
    hostile,
    recorded,
    running_proxy,
    starts,
    text_of,
)
from tests.support.waiting import eventually

SERVER_UNAVAILABLE = -32002
# The restart delays of the pool add up to 7.75 s before a crash-looping server is
# given up on; starting and initialising it six times takes a little more.
GIVE_UP_TIMEOUT_S = 20.0


@pytest.mark.anyio
async def test_calls_in_flight_get_an_error_at_once_when_their_server_crashes(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """A call waiting on a server that crashes is answered -32002 within a second;
    the crash call itself is answered the same way."""
    record = tmp_path / "record.jsonl"
    config = make_config({"victim": hostile(record=record)})
    async with running_proxy(config) as proxy:
        waiting = await proxy.start_call("victim__hang")
        await eventually(lambda: '"hang"' in record.read_text())
        crash = await proxy.start_call("victim__crash")
        started = time.monotonic()
        waiting_answer = await proxy.response(waiting, timeout_s=1.0)
        elapsed = time.monotonic() - started
        crash_answer = await proxy.response(crash)

    assert error_of(waiting_answer)["code"] == SERVER_UNAVAILABLE
    assert "exited with status 3" in error_of(waiting_answer)["message"]
    assert error_of(crash_answer)["code"] == SERVER_UNAVAILABLE
    assert elapsed < 1.0


def start_times(record: Path) -> list[float]:
    return [entry["at"] for entry in recorded(record) if "started" in entry]


@pytest.mark.anyio
async def test_a_crash_looping_server_is_given_up_and_its_tools_withdrawn(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """A server that dies after each initialize is restarted after doubling
    delays, given up after six failures in a minute, announced by list_changed;
    its calls then fail at once and the other server serves throughout."""
    record = tmp_path / "record.jsonl"
    config = make_config(
        {"looping": hostile("crash-after-init", record), "steady": hostile()}
    )
    async with running_proxy(config) as proxy:
        await eventually(lambda: len(starts(record)) == 6, GIVE_UP_TIMEOUT_S)
        await eventually(lambda: "server_failed" in proxy.log_text())
        refused = await proxy.call("looping__echo", {"text": "anyone?"})
        steady = await proxy.call("steady__echo", {"text": "still here"})
        listed = await proxy.request("tools/list")
        start_count = len(starts(record))

    names = {tool["name"] for tool in listed["result"]["tools"]}
    assert error_of(refused)["code"] == SERVER_UNAVAILABLE
    assert "gave up after 6 failures" in error_of(refused)["message"]
    assert text_of(steady) == "still here"
    assert "steady__echo" in names and not any(n.startswith("looping") for n in names)
    assert proxy.notifications("notifications/tools/list_changed")
    assert start_count == 6
    times = start_times(record)
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= delay for gap, delay in zip(gaps, RESTART_DELAYS_S, strict=True))


@pytest.mark.anyio
async def test_a_server_that_cannot_start_does_not_hold_up_the_others(
    make_config: MakeConfig,
) -> None:
    """With one server that exits at start, initialize is answered long before
    that server is given up on, the other server's tools are there, and a call to
    the broken one gets an error naming its stderr."""
    config = make_config({"broken": hostile("exit-at-start"), "fine": hostile()})
    started = time.monotonic()
    async with running_proxy(config) as proxy:
        initialized_after = time.monotonic() - started
        listed = await proxy.request("tools/list")
        fine = await proxy.call("fine__echo", {"text": "served"})
        with anyio.fail_after(5):
            broken = await proxy.call("broken__echo", {"text": "nobody"})

    names = {tool["name"] for tool in listed["result"]["tools"]}
    assert initialized_after < 5.0
    assert "fine__echo" in names and "broken__echo" not in names
    assert text_of(fine) == "served"
    assert error_of(broken)["code"] == SERVER_UNAVAILABLE
    assert "refusing to start, on purpose" in error_of(broken)["message"]
