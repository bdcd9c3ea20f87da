"""Talk to the proxy byte by byte, for input no well-behaved client would send."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import Process

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "raw-test-client", "version": "1"},
    },
}


class RawProxy:
    """A running proxy with line-level access to its stdin and stdout."""

    def __init__(self, process: Process) -> None:
        self.process = process
        self._buffer = b""

    async def send_bytes(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(data)

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_bytes(json.dumps(message).encode() + b"\n")

    async def receive(self, timeout_s: float = 10.0) -> dict[str, Any]:
        assert self.process.stdout is not None
        with anyio.fail_after(timeout_s):
            while b"\n" not in self._buffer:
                self._buffer += await self.process.stdout.receive()

        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    async def receive_response(
        self, request_id: Any, timeout_s: float = 10.0
    ) -> dict[str, Any]:
        """The response to ``request_id``, skipping notifications on the way."""
        while True:
            message = await self.receive(timeout_s)
            if "method" not in message and message.get("id") == request_id:
                return message


@asynccontextmanager
async def raw_proxy(
    config: Path, *, initialize: bool = True
) -> AsyncIterator[RawProxy]:
    command = [
        sys.executable,
        "-m",
        "mcp_sandbox_proxy",
        "run",
        "--config",
        str(config),
    ]
    async with await anyio.open_process(command, env=dict(os.environ)) as process:
        proxy = RawProxy(process)
        if initialize:
            await proxy.send(INITIALIZE)
            await proxy.receive_response(0, timeout_s=60)
            await proxy.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

        try:
            yield proxy
        finally:
            if process.stdin is not None:
                await process.stdin.aclose()

            with anyio.move_on_after(15):
                await process.wait()

            if process.returncode is None:
                process.kill()
