"""Resource exhaustion from inside a namespace sandbox: the sandbox pays, not the host.

Like the escape tests, each runs under ``process`` too, where the same demand
succeeds: the probes really ask for more than the sandbox's limits allow.
"""

from __future__ import annotations

import time

import anyio
import pytest

from mcp_sandbox_proxy.sandbox.namespace import SandboxedProcess
from mcp_sandbox_proxy.sandbox.spec import MIB, Limits
from tests.support.sandbox_client import ServerGone, call, escape_session

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio]

BACKENDS = ["namespace", "process"]
# Enough for the Python server and its SDK, far less than the probe asks for.
MEMORY_LIMIT_BYTES = 128 * MIB
ASKED_MIB = 512
PIDS_LIMIT = 16
FORKS_ASKED = 64
CPU_QUOTA_CORES = 0.25
SPIN_S = 2.0


@pytest.mark.parametrize("backend", BACKENDS)
async def test_exhausting_memory_kills_only_the_server(backend: str) -> None:
    """Allocating past the memory limit kills the server; the proxy carries on."""
    limits = Limits(memory_bytes=MEMORY_LIMIT_BYTES)
    async with escape_session(backend, limits=limits) as (session, process):
        try:
            result = await call(session, "allocate_memory", mib=ASKED_MIB)
        except ServerGone:
            result = None

        with anyio.fail_after(10):
            status = await process.wait() if result is None else None

    if backend == "process":
        assert result == {"ok": True, "allocated_mib": ASKED_MIB}
        return

    assert result is None and status != 0
    assert isinstance(process, SandboxedProcess) and process.cgroup is not None
    assert process.cgroup.oom_kills and process.cgroup.oom_kills >= 1
    peak = process.resource_usage().peak_memory_bytes
    assert peak is not None and peak <= MEMORY_LIMIT_BYTES
    await _a_new_sandbox_answers()


async def _a_new_sandbox_answers() -> None:
    async with escape_session("namespace") as (session, _):
        assert (await call(session, "identity"))["hostname"] == "sandbox"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_fork_storm_stops_at_the_pids_limit(backend: str) -> None:
    """Forking past the pids limit fails inside; the server itself keeps answering."""
    limits = Limits(pids=PIDS_LIMIT)
    async with escape_session(backend, limits=limits) as (session, _):
        result = await call(session, "fork_many", count=FORKS_ASKED)
        still_there = await call(session, "identity")

    assert still_there["pid"] > 0
    if backend == "process":
        assert result == {"started": FORKS_ASKED, "error": None}
    else:
        assert result["started"] < PIDS_LIMIT and result["error"] == "EAGAIN"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_cpu_time_is_held_to_the_quota(backend: str) -> None:
    """A busy loop gets about a quarter core under a quota of 0.25 cores."""
    limits = Limits(cpu_cores=CPU_QUOTA_CORES)
    async with escape_session(backend, limits=limits) as (session, _):
        result = await call(session, "spin", seconds=SPIN_S)

    # Margins wide enough for a busy machine: the quota allows 0.5 s of the 2 s.
    if backend == "process":
        assert result["cpu_s"] > 0.9
    else:
        assert result["cpu_s"] < 0.7


@pytest.mark.parametrize("backend", BACKENDS)
async def test_tmp_is_bounded(backend: str) -> None:
    """Filling /tmp stops at the tmpfs size inside; outside it does not."""
    limits = Limits(tmpfs_bytes=4 * MIB)
    async with escape_session(backend, limits=limits) as (session, _):
        path = f"/tmp/mcp-sandbox-fill-{time.monotonic_ns()}"
        result = await call(session, "write_file", path=path, content="x" * 8 * MIB)
        if backend == "process":
            await call(session, "run_program", path="/bin/rm", args=["-f", path])

    assert result["ok"] == (backend == "process")
    if backend == "namespace":
        assert result["error"] == "ENOSPC"
