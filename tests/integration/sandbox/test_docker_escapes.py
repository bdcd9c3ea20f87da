"""Escapes from a docker sandbox, each tried from inside and checked on the host.

The escape server (tests/servers/escape_server.py) runs in the python test image,
its folder bound read-only. Under the process backend the same probes succeed
(tests/integration/sandbox/test_namespace_escapes.py shows it), so a refusal here
is the container's doing.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession

from mcp_sandbox_proxy.sandbox._docker_process import DockerProcess
from mcp_sandbox_proxy.sandbox.docker import DockerBackend
from mcp_sandbox_proxy.sandbox.spec import MIB, NOBODY_GID, NOBODY_UID, Limits, Mount
from tests.integration.sandbox.test_docker_engine import (
    REPO,
    SERVERS_IN_CONTAINER,
    docker_backend_fixture,  # noqa: F401
    docker_engine_fixture,  # noqa: F401
    python_spec,
)
from tests.support.sandbox_client import ServerGone, call, sandbox_session

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

NO_CAPABILITIES = "0000000000000000"
ESCAPE_SERVER = SERVERS_IN_CONTAINER / "escape_server.py"


@asynccontextmanager
async def escape_session(
    backend: DockerBackend, *, mounts: tuple[Mount, ...] = (), **changes: Any
) -> AsyncIterator[tuple[ClientSession, DockerProcess]]:
    """The escape server in a container, with a client session to it."""
    servers = Mount(REPO / "tests" / "servers", SERVERS_IN_CONTAINER)
    spec = python_spec(
        "python3",
        str(ESCAPE_SERVER),
        name="escape",
        mounts=(servers, *mounts),
        **changes,
    )
    process = await backend.start(spec)
    async with sandbox_session(process) as session:
        yield session, process


@pytest.fixture
def granted(tmp_path: Path) -> Path:
    """A folder a policy would grant read-write, owned by the sandbox's user."""
    folder = tmp_path / "granted"
    folder.mkdir()
    os.chown(folder, NOBODY_UID, NOBODY_GID)
    return folder


@pytest.fixture
def home_canary() -> Iterator[Path]:
    """A file planted in the home directory of the user running the tests."""
    canary = Path.home() / f".mcp-sandbox-canary-{uuid.uuid4().hex}"
    canary.write_text("canary: the host home is readable")
    yield canary
    canary.unlink()


def rw(folder: Path) -> tuple[Mount, ...]:
    return (Mount(folder, folder, writable=True),)


async def test_the_server_is_nobody_without_capabilities_under_seccomp(
    docker_backend: DockerBackend,
) -> None:
    """uid and gid 65534, no capability in any set, no_new_privs, a filter."""
    async with escape_session(docker_backend) as (session, _):
        seen = await call(session, "identity")

    assert (seen["uid"], seen["gid"]) == (NOBODY_UID, NOBODY_GID)
    assert seen["CapEff"] == seen["CapPrm"] == seen["CapBnd"] == NO_CAPABILITIES
    assert seen["NoNewPrivs"] == "1" and seen["Seccomp"] == "2"


async def test_a_canary_in_the_host_home_cannot_be_read(
    docker_backend: DockerBackend, home_canary: Path
) -> None:
    """A file planted in the host's home is neither readable nor listed."""
    async with escape_session(docker_backend) as (session, _):
        read = await call(session, "read_file", path=str(home_canary))
        listed = await call(session, "list_dir", path=str(home_canary.parent))

    assert read == {"ok": False, "error": "ENOENT"}
    assert home_canary.name not in listed.get("entries", [])


async def test_writes_land_only_in_the_granted_folder(
    docker_backend: DockerBackend, granted: Path, tmp_path: Path
) -> None:
    """In the granted folder a write lands on the host; beside it, none does, and
    the image itself is read-only."""
    outside = tmp_path / "outside.txt"
    async with escape_session(docker_backend, mounts=rw(granted)) as (session, _):
        inside = await call(
            session, "write_file", path=str(granted / "in.txt"), content="ok"
        )
        beside = await call(session, "write_file", path=str(outside), content="x")
        image = await call(session, "write_file", path="/usr/bin/planted", content="x")

    assert inside["ok"] and (granted / "in.txt").read_text() == "ok"
    assert not beside["ok"] and not outside.exists()
    assert image == {"ok": False, "error": "EROFS"}


async def test_programs_written_to_tmp_cannot_run(
    docker_backend: DockerBackend,
) -> None:
    """/tmp takes files but not programs: it is mounted noexec."""
    script = "/tmp/planted.sh"
    async with escape_session(docker_backend) as (session, _):
        written = await call(session, "write_file", path=script, content="#!/bin/sh\n")
        ran = await call(session, "run_program", path=script, args=[])

    assert written["ok"]
    assert ran == {"ok": False, "error": "EACCES"}


async def test_a_secret_in_the_proxy_environment_stays_out_of_reach(
    docker_backend: DockerBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A secret in the proxy's own environment is in neither the server's
    environment nor any /proc/PID/environ the server can read."""
    secret = f"proxy-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("PROXY_API_KEY", secret)

    async with escape_session(docker_backend) as (session, _):
        found = await call(session, "find_in_environments", needle=secret)
        direct = await call(session, "getenv", name="PROXY_API_KEY")

    assert found == {"found_in": []} and direct == {"value": None}


def accepted(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False

    conn.close()
    return True


async def test_a_listener_on_host_loopback_is_unreachable(
    docker_backend: DockerBackend,
) -> None:
    """A TCP listener on the host's 127.0.0.1 sees no connection from the container."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        async with escape_session(docker_backend) as (session, _):
            result = await call(session, "connect_tcp", host="127.0.0.1", port=port)

        reached = accepted(listener)

    assert not result["ok"] and not reached


async def test_an_abstract_unix_socket_on_the_host_is_unreachable(
    docker_backend: DockerBackend,
) -> None:
    """An abstract Unix socket of the host (per network namespace) is out of reach."""
    name = f"mcp-sandbox-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + name)
        listener.listen()
        listener.setblocking(False)
        async with escape_session(docker_backend) as (session, _):
            result = await call(session, "connect_abstract_unix", name=name)

        reached = accepted(listener)

    assert result == {"ok": False, "error": "ECONNREFUSED"} and not reached


async def test_host_processes_are_invisible_and_cannot_be_signalled(
    docker_backend: DockerBackend,
) -> None:
    """Only the container's own processes are in its /proc; a signal to the
    proxy's pid reaches nothing."""
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _: received.append(signum))
    try:
        async with escape_session(docker_backend) as (session, _):
            seen = await call(session, "list_processes")
            sent = await call(
                session, "kill_pid", pid=os.getpid(), signum=int(signal.SIGUSR1)
            )
    finally:
        signal.signal(signal.SIGUSR1, previous)

    assert "docker-init" in seen["cmdlines"]["1"]
    assert all("pytest" not in line for line in seen["cmdlines"].values())
    assert len(seen["pids"]) <= 3
    assert not sent["ok"] and not received


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A host process of the test's user, waiting on its stdin."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield process
    process.kill()
    process.wait(timeout=10)


def tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])

    raise AssertionError(f"no TracerPid in /proc/{pid}/status")


async def test_host_processes_cannot_be_traced(
    docker_backend: DockerBackend, victim: subprocess.Popen[bytes]
) -> None:
    """ptrace on a host process is refused, and the host sees no tracer on it."""
    async with escape_session(docker_backend) as (session, _):
        result = await call(session, "ptrace_attach", pid=victim.pid)
        tracer = tracer_of(victim.pid)

    assert result == {"ok": False, "error": "EPERM"} and tracer == 0


async def test_mounting_is_refused(docker_backend: DockerBackend) -> None:
    """A tmpfs mount from inside fails: no capability, and seccomp refuses it."""
    async with escape_session(docker_backend) as (session, _):
        result = await call(session, "mount_tmpfs", target="/tmp")

    assert result == {"ok": False, "error": "EPERM"}


async def test_new_user_namespaces_are_refused(docker_backend: DockerBackend) -> None:
    """unshare(CLONE_NEWUSER) fails, so no namespace root can be had inside."""
    async with escape_session(docker_backend) as (session, _):
        result = await call(session, "unshare_userns")

    assert result == {"ok": False, "error": "EPERM"}


@pytest.fixture
def setuid_touch(granted: Path) -> Path:
    """A root-owned setuid copy of ``touch`` in the granted folder."""
    program = granted / "suid-touch"
    touch = shutil.which("touch")
    assert touch is not None
    shutil.copy(touch, program)
    os.chown(program, 0, 0)
    program.chmod(0o4755)
    return program


async def test_a_setuid_root_binary_gives_no_root(
    docker_backend: DockerBackend, granted: Path, setuid_touch: Path
) -> None:
    """A file made by a setuid-root program inside belongs to nobody, not root."""
    made = granted / "made-by-setuid"
    async with escape_session(docker_backend, mounts=rw(granted)) as (session, _):
        result = await call(
            session, "run_program", path=str(setuid_touch), args=[str(made)]
        )

    assert result["ok"], result
    assert made.stat().st_uid == NOBODY_UID


async def test_exhausting_memory_kills_only_the_server(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """Touching more than the memory limit ends the server by the OOM killer;
    the engine records it, and the proxy side goes on."""
    limits = Limits(memory_bytes=128 * MIB)
    async with escape_session(docker_backend, limits=limits) as (session, process):
        with pytest.raises(ServerGone):
            await call(session, "allocate_memory", mib=512)

        state = docker_engine.inspect_container(process.container_id)["State"]
        status = await process.wait()

    assert state["OOMKilled"] is True
    assert status == 128 + signal.SIGKILL


async def test_exhausting_processes_stops_at_the_pids_limit(
    docker_backend: DockerBackend,
) -> None:
    """A fork bomb gets no further than the pids limit, and the server lives on."""
    limits = Limits(pids=32)
    async with escape_session(docker_backend, limits=limits) as (session, _):
        bomb = await call(session, "fork_many", count=200)
        after = await call(session, "identity")

    assert bomb["started"] < 32
    assert bomb["error"] == errno.errorcode[errno.EAGAIN]
    assert after["uid"] == NOBODY_UID
