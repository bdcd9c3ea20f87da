"""What the namespace sandbox costs: the same echo server plain and in bubblewrap.

Prints spawn-to-first-response (ms) through the ``process`` backend (plain) and
the ``namespace`` backend, the per-call round trip p50/p99 (us) with one call in
flight, and the host-side RSS of bubblewrap's own processes per sandbox, each
against its target: at most 15 ms added at start, 10 us added per call at p50,
5 MiB of host memory per sandbox.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import anyio
from _harness import ECHO_SERVER, INITIALIZE, p50, percentile, rss_kib

from mcp_sandbox_proxy.sandbox._pipes import PipedProcess
from mcp_sandbox_proxy.sandbox.backend import Backend, SandboxProcess
from mcp_sandbox_proxy.sandbox.namespace import NamespaceBackend
from mcp_sandbox_proxy.sandbox.process import ProcessBackend
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

STARTS = 20
CALLS = 4000
ROUNDS = 20
WARM_CALLS = 300
TARGET_ADDED_START_MS = 15.0
TARGET_ADDED_P50_US = 10.0
TARGET_RSS_MIB = 5.0

SPEC = SandboxSpec(
    name="echo",
    command=sys.executable,
    args=(str(ECHO_SERVER),),
    env={"PATH": os.environ.get("PATH", os.defpath)},
)


class Lines:
    """Newline-delimited JSON over a sandbox's byte streams."""

    def __init__(self, process: SandboxProcess) -> None:
        self.process = process
        self.buffer = b""

    async def request(self, message: dict[str, Any]) -> dict[str, Any]:
        await self.process.send(json.dumps(message).encode() + b"\n")
        while b"\n" not in self.buffer:
            chunk = await self.process.receive()
            if not chunk:
                raise EOFError("the server closed its output")

            self.buffer += chunk

        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


async def first_response_ms(backend: Backend) -> tuple[float, SandboxProcess]:
    started = time.perf_counter()
    process = await backend.start(SPEC)
    await Lines(process).request(INITIALIZE)
    return (time.perf_counter() - started) * 1e3, process


async def call_latencies_us(process: SandboxProcess, count: int) -> list[float]:
    lines, times = Lines(process), list[float]()
    for index in range(count):
        message = {
            "jsonrpc": "2.0",
            "id": index + 1,
            "method": "tools/call",
            "params": {"name": "echo", "arguments": {"text": "ping"}},
        }
        started = time.perf_counter()
        await lines.request(message)
        times.append((time.perf_counter() - started) * 1e6)

    return times


def bwrap_rss_kib(process: PipedProcess) -> int:
    """bubblewrap's monitor and the sandbox's init: the host's cost past the server."""
    monitor = process.pid
    children = Path(f"/proc/{monitor}/task/{monitor}/children").read_text().split()
    return rss_kib(monitor) + sum(rss_kib(int(pid)) for pid in children)


async def start_times_ms(
    plain: Backend, boxed: Backend
) -> tuple[list[float], list[float]]:
    """Spawn-to-first-response of each backend, alternating so load hits both."""
    times: dict[str, list[float]] = {plain.name: [], boxed.name: []}
    for _ in range(STARTS):
        for backend in (plain, boxed):
            elapsed, process = await first_response_ms(backend)
            times[backend.name].append(elapsed)
            await process.stop()
            process.close()

    return times[plain.name], times[boxed.name]


async def call_times_us(
    plain: SandboxProcess, boxed: SandboxProcess
) -> tuple[list[float], list[float], list[float]]:
    """Round trips of both, in alternating rounds; also each round's p50 gap."""
    plain_all: list[float] = []
    boxed_all: list[float] = []
    gaps: list[float] = []
    for process in (plain, boxed):
        await call_latencies_us(process, WARM_CALLS)

    for _ in range(ROUNDS):
        plain_round = await call_latencies_us(plain, CALLS // ROUNDS)
        boxed_round = await call_latencies_us(boxed, CALLS // ROUNDS)
        plain_all += plain_round
        boxed_all += boxed_round
        gaps.append(p50(boxed_round) - p50(plain_round))

    return plain_all, boxed_all, gaps


def verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "OVER TARGET"


def row(label: str, plain: float, boxed: float) -> str:
    added, ratio = boxed - plain, boxed / plain
    return f"{label:28}{plain:10.1f}{boxed:12.1f}{added:10.1f}{ratio:8.2f}"


async def main() -> None:
    plain, boxed = ProcessBackend(), NamespaceBackend()
    plain_starts, boxed_starts = await start_times_ms(plain, boxed)
    _, plain_process = await first_response_ms(plain)
    _, boxed_process = await first_response_ms(boxed)
    plain_calls, boxed_calls, gaps = await call_times_us(plain_process, boxed_process)
    assert isinstance(boxed_process, PipedProcess)
    rss_mib = bwrap_rss_kib(boxed_process) / 1024
    for process in (plain_process, boxed_process):
        await process.stop()
        process.close()

    added_start = p50(boxed_starts) - p50(plain_starts)
    added_p50 = p50(gaps)
    print(f"{'':28}{'plain':>10}{'namespace':>12}{'added':>10}{'ratio':>8}")
    print(row("spawn to first response ms", p50(plain_starts), p50(boxed_starts)))
    print(row("call p50 us", p50(plain_calls), p50(boxed_calls)))
    print(
        row("call p99 us", percentile(plain_calls, 0.99), percentile(boxed_calls, 0.99))
    )
    print(f"{'bwrap host RSS per sandbox':28}{'':10}{rss_mib:11.2f}M")
    print()
    print(
        f"added start {added_start:.1f} ms (target {TARGET_ADDED_START_MS} ms):"
        f" {verdict(added_start, TARGET_ADDED_START_MS)}"
    )
    print(
        f"added p50 {added_p50:.1f} us, median of {ROUNDS} alternating rounds"
        f" (target {TARGET_ADDED_P50_US} us): {verdict(added_p50, TARGET_ADDED_P50_US)}"
    )
    print(
        f"host RSS {rss_mib:.2f} MiB (target {TARGET_RSS_MIB} MiB):"
        f" {verdict(rss_mib, TARGET_RSS_MIB)}"
    )


if __name__ == "__main__":
    anyio.run(main)
