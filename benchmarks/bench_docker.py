"""Docker backend cost: one server as a plain process, through the docker backend,
and under plain ``docker run -i``, measured in one run.

Two servers, each run all three ways: the repository's lean echo server (stdlib
only, so the figures are the transport's own cost) on the python that the test
image copies, and mcp-server-time (the test cache's install on the host, the
image's inside containers), a real server on the SDK. Start is the time from asking
for the server to its answer to ``initialize`` (median of STARTS); per call is the
p50 round trip of a tool call with one in flight. The variants are measured in
turns, so that load or frequency changes of the machine touch them alike.

The docker backend's targets, against the plain process: at most 350 ms added to
start, at most 300 us added per call at p50. Needs the engine and the test images
(scripts/docker-up.sh, then scripts/build-test-images.sh).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import structlog
from anyio.abc import TaskGroup

from mcp_sandbox_proxy.sandbox.backend import Backend, SandboxProcess
from mcp_sandbox_proxy.sandbox.docker import DockerBackend
from mcp_sandbox_proxy.sandbox.process import ProcessBackend
from mcp_sandbox_proxy.sandbox.spec import Mount, SandboxSpec

START_TARGET_MS = 350.0
CALL_TARGET_US = 300.0
STARTS = 5
CALLS = 3000
# Calls are taken in this many turns per variant, so slow drifts of the machine
# (other load, frequency) touch every variant alike.
ROUNDS = 10
WARMUP_CALLS = 200
# A server that has not answered by then is broken, not slow.
ANSWER_TIMEOUT_S = 60.0

IMAGE = "mcp-sandbox-proxy-test/python:latest"
TIME_ARGS = ("--local-timezone", "UTC")
REPO = Path(__file__).resolve().parents[1]
CACHE = Path(
    os.environ.get(
        "MCP_SANDBOX_PROXY_TEST_CACHE",
        Path.home() / ".cache" / "mcp-sandbox-proxy-tests",
    )
)
INITIALIZE = {
    "protocolVersion": "2025-06-18",
    "capabilities": {},
    "clientInfo": {"name": "bench-docker", "version": "1"},
}


class LineSession:
    """JSON-RPC in newline-delimited JSON over a ``SandboxProcess``."""

    def __init__(self, process: SandboxProcess) -> None:
        self.process = process
        self._buffer = b""
        self._next_id = 1

    async def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        request_id = self._next_id
        self._next_id += 1
        message = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params

        await self.process.send(json.dumps(message).encode() + b"\n")
        while True:
            answer = await self._next_message()
            if answer.get("id") == request_id:
                return answer

    async def notify(self, method: str) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        await self.process.send(json.dumps(message).encode() + b"\n")

    async def _next_message(self) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            chunk = await self.process.receive()
            if not chunk:
                raise EOFError("the server closed its stdout")

            self._buffer += chunk

        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)


Variant = tuple[str, Callable[[], Backend], SandboxSpec]
Figures = dict[str, dict[str, float]]
SERVERS_IN_CONTAINER = "/srv/test-servers"


def echo_variants() -> list[Variant]:
    """The lean echo server: the figures are the transport's own cost."""
    host_python = "/usr/bin/python3.11"  # the interpreter the image copies
    script = "echo_server.py"
    servers = REPO / "tests" / "servers"
    return _variants(
        plain=SandboxSpec(
            name="echo",
            command=host_python,
            args=(str(servers / script),),
            env={"PATH": os.defpath},
        ),
        image_command=("python3", f"{SERVERS_IN_CONTAINER}/{script}"),
        mounts=(Mount(servers, Path(SERVERS_IN_CONTAINER)),),
    )


def time_variants() -> list[Variant]:
    """mcp-server-time, a real server on the SDK: what a user would see."""
    host_server = CACHE / "venvs" / "mcp-server-time" / "bin" / "mcp-server-time"
    if not host_server.exists():
        raise SystemExit(f"{host_server} is missing: run scripts/setup.sh")

    return _variants(
        plain=SandboxSpec(
            name="time",
            command=str(host_server),
            args=TIME_ARGS,
            env={"PATH": os.defpath},
        ),
        image_command=("mcp-server-time", *TIME_ARGS),
        mounts=(),
    )


def _variants(
    *, plain: SandboxSpec, image_command: tuple[str, ...], mounts: tuple[Mount, ...]
) -> list[Variant]:
    in_image = SandboxSpec(
        name=plain.name,
        command=image_command[0],
        args=image_command[1:],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        image=IMAGE,
        mounts=mounts,
    )
    volumes = [f"--volume={m.host_path}:{m.sandbox_path}:ro" for m in mounts]
    docker_run = SandboxSpec(
        name=plain.name,
        command="docker",
        args=("run", "-i", "--rm", "--network=none", *volumes, IMAGE, *image_command),
        env={k: v for k, v in os.environ.items() if k in ("PATH", "DOCKER_HOST")},
    )
    return [
        ("plain process", ProcessBackend, plain),
        ("docker backend", DockerBackend, in_image),
        ("docker run -i", ProcessBackend, docker_run),
    ]


async def drain(process: SandboxProcess) -> None:
    while await process.receive_stderr():
        pass


class Running:
    """One variant's server, started and initialised, its stderr drained."""

    def __init__(self, backend: Backend, process: SandboxProcess) -> None:
        self.backend = backend
        self.session = LineSession(process)

    @classmethod
    async def start(
        cls, group: TaskGroup, make_backend: Callable[[], Backend], spec: SandboxSpec
    ) -> tuple[Running, float]:
        """Start and initialise; also return the time that took, in ms."""
        backend = make_backend()
        started = time.perf_counter()
        process = await backend.start(spec)
        group.start_soon(drain, process)
        running = cls(backend, process)
        with anyio.fail_after(ANSWER_TIMEOUT_S):
            await running.session.request("initialize", INITIALIZE)

        start_ms = (time.perf_counter() - started) * 1000
        await running.session.notify("notifications/initialized")
        return running, start_ms

    async def stop(self) -> None:
        await self.session.process.stop()
        self.session.process.close()
        await self.backend.aclose()


async def round_trips_us(session: LineSession, call: Any, count: int) -> list[float]:
    times: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        await session.request("tools/call", call)
        times.append((time.perf_counter() - started) * 1e6)

    return times


async def measure(variants: list[Variant], call: dict[str, Any]) -> Figures:
    """Start times, then call round trips, taken in turns across the variants so
    that each sees the same machine: median start, and p50 of ``call``."""
    starts: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    calls: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    async with anyio.create_task_group() as group:
        for _ in range(STARTS):
            for name, make_backend, spec in variants:
                running, start_ms = await Running.start(group, make_backend, spec)
                starts[name].append(start_ms)
                await running.stop()

        servers = {
            name: (await Running.start(group, make_backend, spec))[0]
            for name, make_backend, spec in variants
        }
        for running in servers.values():
            await round_trips_us(running.session, call, WARMUP_CALLS)

        for _ in range(ROUNDS):
            for name, running in servers.items():
                calls[name] += await round_trips_us(
                    running.session, call, CALLS // ROUNDS
                )

        for running in servers.values():
            await running.stop()

        group.cancel_scope.cancel()

    return {
        name: {
            "start_ms": statistics.median(starts[name]),
            "call_us": statistics.median(calls[name]),
        }
        for name in starts
    }


def report(server: str, results: Figures) -> None:
    base, ours = results["plain process"], results["docker backend"]
    print(f"\n{server}")
    header = "".join(f"{name:>16}" for name in results)
    print(f"{'measure':<20}{header}{'added':>12}{'target':>10}")
    for key, label, target in (
        ("start_ms", "start (ms)", START_TARGET_MS),
        ("call_us", "call p50 (us)", CALL_TARGET_US),
    ):
        added = ours[key] - base[key]
        verdict = "ok" if added <= target else "OVER"
        row = "".join(f"{figures[key]:>16.1f}" for figures in results.values())
        print(f"{label:<20}{row}{added:>12.1f}{target:>8.0f} {verdict}")


async def main() -> None:
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR)
    )
    echo_call = {"name": "echo", "arguments": {"text": "ping"}}
    time_call = {"name": "get_current_time", "arguments": {"timezone": "UTC"}}
    for server, variants, call in (
        ("echo server (tests/servers/echo_server.py)", echo_variants(), echo_call),
        ("mcp-server-time", time_variants(), time_call),
    ):
        report(server, await measure(variants, call))


if __name__ == "__main__":
    anyio.run(main)
