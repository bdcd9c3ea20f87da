"""Input no client should send: answered or ignored as JSON-RPC says, all bounded.

Malformed lines as such are covered by the relay's own tests; these are messages
that are well formed yet hostile to the proxy's tables and encoders.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.reliability.conftest import (
    MakeConfig,
    error_of,
    hostile,
    rss_kib,
    running_proxy,
    text_of,
)
from tests.support.waiting import eventually

INVALID_REQUEST = -32600
PARSE_ERROR = -32700
# The relay's cap on client requests in flight, as its module states it.
MAX_CLIENT_REQUESTS = 1024
BOGUS_CANCELS = 200_000
RSS_GROWTH_LIMIT_KIB = 8 * 1024


@pytest.fixture
def config(make_config: MakeConfig, tmp_path: Path) -> Path:
    return make_config({"srv": hostile(record=tmp_path / "record.jsonl")})


@pytest.mark.anyio
async def test_cancelling_requests_that_never_existed_holds_no_memory(
    config: Path,
) -> None:
    """200,000 cancellations of ids never used get no answer and leave the
    proxy's memory where it was."""
    async with running_proxy(config) as proxy:
        await proxy.call("srv__echo", {"text": "warm"})
        before, seen = rss_kib(proxy.pid), len(proxy.received)
        lines = b"".join(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "method": "notifications/cancelled",
                    "params": {"requestId": f"never-{i}", "reason": "spite"},
                }
            ).encode()
            + b"\n"
            for i in range(BOGUS_CANCELS)
        )
        await proxy.send_bytes(lines)
        pong = await proxy.request("ping", timeout_s=60)
        growth = rss_kib(proxy.pid) - before

    assert pong["result"] == {}
    assert proxy.received[seen:] == [pong]
    assert growth < RSS_GROWTH_LIMIT_KIB


@pytest.mark.anyio
async def test_a_request_reusing_an_id_in_flight_is_refused(config: Path) -> None:
    """A second request under the id of one still in flight gets -32600; the
    first is still answered (here, by its deadline)."""
    async with running_proxy(config) as proxy:
        call_id = await proxy.start_call("srv__hang")
        await proxy.send(
            {"jsonrpc": "2.0", "id": call_id, "method": "ping"},
        )
        refused = await proxy.response(call_id)
        first = await proxy.response(call_id)

    assert error_of(refused)["code"] == INVALID_REQUEST
    assert "in flight already" in error_of(refused)["message"]
    assert error_of(first)["code"] == -32001


@pytest.mark.anyio
async def test_requests_past_the_in_flight_cap_are_refused(
    config: Path, tmp_path: Path
) -> None:
    """With 1,024 calls in flight, the next ones get -32600 at once; once the
    calls in flight end, requests are served again."""
    record = tmp_path / "record.jsonl"
    async with running_proxy(config) as proxy:
        held = [await proxy.start_call("srv__hang") for _ in range(MAX_CLIENT_REQUESTS)]
        await eventually(lambda: record.read_text().count('"hang"') == len(held))
        extra = [await proxy.start_call("srv__echo") for _ in range(10)]
        refused = [await proxy.response(request_id) for request_id in extra]
        for request_id in held:
            await proxy.response(request_id, timeout_s=30)

        after = await proxy.call("srv__echo", {"text": "room again"})

    assert {error_of(r)["code"] for r in refused} == {INVALID_REQUEST}
    assert text_of(after) == "room again"


@pytest.mark.anyio
async def test_ids_and_tokens_of_any_json_type_do_not_end_the_connection(
    config: Path,
) -> None:
    """Cancellations and progress naming objects, lists, booleans and nulls,
    progress tokens of those types in calls, and huge integers as ids are taken
    in stride."""
    odd_values = [[1], {"a": 1}, True, None, 1.5, 2**70]
    async with running_proxy(config) as proxy:
        for value in odd_values:
            for method, key in (
                ("notifications/cancelled", "requestId"),
                ("notifications/progress", "progressToken"),
            ):
                await proxy.send(
                    {"jsonrpc": "2.0", "method": method, "params": {key: value}}
                )

            request_id = proxy.next_id()
            params = {
                "name": "srv__echo",
                "arguments": {"text": "odd"},
                "_meta": {"progressToken": value},
            }
            await proxy.send(
                {
                    "jsonrpc": "2.0",
                    "id": request_id,
                    "method": "tools/call",
                    "params": params,
                }
            )
            assert text_of(await proxy.response(request_id)) == "odd"

        await proxy.send({"jsonrpc": "2.0", "id": 2**70, "method": "ping"})
        huge = await proxy.response(2**70)

    assert huge["result"] == {}


@pytest.mark.anyio
async def test_a_lone_surrogate_in_an_id_comes_back_as_it_was(config: Path) -> None:
    """A lone surrogate escape is valid JSON but not valid UTF-8: an id holding
    one is answered under that very id; NaN, which JSON lacks, is refused."""
    async with running_proxy(config) as proxy:
        await proxy.send_bytes(
            b'{"jsonrpc":"2.0","id":"half \\ud800","method":"ping"}\n'
        )
        pong = await proxy.response("half \ud800")
        await proxy.send_bytes(b'{"jsonrpc":"2.0","id":"n","method":"ping","x":NaN}\n')
        not_json = await proxy.wait_for(lambda m: "error" in m)

    assert pong["result"] == {}
    assert error_of(not_json)["code"] == PARSE_ERROR


@pytest.mark.anyio
async def test_a_result_holding_a_lone_surrogate_is_relayed(config: Path) -> None:
    """Text with a lone surrogate reaches the server and comes back as it was."""
    async with running_proxy(config) as proxy:
        call = (
            b'{"jsonrpc":"2.0","id":"s","method":"tools/call","params":'
            b'{"name":"srv__echo","arguments":{"text":"half \\ud800 a pair"}}}\n'
        )
        await proxy.send_bytes(call)
        echoed = await proxy.response("s")

    assert text_of(echoed) == "half \ud800 a pair"
