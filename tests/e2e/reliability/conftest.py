"""The proxy in front of misbehaving servers: a test policy and a line-level driver.

Servers run on the ``process`` backend, as the relay's own tests do: what is under
test here is the relay's handling of failure, not a sandbox. The policy keeps
deadlines and bounds small so that each failure shows within a second or two.

The driver speaks JSON lines to a proxy process and sends its stderr to a file, so
that a proxy that logs a great deal never blocks on a pipe nobody reads.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from anyio.abc import Process

from tests.conftest import REPO, WriteConfig

HOSTILE_SERVER = REPO / "tests" / "servers" / "hostile_server.py"

CALL_TIMEOUT_S = 1.0
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_RESULT_BYTES = 256 * 1024
RELIABILITY_POLICY = {
    "description": "Reliability tests: no isolation, short deadlines, small bounds.",
    "extends": "strict",
    "isolation": {
        "backend": "process",
        "env": {"pass": ["PATH", "HOME"]},
        "limits": {
            "memory": "unlimited",
            "callTimeout": f"{CALL_TIMEOUT_S:g}s",
            "output": "1MiB",
        },
    },
    "rate": {"perMinute": None},
    "results": {"maxBytes": "256KiB"},
    "serverRequests": {"sampling": True, "elicitation": True, "roots": True},
}
# What a proxy is given to answer initialize, and to stop after its input ends.
START_TIMEOUT_S = 30.0
EXIT_TIMEOUT_S = 15.0

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": "init",
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {"roots": {"listChanged": True}},
        "clientInfo": {"name": "reliability-test", "version": "1"},
    },
}

Message = dict[str, Any]
MakeConfig = Callable[..., Path]


def hostile(
    mode: str = "serve", record: Path | None = None, **extra: Any
) -> dict[str, Any]:
    """A server entry running the hostile server in ``mode``."""
    server: dict[str, Any] = {
        "command": sys.executable,
        "args": [str(HOSTILE_SERVER), mode],
    }
    if record is not None:
        server["env"] = {"HOSTILE_RECORD": str(record)}

    return {**server, **extra}


def recorded(record: Path) -> list[Message]:
    """What the hostile server wrote to its record file, one entry per line."""
    if not record.exists():
        return []

    return [json.loads(line) for line in record.read_text().splitlines() if line]


def starts(record: Path) -> list[int]:
    """The pids of every incarnation of the server, in order of start."""
    return [entry["started"] for entry in recorded(record) if "started" in entry]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

    raise AssertionError(f"process {pid} has no VmRSS")


@pytest.fixture
def reliability_policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "reliability.yaml").write_text(yaml.safe_dump(RELIABILITY_POLICY))
    return folder


@pytest.fixture
def make_config(write_config: WriteConfig, reliability_policies: Path) -> MakeConfig:
    """Write a config whose servers all run under the reliability policy."""

    def make(servers: dict[str, dict[str, Any]], **proxy: Any) -> Path:
        for server in servers.values():
            server.setdefault("policy", "reliability")

        return write_config(servers, policyPaths=[str(reliability_policies)], **proxy)

    return make


class Proxy:
    """A running proxy spoken to in JSON lines; what it says is kept in order."""

    def __init__(self, process: Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.received: list[Message] = []
        self._buffer = b""
        self._ids = iter(range(1, 1 << 62))

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def next_id(self) -> int:
        return next(self._ids)

    async def send_bytes(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send(data)

    async def send(self, message: Message) -> None:
        await self.send_bytes(json.dumps(message).encode() + b"\n")

    async def receive(self, timeout_s: float = 10.0) -> Message:
        """The next message the proxy writes; also kept in ``received``."""
        assert self.process.stdout is not None
        with anyio.fail_after(timeout_s):
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive()
                self._buffer += chunk

        line, self._buffer = self._buffer.split(b"\n", 1)
        message = json.loads(line)
        self.received.append(message)
        return message

    async def wait_for(
        self, check: Callable[[Message], bool], timeout_s: float = 10.0
    ) -> Message:
        """The first message from now on for which ``check`` holds."""
        with anyio.fail_after(timeout_s):
            while True:
                message = await self.receive(timeout_s)
                if check(message):
                    return message

    async def response(self, request_id: Any, timeout_s: float = 10.0) -> Message:
        return await self.wait_for(
            lambda m: "method" not in m and m.get("id") == request_id, timeout_s
        )

    async def request(
        self, method: str, params: Message | None = None, timeout_s: float = 10.0
    ) -> Message:
        """Send a request and return its response."""
        request_id = self.next_id()
        message: Message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params

        await self.send(message)
        return await self.response(request_id, timeout_s)

    async def call(
        self, tool: str, arguments: Message | None = None, timeout_s: float = 10.0
    ) -> Message:
        """Call ``tool`` and return the whole response (result or error)."""
        params = {"name": tool, "arguments": arguments or {}}
        return await self.request("tools/call", params, timeout_s)

    async def start_call(self, tool: str, arguments: Message | None = None) -> int:
        """Send a call without waiting for its answer; returns its id."""
        request_id = self.next_id()
        params = {"name": tool, "arguments": arguments or {}}
        await self.send(
            {
                "jsonrpc": "2.0",
                "id": request_id,
                "method": "tools/call",
                "params": params,
            }
        )
        return request_id

    def responses_to(self, request_id: Any) -> list[Message]:
        """Every response received so far that carries ``request_id``."""
        return [
            m for m in self.received if "method" not in m and m.get("id") == request_id
        ]

    def notifications(self, method: str) -> list[Message]:
        return [m for m in self.received if m.get("method") == method and "id" not in m]


def text_of(response: Message) -> str:
    """The text of the first content block of a call's result."""
    return response["result"]["content"][0]["text"]


def error_of(response: Message) -> Message:
    assert "error" in response, response
    return response["error"]


def proxy_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "mcp_sandbox_proxy", "run", "--config", str(config)]


@asynccontextmanager
async def running_proxy(
    config: Path, *, initialize: bool = True, env: dict[str, str] | None = None
) -> AsyncIterator[Proxy]:
    """A proxy process for ``config``, initialised unless told not to; on the way
    out its input is closed and it is given ``EXIT_TIMEOUT_S`` to stop."""
    stderr_path = config.parent / "proxy-stderr.log"
    with stderr_path.open("ab") as stderr:
        process = await anyio.open_process(
            proxy_command(config), stderr=stderr, env={**os.environ, **(env or {})}
        )

    async with process:
        proxy = Proxy(process, stderr_path)
        try:
            if initialize:
                await proxy.send(INITIALIZE)
                await proxy.response("init", START_TIMEOUT_S)
                await proxy.send(
                    {"jsonrpc": "2.0", "method": "notifications/initialized"}
                )

            yield proxy
        finally:
            await stop_proxy(process)


async def stop_proxy(process: Process) -> None:
    """Close the proxy's input and wait, bounded, for it to exit."""
    if process.stdin is not None:
        await process.stdin.aclose()

    with anyio.move_on_after(EXIT_TIMEOUT_S):
        await process.wait()

    if process.returncode is None:
        process.kill()
        await process.wait()
