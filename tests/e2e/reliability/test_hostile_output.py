"""What a server writes cannot crash the proxy, hang a call or grow its memory."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.reliability.conftest import (
    MAX_MESSAGE_BYTES,
    MAX_RESULT_BYTES,
    MakeConfig,
    Proxy,
    error_of,
    hostile,
    recorded,
    rss_kib,
    running_proxy,
    starts,
    text_of,
)
from tests.support.waiting import eventually

INTERNAL_ERROR = -32603
SERVER_UNAVAILABLE = -32002
REQUEST_TIMEOUT = -32001
# The relay's bounds, as its module states them.
NOTIFICATIONS_PER_S = 500
MAX_SERVER_REQUESTS = 32
# A stderr flood this large would show in the proxy's memory if it were kept.
STDERR_FLOOD_BYTES = 64 * 1024 * 1024
RSS_GROWTH_LIMIT_KIB = 16 * 1024


def well_formed(message: dict[str, Any]) -> bool:
    """A JSON-RPC 2.0 request, notification or response as MCP has them."""
    if message.get("jsonrpc") != "2.0":
        return False

    if "method" in message:
        return isinstance(message["method"], str) and isinstance(
            message.get("params", {}), dict
        )

    error = message.get("error")
    if "result" in message:
        return "error" not in message and isinstance(message["result"], dict)

    return isinstance(error, dict) and isinstance(error.get("code"), int)


async def served_after(proxy: Proxy, server: str) -> str:
    """The server still answers, and everything the client got was well formed."""
    answer = await proxy.call(f"{server}__echo", {"text": "still serving"})
    assert all(well_formed(m) for m in proxy.received), proxy.received
    return text_of(answer)


@pytest.fixture
def one_server(make_config: MakeConfig, tmp_path: Path) -> Path:
    return make_config({"bad": hostile(record=tmp_path / "record.jsonl")})


@pytest.mark.anyio
async def test_lines_that_are_not_json_rpc_are_ignored(one_server: Path) -> None:
    """Non-JSON, binary, truncated, non-object and ill-shaped lines are dropped
    (and logged); the call is answered and the client sees none of them."""
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__garbage")
        after = await served_after(proxy, "bad")

    assert text_of(answer) == "after garbage"
    assert after == "still serving"
    assert "server_output_ignored" in proxy.log_text()


@pytest.mark.anyio
async def test_deeply_nested_json_is_ignored(one_server: Path) -> None:
    """Lines nested 100,000 deep are refused before they reach the decoder."""
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__nested", {"depth": 100_000})
        after = await served_after(proxy, "bad")

    assert text_of(answer) == "after nesting"
    assert after == "still serving"


@pytest.mark.anyio
async def test_a_message_over_the_policy_bound_stops_the_server_and_fails_the_call(
    one_server: Path, tmp_path: Path
) -> None:
    """A 2 MiB answer under a policy whose output bound is 1 MiB: the caller gets
    -32002 naming the bound, and a restarted server serves the next call."""
    record = tmp_path / "record.jsonl"
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__oversize", {"bytes": 2 * MAX_MESSAGE_BYTES})
        await eventually(lambda: len(starts(record)) == 2)
        await proxy.wait_for(
            lambda _: len(proxy.notifications("notifications/tools/list_changed")) == 2
        )
        after = await served_after(proxy, "bad")

    assert error_of(answer)["code"] == SERVER_UNAVAILABLE
    assert f"over {MAX_MESSAGE_BYTES} bytes" in error_of(answer)["message"]
    assert after == "still serving"


@pytest.mark.anyio
async def test_a_response_with_a_duplicate_id_is_delivered_once(
    one_server: Path,
) -> None:
    """A server that answers one call twice: the client gets the first answer
    only, even after a later round trip."""
    async with running_proxy(one_server) as proxy:
        call_id = await proxy.start_call("bad__duplicate")
        first = await proxy.response(call_id)
        after = await served_after(proxy, "bad")

    assert text_of(first) == "first answer"
    assert proxy.responses_to(call_id) == [first]
    assert after == "still serving"


@pytest.mark.anyio
async def test_responses_to_ids_never_used_are_dropped(one_server: Path) -> None:
    """Responses with unknown ids of every type reach nobody; the real answer
    reaches its caller."""
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__unknown_ids")
        after = await served_after(proxy, "bad")

    texts = [
        block.get("text")
        for m in proxy.received
        for block in m.get("result", {}).get("content", [])
    ]
    assert text_of(answer) == "after strays"
    assert "to nobody" not in texts
    assert after == "still serving"


@pytest.mark.anyio
@pytest.mark.parametrize("tool", ["invalid_result", "invalid_error"])
async def test_a_malformed_answer_becomes_an_error_for_its_caller(
    one_server: Path, tool: str
) -> None:
    """A result that is not an object, or an error without a code, reaches the
    client as a well-formed -32603 naming the fault."""
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call(f"bad__{tool}")
        after = await served_after(proxy, "bad")

    assert error_of(answer)["code"] == INTERNAL_ERROR
    assert "answered tools/call wrongly" in error_of(answer)["message"]
    assert after == "still serving"


@pytest.mark.anyio
async def test_a_result_the_interceptors_cannot_read_is_still_answered(
    one_server: Path,
) -> None:
    """A result whose content is not a list reaches its caller as a well-formed
    answer, and the proxy keeps serving."""
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__odd_result")
        after = await served_after(proxy, "bad")

    assert well_formed(answer)
    assert after == "still serving"


@pytest.mark.anyio
async def test_a_notification_flood_is_rate_bounded_and_counted(
    one_server: Path,
) -> None:
    """Of 20,000 notifications sent at once, about a second's worth reaches the
    client; the rest are dropped and the count is logged."""
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__flood", {"count": 20_000}, timeout_s=30)
        after = await served_after(proxy, "bad")

    relayed = len(proxy.notifications("notifications/message"))
    assert text_of(answer) == "flooded"
    assert NOTIFICATIONS_PER_S <= relayed < 4 * NOTIFICATIONS_PER_S
    assert "server_notifications_dropped" in proxy.log_text()
    assert after == "still serving"


@pytest.mark.anyio
async def test_a_stderr_flood_leaves_memory_bounded(one_server: Path) -> None:
    """64 MiB written to stderr leave the proxy's memory within 16 MiB of where
    it was, and the proxy's own log holds only a rate-bounded sample."""
    async with running_proxy(one_server) as proxy:
        await proxy.call("bad__echo", {"text": "warm"})
        before = rss_kib(proxy.pid)
        answer = await proxy.call(
            "bad__stderr_flood", {"bytes": STDERR_FLOOD_BYTES}, timeout_s=60
        )
        growth = rss_kib(proxy.pid) - before
        after = await served_after(proxy, "bad")

    assert text_of(answer) == "noisy"
    assert growth < RSS_GROWTH_LIMIT_KIB
    assert after == "still serving"
    assert len(proxy.log_text()) < STDERR_FLOOD_BYTES // 100


@pytest.mark.anyio
async def test_a_crash_is_reported_with_the_end_of_the_servers_stderr(
    one_server: Path,
) -> None:
    """The error of a call whose server died quotes the last of its stderr."""
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__stderr_then_crash")

    message = error_of(answer)["message"]
    assert error_of(answer)["code"] == SERVER_UNAVAILABLE
    assert "exited with status 4" in message and message.endswith("last words")
    assert "dying slowly 0\n" not in message


@pytest.mark.anyio
async def test_a_huge_image_is_held_to_the_result_size_rule(one_server: Path) -> None:
    """An image larger than the policy's result cap is dropped with a marker; the
    text before it is kept."""
    image_bytes = 2 * MAX_RESULT_BYTES
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__image", {"bytes": image_bytes})
        after = await served_after(proxy, "bad")

    content = answer["result"]["content"]
    assert [block["type"] for block in content] == ["text"]
    assert content[0]["text"].startswith("an image follows")
    assert f"result cut at {MAX_RESULT_BYTES} bytes" in content[0]["text"]
    assert after == "still serving"


def answers_to_asks(record: Path) -> list[dict[str, Any]]:
    """Responses the server got to the requests it sent the client."""
    return [
        m
        for m in recorded(record)
        if "method" not in m and str(m.get("id", "")).startswith("ask-")
    ]


@pytest.mark.anyio
async def test_a_server_request_the_client_never_answers_times_out(
    one_server: Path, tmp_path: Path
) -> None:
    """roots/list left unanswered: after the policy's call timeout the client is
    told to cancel it, and the server gets -32001 for it."""
    record = tmp_path / "record.jsonl"
    async with running_proxy(one_server) as proxy:
        await proxy.call("bad__ask_client", {"method": "roots/list"})
        ask = next(m for m in proxy.received if m.get("method") == "roots/list")
        cancel = await proxy.wait_for(
            lambda m: m.get("method") == "notifications/cancelled", timeout_s=5
        )
        await eventually(lambda: bool(answers_to_asks(record)))
        after = await served_after(proxy, "bad")

    assert cancel["params"]["requestId"] == ask["id"]
    assert answers_to_asks(record)[0]["error"]["code"] == REQUEST_TIMEOUT
    assert after == "still serving"


@pytest.mark.anyio
async def test_server_requests_past_the_cap_are_refused_at_once(
    one_server: Path, tmp_path: Path
) -> None:
    """Of 100 requests a server sends the client at once, 32 reach the client;
    the server gets -32002 for each of the others without waiting."""
    record = tmp_path / "record.jsonl"
    async with running_proxy(one_server) as proxy:
        await proxy.call("bad__ask_client", {"method": "roots/list", "count": 100})
        await eventually(
            lambda: len(answers_to_asks(record)) >= 100 - MAX_SERVER_REQUESTS
        )
        refused = answers_to_asks(record)
        asked = [m for m in proxy.received if m.get("method") == "roots/list"]

    assert len(asked) == MAX_SERVER_REQUESTS
    assert len(refused) == 100 - MAX_SERVER_REQUESTS
    assert {r["error"]["code"] for r in refused} == {SERVER_UNAVAILABLE}


@pytest.mark.anyio
async def test_emitted_lines_reach_the_client_only_when_well_formed(
    one_server: Path,
) -> None:
    """A notification with params that are not an object is dropped; a
    well-formed one is relayed as it came."""
    lines = [
        {"jsonrpc": "2.0", "method": "notifications/message", "params": [1, 2]},
        {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "ok"}},
    ]
    encoded = [base64.b64encode(json.dumps(line).encode()).decode() for line in lines]
    async with running_proxy(one_server) as proxy:
        answer = await proxy.call("bad__emit", {"lines": encoded})
        after = await served_after(proxy, "bad")

    relayed = proxy.notifications("notifications/message")
    assert text_of(answer) == "emitted"
    assert [m["params"] for m in relayed] == [{"data": "ok"}]
    assert after == "still serving"
