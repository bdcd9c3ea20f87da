"""After the proxy stops, nothing of it remains, however it was told to stop.

The proxy runs two servers, one of them stuck in a call (it reads nothing more, so
stopping it takes the escalation to a signal), is told to stop by end of input,
SIGTERM or SIGINT, and must then be gone within a few seconds with every process
it started, every cgroup, container and mount of its sandboxes, every temporary
folder, and an audit log that verifies, records the exit of every sandbox and
ends with its closing record.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from tests.conftest import WriteConfig
from tests.e2e.reliability.conftest import (
    INITIALIZE,
    RELIABILITY_POLICY,
    Proxy,
    hostile,
    proxy_command,
    stop_proxy,
)
from tests.support.waiting import eventually

# "Within a few seconds": each sandbox's stop is bounded (2 s for its input to
# close, 2 s after SIGTERM), and the sandboxes are stopped side by side.
SHUTDOWN_BOUND_S = 8.0
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_FOLDER = "mcp-sandbox-proxy"
PYTHON_IMAGE = "mcp-sandbox-proxy-test/python:latest"

Trigger = Callable[[anyio.abc.Process], Awaitable[None]]


async def close_input(process: anyio.abc.Process) -> None:
    assert process.stdin is not None
    await process.stdin.aclose()


async def send_sigterm(process: anyio.abc.Process) -> None:
    process.send_signal(signal.SIGTERM)


async def send_sigint(process: anyio.abc.Process) -> None:
    process.send_signal(signal.SIGINT)


TRIGGERS = {"eof": close_input, "sigterm": send_sigterm, "sigint": send_sigint}


def process_table() -> dict[int, tuple[int, str, str]]:
    """pid → (parent pid, start time, state) of every process now."""
    table: dict[int, tuple[int, str, str]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue

        fields = text[text.rindex(")") + 2 :].split()
        table[int(stat.parent.name)] = (int(fields[1]), fields[19], fields[0])

    return table


def descendants(root: int) -> dict[int, str]:
    """pid → start time of every process below ``root``."""
    table = process_table()
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, started, _) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = started
                frontier.append(pid)

    return found


def still_running(processes: dict[int, str]) -> list[int]:
    """The processes of ``processes`` that live on (same pid, same start, no zombie)."""
    table = process_table()
    return [
        pid
        for pid, started in processes.items()
        if pid in table and table[pid][1] == started and table[pid][2] != "Z"
    ]


def cgroup_folders(pid: int, sandbox_ids: list[str]) -> list[Path]:
    """The cgroup folders the sandboxes of ``sandbox_ids`` would have, under the
    cgroups of process ``pid``, that exist now."""
    found: list[Path] = []
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        mounts = [CGROUP_ROOT / c for c in controllers.split(",") if c] or [
            CGROUP_ROOT / "unified",
            CGROUP_ROOT,
        ]
        for mount in mounts:
            for sandbox_id in sandbox_ids:
                folder = mount / path.lstrip("/") / CGROUP_FOLDER / sandbox_id
                if folder.is_dir():
                    found.append(folder)

    return found


def mount_lines(*needles: str) -> list[str]:
    """Lines of this namespace's mount table that mention any of ``needles``."""
    table = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line for line in table if any(n in line for n in needles)]


def audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []

    return [json.loads(line) for line in path.read_text().splitlines() if line]


def sandboxes(audit: Path, event: str) -> list[str]:
    return [r["sandbox_id"] for r in audit_records(audit) if r["event"] == event]


def started_sandboxes(audit: Path) -> list[str]:
    return sandboxes(audit, "sandbox_started")


def containers_named(names: list[str]) -> list[str]:
    """Ids of containers, running or not, with one of ``names``."""
    import docker

    client = docker.APIClient(version="auto")
    try:
        return [
            c["Id"]
            for name in names
            for c in client.containers(all=True, filters={"name": name})
        ]
    finally:
        client.close()


def docker_reachable() -> bool:
    import docker

    try:
        client = docker.APIClient(version="auto", timeout=5)
    except docker.errors.DockerException:
        return False

    try:
        client.ping()
        return any(client.images(name=PYTHON_IMAGE))
    except docker.errors.DockerException:
        return False
    finally:
        client.close()


def write_policy(folder: Path, name: str, backend: str) -> str:
    policy = {**RELIABILITY_POLICY, "isolation": dict(RELIABILITY_POLICY["isolation"])}
    policy["isolation"]["backend"] = backend
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(policy))
    return name


def servers_for(backend: str, folder: Path) -> dict[str, dict[str, Any]]:
    """Two servers on ``backend``: one to be stuck in a call, one idle. On the
    docker backend the idle one is a real server in the test image, and the
    stuck one stays a host process (the hostile server is not in the image)."""
    if backend == "docker":
        boxed = {"command": "mcp-server-time", "image": PYTHON_IMAGE}
        return {
            "stuck": {**hostile(), "policy": write_policy(folder, "local", "process")},
            "boxed": {**boxed, "policy": write_policy(folder, "boxed", "docker")},
        }

    policy = write_policy(folder, "shutdown", backend)
    return {name: {**hostile(), "policy": policy} for name in ("stuck", "idle")}


@pytest.fixture(params=["process", "namespace", "docker"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "docker" and not docker_reachable():
        pytest.skip("no Docker engine with the test images is reachable")

    return request.param


@dataclass
class Traces:
    """What a running proxy had made, seen from outside just before it stopped."""

    sandbox_ids: list[str]
    processes: dict[int, str]
    cgroups: list[Path]
    containers: list[str]


async def traces(process: anyio.abc.Process, audit: Path, backend: str) -> Traces:
    await eventually(lambda: len(started_sandboxes(audit)) == 2, 30)
    sandbox_ids = started_sandboxes(audit)
    return Traces(
        sandbox_ids,
        descendants(process.pid),
        cgroup_folders(process.pid, sandbox_ids),
        containers_named(sandbox_ids) if backend == "docker" else [],
    )


async def run_and_stop(
    config: Path, temp: Path, backend: str, trigger: Trigger
) -> tuple[Traces, float]:
    """Start the proxy with one call stuck, note its traces, stop it by
    ``trigger``; returns the traces and the seconds it took to exit."""
    stderr_path = config.parent / "proxy-stderr.log"
    with stderr_path.open("ab") as stderr:
        env = {**os.environ, "TMPDIR": str(temp)}
        process = await anyio.open_process(
            proxy_command(config), stderr=stderr, env=env
        )

    async with process:
        proxy = Proxy(process, stderr_path)
        try:
            await proxy.send(INITIALIZE)
            await proxy.response("init", timeout_s=60)
            await proxy.start_call("stuck__block")
            seen = await traces(process, config.parent / "audit.jsonl", backend)
            stopped_at = time.monotonic()
            await trigger(process)
            with anyio.fail_after(SHUTDOWN_BOUND_S):
                await process.wait()

            return seen, time.monotonic() - stopped_at
        finally:
            await stop_proxy(process)


@pytest.mark.anyio
@pytest.mark.parametrize("how", TRIGGERS)
async def test_nothing_of_the_proxy_remains_after_it_stops(
    write_config: WriteConfig, tmp_path: Path, backend: str, how: str
) -> None:
    """Stopped by end of input, SIGTERM or SIGINT, the proxy exits within a few
    seconds and leaves no process, cgroup, container, mount or temporary folder,
    and an audit log that verifies, records every sandbox's exit and ends with
    ``audit_closed``."""
    policies, temp = tmp_path / "policies", tmp_path / "proxy-tmp"
    policies.mkdir()
    temp.mkdir()
    config = write_config(servers_for(backend, policies), policyPaths=[str(policies)])
    audit = tmp_path / "audit.jsonl"
    mounts_before = set(mount_lines(str(tmp_path)))
    seen, took = await run_and_stop(config, temp, backend, TRIGGERS[how])
    verify = [sys.executable, "-m", "mcp_sandbox_proxy", "audit-log", "verify"]
    verified = await anyio.run_process([*verify, str(audit)], check=False)

    assert took < SHUTDOWN_BOUND_S
    assert seen.processes, "the proxy had started no process to check on"
    assert still_running(seen.processes) == []
    assert [folder for folder in seen.cgroups if folder.exists()] == []
    assert set(mount_lines(str(tmp_path), *seen.sandbox_ids)) <= mounts_before
    assert list(temp.iterdir()) == []
    if backend == "docker":
        assert seen.containers, "the proxy had started no container to check on"
        assert containers_named(seen.sandbox_ids) == []

    assert verified.returncode == 0, (verified.stdout + verified.stderr).decode()
    assert audit_records(audit)[-1]["event"] == "audit_closed"
    assert sorted(sandboxes(audit, "sandbox_exited")) == sorted(seen.sandbox_ids)
