"""Drive a sandboxed server with the official MCP SDK client.

``sandbox_session`` bridges a backend's ``SandboxProcess`` (raw byte streams) to
the SDK's ``ClientSession`` (streams of ``SessionMessage``), newline-delimited JSON
as the stdio transport speaks it, and stops the sandbox on the way out.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
from anyio.abc import ObjectReceiveStream, ObjectSendStream
from mcp.client.session import ClientSession
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.jsonrpc import CONNECTION_CLOSED

from mcp_sandbox_proxy.sandbox.backend import Backend, SandboxProcess
from mcp_sandbox_proxy.sandbox.namespace import NamespaceBackend
from mcp_sandbox_proxy.sandbox.process import ProcessBackend
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

# A sandboxed server that has not answered initialize by then never will.
INITIALIZE_TIMEOUT_S = 30.0
# Every probe tool answers well within this.
CALL_TIMEOUT_S = 30.0


class ServerGone(Exception):
    """The server closed its stdout: it exited or was killed."""


async def _pump_stdout(
    process: SandboxProcess, sink: ObjectSendStream[SessionMessage | Exception]
) -> None:
    buffer = b""
    async with sink:
        while chunk := await process.receive():
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in filter(None, lines):
                message = types.jsonrpc_message_adapter.validate_json(line)
                await sink.send(SessionMessage(message))


async def _pump_stdin(
    process: SandboxProcess, source: ObjectReceiveStream[SessionMessage]
) -> None:
    async with source:
        async for item in source:
            text = item.message.model_dump_json(by_alias=True, exclude_unset=True)
            try:
                await process.send(text.encode() + b"\n")
            except OSError:
                return


async def _drain_stderr(process: SandboxProcess, log: list[bytes]) -> None:
    while chunk := await process.receive_stderr():
        log.append(chunk)


@asynccontextmanager
async def sandbox_session(
    process: SandboxProcess, stderr: list[bytes] | None = None
) -> AsyncGenerator[ClientSession, None]:
    """An initialised client session with ``process``; stops it when done."""
    to_client, from_server = anyio.create_memory_object_stream[
        SessionMessage | Exception
    ](16)
    to_server, from_client = anyio.create_memory_object_stream[SessionMessage](16)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_pump_stdout, process, to_client)
            tasks.start_soon(_pump_stdin, process, from_client)
            tasks.start_soon(
                _drain_stderr, process, stderr if stderr is not None else []
            )
            async with ClientSession(from_server, to_server) as session:
                with anyio.fail_after(INITIALIZE_TIMEOUT_S):
                    await session.initialize()

                yield session

            tasks.cancel_scope.cancel()
    finally:
        await process.stop()
        process.close()


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call ``tool`` and return its structured result; ``ServerGone`` if it died."""
    with anyio.fail_after(CALL_TIMEOUT_S):
        try:
            result = await session.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.error.code == CONNECTION_CLOSED:
                raise ServerGone(tool) from exc

            raise

    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise AssertionError(f"tool {tool} failed: {text}")

    if result.structured_content is not None:
        return dict(result.structured_content)

    return json.loads(getattr(result.content[0], "text", "{}"))


ESCAPE_SERVER = Path(__file__).resolve().parents[1] / "servers" / "escape_server.py"


def make_backend(name: str) -> Backend:
    """A fresh backend by name: ``namespace`` or ``process``."""
    backends: dict[str, type[Backend]] = {
        "namespace": NamespaceBackend,
        "process": ProcessBackend,
    }
    return backends[name]()


def escape_spec(**changes: Any) -> SandboxSpec:
    """The escape server, run by this interpreter (whose environment has ``mcp``)."""
    spec = SandboxSpec(
        name="escape",
        command=sys.executable,
        args=(str(ESCAPE_SERVER),),
        env={"PATH": os.environ.get("PATH", os.defpath)},
    )
    return replace(spec, **changes)


@asynccontextmanager
async def escape_session(
    backend: str, **changes: Any
) -> AsyncGenerator[tuple[ClientSession, SandboxProcess], None]:
    """The escape server started by ``backend``, with a client session to it."""
    process = await make_backend(backend).start(escape_spec(**changes))
    async with sandbox_session(process) as session:
        yield session, process
