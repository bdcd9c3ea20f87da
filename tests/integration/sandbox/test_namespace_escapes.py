"""Escapes from the namespace sandbox, each tried from inside and checked on the host.

Every test runs under the ``namespace`` backend, where the escape must fail, and
under the ``process`` backend, where it must succeed: that shows the probe is
real, so a pass under ``namespace`` means the sandbox stopped it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_sandbox_proxy.sandbox.spec import NOBODY_GID, NOBODY_UID, Mount
from tests.support.sandbox_client import call, escape_session

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[3]
CANARY_TEXT = "canary: the host home is readable"
HOST_USERNS_INODE = Path("/proc/self/ns/user").stat().st_ino
BACKENDS = ["namespace", "process"]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="only root can plant this escape, or make it succeed"
)
BACKENDS_AS_ROOT = ["namespace", pytest.param("process", marks=needs_root)]


@pytest.fixture
def home_canary() -> Iterator[Path]:
    """A file planted in the home directory of the user running the tests."""
    canary = Path.home() / f".mcp-sandbox-canary-{uuid.uuid4().hex}"
    canary.write_text(CANARY_TEXT)
    yield canary
    canary.unlink()


@pytest.fixture
def granted(tmp_path: Path) -> Path:
    """A folder a policy would grant read-write, writable by the sandbox's uid."""
    folder = tmp_path / "granted"
    folder.mkdir()
    if os.geteuid() == 0:
        os.chown(folder, NOBODY_UID, NOBODY_GID)

    return folder


def rw(folder: Path) -> tuple[Mount, ...]:
    return (Mount(folder, folder, writable=True),)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_canary_in_the_host_home_cannot_be_read(
    backend: str, home_canary: Path
) -> None:
    """A file planted in the host's home is neither readable nor listed."""
    async with escape_session(backend) as (session, _):
        read = await call(session, "read_file", path=str(home_canary))
        listed = await call(session, "list_dir", path=str(home_canary.parent))

    if backend == "process":
        assert read["content"] == CANARY_TEXT
        assert home_canary.name in listed["entries"]
    else:
        assert read == {"ok": False, "error": "ENOENT"}
        assert home_canary.name not in listed.get("entries", [])


@pytest.mark.parametrize("backend", BACKENDS)
async def test_writes_land_only_in_the_granted_folder(
    backend: str, granted: Path, tmp_path: Path
) -> None:
    """Inside the granted folder a write lands on the host; beside it, none does."""
    outside = tmp_path / "outside.txt"
    async with escape_session(backend, mounts=rw(granted)) as (session, _):
        inside = await call(
            session, "write_file", path=str(granted / "in.txt"), content="ok"
        )
        escaped = await call(session, "write_file", path=str(outside), content="x")

    assert inside["ok"] and (granted / "in.txt").read_text() == "ok"
    # In the sandbox the write may land in its own /tmp; the host is the judge.
    assert outside.exists() == (backend == "process")
    if backend == "process":
        assert escaped["ok"]


PROXY_STAND_IN = """
import anyio, json, sys
from tests.support.sandbox_client import call, escape_session

async def main():
    async with escape_session(sys.argv[1]) as (session, _):
        found = await call(session, "find_in_environments", needle=sys.argv[2])
        print(json.dumps(found))

anyio.run(main)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_secret_in_the_proxy_environment_stays_out_of_reach(backend: str) -> None:
    """A secret in the proxy's own environment is found neither in the server's
    environment nor in any /proc/PID/environ the server can read."""
    secret = f"proxy-secret-{uuid.uuid4().hex}"
    env = {**os.environ, "PROXY_API_KEY": secret, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", PROXY_STAND_IN, backend, secret],
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    )
    found = json.loads(done.stdout.splitlines()[-1])["found_in"]

    if backend == "process":
        assert found, "the process backend should see the proxy's environment"
    else:
        assert found == []


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_listener_on_host_loopback_is_unreachable(backend: str) -> None:
    """A TCP listener on the host's 127.0.0.1 sees no connection from the sandbox."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        async with escape_session(backend) as (session, _):
            result = await call(session, "connect_tcp", host="127.0.0.1", port=port)

        accepted = _accepted(listener)

    assert accepted == (backend == "process")
    assert result["ok"] == accepted


@pytest.mark.parametrize("backend", BACKENDS)
async def test_an_abstract_unix_socket_on_the_host_is_unreachable(backend: str) -> None:
    """An abstract Unix socket of the host sees no connection from the sandbox."""
    name = f"mcp-sandbox-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind("\0" + name)
        listener.listen()
        listener.setblocking(False)
        async with escape_session(backend) as (session, _):
            result = await call(session, "connect_abstract_unix", name=name)

        accepted = _accepted(listener)

    assert accepted == (backend == "process")
    assert result["ok"] == accepted


def _accepted(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except BlockingIOError:
        return False

    conn.close()
    return True


@pytest.mark.parametrize("backend", BACKENDS)
async def test_host_processes_are_invisible_and_the_proxy_cannot_be_signalled(
    backend: str,
) -> None:
    """The proxy's pid is not in the sandbox's /proc; a signal sent to it is lost."""
    received: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _: received.append(signum))
    try:
        async with escape_session(backend) as (session, _):
            seen = await call(session, "list_processes")
            sent = await call(
                session, "kill_pid", pid=os.getpid(), signum=int(signal.SIGUSR1)
            )
    finally:
        signal.signal(signal.SIGUSR1, previous)

    if backend == "process":
        assert os.getpid() in seen["pids"] and sent["ok"] and received
    else:
        assert os.getpid() not in seen["pids"] and len(seen["pids"]) <= 3
        assert sent == {"ok": False, "error": "ESRCH"} and not received


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A host process of the test's user, waiting on its stdin."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield process
    process.kill()
    process.wait(timeout=10)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_host_processes_cannot_be_traced(
    backend: str, victim: subprocess.Popen[bytes]
) -> None:
    """ptrace on a host process fails, and the host sees no tracer on it."""
    async with escape_session(backend) as (session, _):
        result = await call(session, "ptrace_attach", pid=victim.pid)
        tracer = _tracer_of(victim.pid)

    if backend == "process":
        assert result["ok"] and tracer != 0
    else:
        assert result["error"] == "EPERM" and tracer == 0


def _tracer_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])

    raise AssertionError(f"no TracerPid in /proc/{pid}/status")


@pytest.fixture
def mount_target(tmp_path: Path) -> Iterator[Path]:
    """An empty folder of the test's own, unmounted afterwards if a probe got in."""
    target = tmp_path / "mount-target"
    target.mkdir()
    yield target
    if _mounted(target):
        subprocess.run(["umount", str(target)], check=True)


def _mounted(target: Path) -> bool:
    return f" {target} " in Path("/proc/self/mountinfo").read_text()


@pytest.mark.parametrize("backend", BACKENDS_AS_ROOT)
async def test_mounting_is_refused(backend: str, mount_target: Path) -> None:
    """A tmpfs mounted from inside never appears in the host's mount table."""
    async with escape_session(backend) as (session, _):
        result = await call(session, "mount_tmpfs", target=str(mount_target))

    on_host = _mounted(mount_target)
    assert result["ok"] == on_host == (backend == "process")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_new_user_namespaces_are_refused(backend: str) -> None:
    """unshare(CLONE_NEWUSER) fails inside; outside it makes a namespace of its own."""
    async with escape_session(backend) as (session, _):
        result = await call(session, "unshare_userns")

    if backend == "process":
        assert result["userns_inode"] != HOST_USERNS_INODE
    else:
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


@needs_root
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_setuid_root_binary_gives_no_root(
    backend: str, granted: Path, setuid_touch: Path
) -> None:
    """A file made by a setuid-root program belongs to root only outside the sandbox."""
    made = granted / "made-by-setuid"
    async with escape_session(backend, mounts=rw(granted)) as (session, _):
        result = await call(
            session, "run_program", path=str(setuid_touch), args=[str(made)]
        )

    assert result["ok"], result
    owner = made.stat().st_uid
    assert (owner == 0) == (backend == "process")
