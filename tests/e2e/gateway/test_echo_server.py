"""Relay behaviour shown with the lean test server: names, cancellation, failure."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp import MCPError

from tests.conftest import REPO
from tests.support.proxy_client import proxy_session
from tests.support.raw_proxy import raw_proxy
from tests.support.waiting import eventually

ECHO_SERVER = REPO / "tests" / "servers" / "echo_server.py"


def echo(record: Path | None = None, **extra: Any) -> dict[str, Any]:
    server: dict[str, Any] = {"command": sys.executable, "args": [str(ECHO_SERVER)]}
    if record is not None:
        server["env"] = {"ECHO_SERVER_RECORD": str(record)}

    return {**server, **extra}


def recorded(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in record.read_text().splitlines()]


@pytest.mark.anyio
async def test_two_servers_get_their_own_prefixes(relay_config: Any) -> None:
    """Tools of two servers are listed side by side, each under its server's name."""
    config = relay_config({"alpha": echo(), "beta": echo()})
    async with proxy_session(config) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        alpha = await session.call_tool("alpha__echo", {"text": "a"})
        beta = await session.call_tool("beta__echo", {"text": "b"})

    assert {"alpha__echo", "beta__echo", "alpha__crash", "beta__wait"} <= names
    assert alpha.content[0].text == "a"  # type: ignore[union-attr]
    assert beta.content[0].text == "b"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_name_collision_keeps_the_first_server_and_suffixes_the_next(
    relay_config: Any, tmp_path: Path
) -> None:
    """With empty prefixes, the first server (by name) keeps ``echo``; the other
    gets ``echo_`` and a hash, and each name still reaches its own server."""
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    config = relay_config(
        {"one": echo(first, prefix=""), "two": echo(second, prefix="")}
    )
    async with proxy_session(config) as session:
        names = [t.name for t in (await session.list_tools()).tools]
        suffixed = next(n for n in names if n.startswith("echo_"))
        await session.call_tool("echo", {"text": "to one"})
        await session.call_tool(suffixed, {"text": "to two"})

    assert names.count("echo") == 1 and len(suffixed) == len("echo_") + 8
    calls = lambda path: [  # noqa: E731
        m["params"]["arguments"]["text"]
        for m in recorded(path)
        if m.get("method") == "tools/call"
    ]
    assert calls(first) == ["to one"]
    assert calls(second) == ["to two"]


@pytest.mark.anyio
async def test_a_client_cancellation_reaches_the_server(
    relay_config: Any, tmp_path: Path
) -> None:
    """Cancelling a call sends notifications/cancelled with the server's own id."""
    record = tmp_path / "record.jsonl"
    config = relay_config({"echo": echo(record)})
    async with proxy_session(config) as session:
        with anyio.move_on_after(0.5):
            await session.call_tool("echo__wait", {})

        await eventually(
            lambda: any(
                m.get("method") == "notifications/cancelled" for m in recorded(record)
            )
        )

    messages = recorded(record)
    call = next(m for m in messages if m.get("method") == "tools/call")
    cancel = next(m for m in messages if m.get("method") == "notifications/cancelled")
    assert cancel["params"]["requestId"] == call["id"]


@pytest.mark.anyio
async def test_a_dying_server_fails_calls_in_flight_and_spares_the_others(
    relay_config: Any, tmp_path: Path
) -> None:
    """A crash answers the waiting call with an error within a second, announces
    the changed tool list, and the other server keeps answering."""
    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    record = tmp_path / "doomed.jsonl"
    config = relay_config({"doomed": echo(record), "steady": echo()})
    async with proxy_session(config, message_handler=on_message) as session:
        await session.list_tools()
        failed = anyio.Event()
        waiting: list[BaseException] = []

        async def wait_call() -> None:
            try:
                await session.call_tool("doomed__wait", {})
            except MCPError as exc:
                waiting.append(exc)
                failed.set()

        async with anyio.create_task_group() as group:
            group.start_soon(wait_call)
            await eventually(lambda: '"wait"' in record.read_text())
            with pytest.raises(MCPError):
                await session.call_tool("doomed__crash", {})

            with anyio.fail_after(1.0):
                await failed.wait()

        with anyio.fail_after(5):
            await changed.wait()

        steady = await session.call_tool("steady__echo", {"text": "still here"})

    assert "unavailable" in str(waiting[0])
    assert steady.content[0].text == "still here"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_a_crashed_server_is_restarted_and_serves_again(
    relay_config: Any,
) -> None:
    """After a crash the server comes back under the same names, announced by a
    second tools/list_changed (the first one withdrew its tools)."""
    announcements: list[Any] = []
    restarted = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            announcements.append(message)
            if len(announcements) == 2:
                restarted.set()

    config = relay_config({"phoenix": echo()})
    async with proxy_session(config, message_handler=on_message) as session:
        with pytest.raises(MCPError):
            await session.call_tool("phoenix__crash", {})

        with anyio.fail_after(10):
            await restarted.wait()

        result = await session.call_tool("phoenix__echo", {"text": "back"})

    assert result.content[0].text == "back"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_an_unknown_tool_is_an_error_and_the_proxy_keeps_serving(
    relay_config: Any,
) -> None:
    """A call to a tool no server has gets an error naming the tool."""
    config = relay_config({"echo": echo()})
    async with proxy_session(config) as session:
        with pytest.raises(MCPError, match="Unknown tool: nowhere__tool"):
            await session.call_tool("nowhere__tool", {})

        result = await session.call_tool("echo__echo", {"text": "fine"})

    assert result.content[0].text == "fine"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_pipelined_calls_keep_each_servers_order(relay_config: Any) -> None:
    """Calls sent back to back, most relayed where they are read: every answer
    comes after the notifications its server sent before it, and answers come
    in the order the server wrote them."""
    config = relay_config({"echo": echo()})
    calls = 20
    async with raw_proxy(config) as proxy:
        await proxy.send_bytes(
            b"".join(
                json.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": request_id,
                        "method": "tools/call",
                        "params": {
                            "name": "echo__flood" if request_id % 2 else "echo__echo",
                            "arguments": {"count": 3, "text": str(request_id)},
                        },
                    }
                ).encode()
                + b"\n"
                for request_id in range(1, calls + 1)
            )
        )
        seen: list[dict[str, Any]] = []
        while sum("id" in m for m in seen) < calls:
            seen.append(await proxy.receive())

    answers = [m["id"] for m in seen if "id" in m]
    assert answers == list(range(1, calls + 1))
    for position, message in enumerate(seen):
        if message.get("id", 0) % 2:
            # A flood call: its three notifications came just before it.
            notices = seen[position - 3 : position]
            assert [n["method"] for n in notices] == ["notifications/message"] * 3
            assert [n["params"]["data"] for n in notices] == [0, 1, 2]


def _children_running(parent: int, script: Path) -> list[int]:
    """The pids of ``parent``'s children that run ``script``."""
    found: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and (
            str(script).encode() in cmdline
        ):
            found.append(int(entry.name))

    return found


@pytest.mark.anyio
async def test_servers_started_before_the_loop_run_once_and_serve(
    relay_config: Any,
) -> None:
    """Servers start before the proxy's event loop, so that their start overlaps
    the proxy's own: each still runs as one process, the one that answers, and a
    server whose command is missing is reported failed while the others serve."""
    ghost = {"command": "no-such-server-command-anywhere"}
    config = relay_config({"alpha": echo(), "beta": echo(), "ghost": ghost})
    async with raw_proxy(config) as proxy:
        await proxy.send({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        listed = await proxy.receive_response(1)
        call = {"name": "beta__echo", "arguments": {"text": "early"}}
        await proxy.send(
            {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": call}
        )
        answer = await proxy.receive_response(2)
        servers = _children_running(proxy.process.pid, ECHO_SERVER)

    names = {tool["name"] for tool in listed["result"]["tools"]}
    assert {"alpha__echo", "beta__echo"} <= names
    assert not any(name.startswith("ghost__") for name in names)
    assert answer["result"]["content"][0]["text"] == "early"
    assert len(servers) == 2
