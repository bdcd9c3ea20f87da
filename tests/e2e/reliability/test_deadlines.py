"""Deadlines and cancellation: every call ends, and a stuck server is replaced."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.reliability.conftest import (
    CALL_TIMEOUT_S,
    MakeConfig,
    error_of,
    hostile,
    recorded,
    running_proxy,
    starts,
    text_of,
)
from tests.support.waiting import eventually

REQUEST_TIMEOUT = -32001
# A deadline is checked every 0.1 s; the answer may also wait on a busy machine.
DEADLINE_SLACK_S = 1.0
# The grace after a cancellation (2 s), then the stop of the stuck server (up to
# 4 s of polite requests and signals), then its restart.
RESTART_TIMEOUT_S = 15.0


def cancellations(record: Path) -> list[dict[str, Any]]:
    return [m for m in recorded(record) if m.get("method") == "notifications/cancelled"]


def server_id_of_call(record: Path, tool: str) -> Any:
    calls = [m for m in recorded(record) if m.get("method") == "tools/call"]
    return next(m["id"] for m in calls if m["params"]["name"] == tool)


@pytest.mark.anyio
async def test_a_call_past_its_deadline_is_answered_and_cancelled_at_the_server(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """A call the server never answers gets -32001 once the policy's call timeout
    passes, and the server gets notifications/cancelled with its own id."""
    record = tmp_path / "record.jsonl"
    config = make_config({"slow": hostile(record=record)})
    async with running_proxy(config) as proxy:
        started = time.monotonic()
        answer = await proxy.call("slow__hang", timeout_s=5.0)
        elapsed = time.monotonic() - started
        await eventually(lambda: bool(cancellations(record)))

    assert error_of(answer)["code"] == REQUEST_TIMEOUT
    assert "exceeded its deadline" in error_of(answer)["message"]
    assert CALL_TIMEOUT_S <= elapsed < CALL_TIMEOUT_S + DEADLINE_SLACK_S
    cancel = cancellations(record)[0]
    assert cancel["params"]["requestId"] == server_id_of_call(record, "hang")


@pytest.mark.anyio
async def test_a_server_that_ignores_cancellation_is_restarted(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """A server stuck in a call (reading nothing, answering nothing) gets -32001
    for it, is stopped once the grace period after the cancellation passes, and
    a new instance of it serves the next call."""
    record = tmp_path / "record.jsonl"
    config = make_config({"stuck": hostile(record=record)})
    async with running_proxy(config) as proxy:
        answer = await proxy.call("stuck__block", timeout_s=5.0)
        await eventually(lambda: len(starts(record)) == 2, RESTART_TIMEOUT_S)
        await proxy.wait_for(
            lambda m: (
                m.get("method") == "notifications/tools/list_changed"
                and len(proxy.notifications("notifications/tools/list_changed")) == 2
            ),
            RESTART_TIMEOUT_S,
        )
        after = await proxy.call("stuck__echo", {"text": "fresh"})

    assert error_of(answer)["code"] == REQUEST_TIMEOUT
    assert text_of(after) == "fresh"
    assert "server_stuck_after_cancel" in proxy.log_text()


@pytest.mark.anyio
async def test_a_client_cancellation_is_forwarded_and_the_call_gets_no_answer(
    make_config: MakeConfig, tmp_path: Path
) -> None:
    """The client's notifications/cancelled reaches the server under the server's
    own id with the client's reason; the proxy sends no answer for that call."""
    record = tmp_path / "record.jsonl"
    config = make_config({"slow": hostile(record=record)})
    async with running_proxy(config) as proxy:
        call_id = await proxy.start_call("slow__hang")
        await eventually(lambda: '"hang"' in record.read_text())
        await proxy.send(
            {
                "jsonrpc": "2.0",
                "method": "notifications/cancelled",
                "params": {"requestId": call_id, "reason": "changed my mind"},
            }
        )
        await eventually(lambda: bool(cancellations(record)))
        # A later call's deadline passes after the cancelled one's would have:
        # had the cancelled call stayed in flight, its answer would be in by then.
        later = await proxy.call("slow__hang", timeout_s=5.0)

    cancel = cancellations(record)[0]["params"]
    assert cancel == {
        "requestId": server_id_of_call(record, "hang"),
        "reason": "changed my mind",
    }
    assert error_of(later)["code"] == REQUEST_TIMEOUT
    assert proxy.responses_to(call_id) == []
