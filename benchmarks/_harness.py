"""Shared pieces of the benchmarks: a lean JSON-RPC client and timing statistics.

The client is deliberately minimal (blocking pipes, no SDK) so that the figures
measure the proxy, not the client.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ECHO_SERVER = REPO / "tests" / "servers" / "echo_server.py"

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 0,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "benchmark", "version": "1"},
    },
}


class LineClient:
    """A child process spoken to in JSON lines over blocking pipes."""

    def __init__(self, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env or dict(os.environ),
        )
        self._next_id = 1

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise EOFError("the process closed its output")

            message = json.loads(line)
            if "method" not in message:
                return message

    def initialize(self) -> float:
        """Send initialize; return seconds from spawn to its answer."""
        self.send(INITIALIZE)
        self.receive()
        elapsed = time.perf_counter() - self.started
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return elapsed

    def list_tools(self) -> list[str]:
        """The names of the tools offered, as a client asks before calling any."""
        request_id = self._next_id
        self._next_id += 1
        self.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"})
        return [tool["name"] for tool in self.receive()["result"]["tools"]]

    def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
        request_id = self._next_id
        self._next_id += 1
        return {
            "jsonrpc": "2.0",
            "id": request_id,
            "method": "tools/call",
            "params": {"name": tool, "arguments": arguments},
        }

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def latencies_us(
    client: LineClient, tool: str, args: dict[str, Any], count: int
) -> list[float]:
    """Round-trip times of ``count`` calls made one after another."""
    times: list[float] = []
    for _ in range(count):
        message = client.call(tool, args)
        start = time.perf_counter()
        client.send(message)
        client.receive()
        times.append((time.perf_counter() - start) * 1e6)

    return times


def throughput(
    client: LineClient, tool: str, args: dict[str, Any], count: int, window: int
) -> float:
    """Calls per second with ``window`` requests kept in flight."""
    start = time.perf_counter()
    for _ in range(window):
        client.send(client.call(tool, args))

    for sent in range(window, count + window):
        client.receive()
        if sent < count:
            client.send(client.call(tool, args))

    return count / (time.perf_counter() - start)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def p50(values: list[float]) -> float:
    return statistics.median(values)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

    return 0


def proxy_config(
    servers: dict[str, Any],
    *,
    audit: str = "off",
    backend: str = "process",
    poll_us: int | None = None,
) -> Path:
    """A temporary proxy configuration with a permissive policy on ``backend``;
    ``poll_us`` sets ``proxy.pollMicroseconds`` (the default when ``None``).
    The folder goes when the benchmark exits, its proxies stopped by then."""
    folder = Path(tempfile.mkdtemp(prefix="msp-bench-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "policies").mkdir()
    policy = {
        "extends": "strict",
        "isolation": {"backend": backend, "limits": {"memory": "unlimited"}},
        "rate": {"perMinute": None},
        "results": {"maxBytes": "1MiB"},
    }
    (folder / "policies" / "bench.yaml").write_text(yaml.safe_dump(policy))
    for server in servers.values():
        server.setdefault("policy", "bench")

    config = {
        "mcpServers": servers,
        "proxy": {
            "policyPaths": [str(folder / "policies")],
            "pinFile": str(folder / "pins.json"),
            "audit": {"path": str(folder / "audit.jsonl"), "durability": audit},
        },
    }
    if poll_us is not None:
        config["proxy"]["pollMicroseconds"] = poll_us

    path = folder / "proxy.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def proxy_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "mcp_sandbox_proxy", "run", "--config", str(config)]


def echo_argv() -> list[str]:
    return [sys.executable, str(ECHO_SERVER)]


def bare_relay_argv() -> list[str]:
    """The echo server behind the bare relay, the yardstick of any relay."""
    return [
        sys.executable,
        str(Path(__file__).with_name("_bare_relay.py")),
        *echo_argv(),
    ]
