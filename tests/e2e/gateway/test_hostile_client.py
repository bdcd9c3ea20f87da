"""Input no client should send is answered as JSON-RPC says, never fatal."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.gateway.test_echo_server import echo
from tests.support.raw_proxy import raw_proxy


@pytest.mark.anyio
async def test_garbage_lines_get_errors_and_the_next_request_is_served(
    relay_config: Any,
) -> None:
    """Not JSON: -32700; a batch or a bad shape: -32600; unknown method: -32601."""
    config = relay_config({"echo": echo()})
    async with raw_proxy(config) as proxy:
        await proxy.send_bytes(b"this is not json\n")
        not_json = await proxy.receive()
        await proxy.send_bytes(b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]\n')
        batch = await proxy.receive()
        await proxy.send_bytes(b'{"jsonrpc":"2.0","id":2}\n')
        shapeless = await proxy.receive()
        await proxy.send_bytes(b'{"jsonrpc":"1.0","id":3,"method":"ping"}\n')
        wrong_version = await proxy.receive()
        await proxy.send({"jsonrpc": "2.0", "id": 4, "method": "no/such/method"})
        unknown = await proxy.receive_response(4)
        await proxy.send_bytes(b"[" * 100_000 + b"\n")
        deep = await proxy.receive()
        await proxy.send(
            {
                "jsonrpc": "2.0",
                "id": 5,
                "method": "tools/call",
                "params": {"name": "echo__echo", "arguments": {"text": "ok"}},
            }
        )
        served = await proxy.receive_response(5)

    assert not_json["error"]["code"] == -32700 and not_json["id"] is None
    assert batch["error"]["code"] == -32600
    assert shapeless["error"]["code"] == -32600 and shapeless["id"] == 2
    assert wrong_version["error"]["code"] == -32600 and wrong_version["id"] == 3
    assert unknown["error"]["code"] == -32601
    assert deep["error"]["code"] == -32700
    assert served["result"]["content"][0]["text"] == "ok"


@pytest.mark.anyio
async def test_requests_before_initialize_are_refused_and_ping_is_answered(
    relay_config: Any,
) -> None:
    """Only initialize and ping are served before the handshake."""
    config = relay_config({"echo": echo()})
    async with raw_proxy(config, initialize=False) as proxy:
        await proxy.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        early = await proxy.receive_response(1)
        await proxy.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
        ping = await proxy.receive_response(2)

    assert early["error"]["code"] == -32600
    assert ping["result"] == {}


@pytest.mark.anyio
async def test_an_oversized_message_is_refused_without_losing_the_stream(
    relay_config: Any,
) -> None:
    """A line over the size bound gets -32600 and the following line is served."""
    config = relay_config({"echo": echo()})
    async with raw_proxy(config) as proxy:
        chunk = b"x" * (1024 * 1024)
        for _ in range(33):
            await proxy.send_bytes(chunk)

        await proxy.send_bytes(b"\n")
        refused = await proxy.receive()
        await proxy.send({"jsonrpc": "2.0", "id": 9, "method": "ping"})
        ping = await proxy.receive_response(9)

    assert refused["error"]["code"] == -32600
    assert ping["result"] == {}
