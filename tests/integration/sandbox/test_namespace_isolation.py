"""What a server sees of itself and its surroundings in a namespace sandbox."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_sandbox_proxy.sandbox._bwrap_host import sandbox_host_uid
from mcp_sandbox_proxy.sandbox.egress_bridge import SANDBOX_EGRESS_SOCKET
from mcp_sandbox_proxy.sandbox.namespace import SandboxedProcess
from mcp_sandbox_proxy.sandbox.spec import NOBODY_UID, NetworkSpec
from tests.support.sandbox_client import call, escape_session, escape_spec

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[3]
BACKENDS = ["namespace", "process"]
NO_CAPABILITIES = "0000000000000000"
# The sandbox's processes are gone this long after the proxy is killed, at most.
TEARDOWN_TIMEOUT_S = 10.0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, as the host sees them."""
    found = [pid]
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        found += descendants(int(child))

    return found


def _host_uids(process: SandboxedProcess) -> set[int]:
    """The host uids of bubblewrap and every process of its sandbox."""
    uids: set[int] = set()
    for pid in descendants(process.pid):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                uids.update(int(u) for u in line.split()[1:])

    return uids


async def test_the_server_is_an_unprivileged_uid_inside_and_on_the_host() -> None:
    """Inside: uid 65534, no capabilities, no_new_privs, a seccomp filter, its own
    hostname. On the host, every process of the sandbox has an unprivileged uid."""
    async with escape_session("namespace") as (session, process):
        seen = await call(session, "identity")
        assert isinstance(process, SandboxedProcess)
        host_uids = _host_uids(process)

    assert seen["uid"] == NOBODY_UID and seen["CapEff"] == NO_CAPABILITIES
    assert seen["CapBnd"] == NO_CAPABILITIES and seen["NoNewPrivs"] == "1"
    assert seen["Seccomp"] == "2" and seen["hostname"] == "sandbox"
    assert host_uids == {sandbox_host_uid(NOBODY_UID)} and 0 not in host_uids


async def test_the_process_backend_is_the_full_rights_baseline() -> None:
    """Under ``process`` the same server keeps the host identity and hostname."""
    async with escape_session("process") as (session, _):
        seen = await call(session, "identity")

    assert seen["uid"] == os.getuid() and seen["hostname"] == socket.gethostname()
    assert seen["Seccomp"] == "0"


async def test_only_the_spec_environment_reaches_the_server() -> None:
    """The server gets the spec's variables, sandbox HOME and PATH, nothing else."""
    os.environ["MCP_SANDBOX_TEST_NOT_GIVEN"] = "host value"
    env = {**escape_spec().env, "GIVEN": "given value"}
    try:
        async with escape_session("namespace", env=env) as (session, _):
            given = await call(session, "getenv", name="GIVEN")
            not_given = await call(session, "getenv", name="MCP_SANDBOX_TEST_NOT_GIVEN")
            home = await call(session, "getenv", name="HOME")
    finally:
        del os.environ["MCP_SANDBOX_TEST_NOT_GIVEN"]

    assert given["value"] == "given value" and not_given["value"] is None
    assert home["value"] == "/tmp"


async def test_dev_holds_four_devices_and_no_more() -> None:
    """/dev has null, zero, random and urandom; the rest are links, not devices."""
    async with escape_session("namespace") as (session, _):
        listed = await call(session, "list_dir", path="/dev")

    devices = {"null", "zero", "random", "urandom"}
    links = {"fd", "stdin", "stdout", "stderr", "shm"}
    assert set(listed["entries"]) == devices | links


@pytest.mark.parametrize("path", ["/new-file", "/etc/new-file", "/usr/new-file"])
async def test_the_filesystem_is_read_only_outside_tmp(path: str) -> None:
    """Writes outside /tmp (and granted folders) fail with EROFS; /tmp takes them."""
    async with escape_session("namespace") as (session, _):
        refused = await call(session, "write_file", path=path, content="x")
        accepted = await call(session, "write_file", path="/tmp/new-file", content="x")

    assert refused == {"ok": False, "error": "EROFS"} and accepted["ok"]


async def test_etc_holds_generated_names_and_no_host_accounts() -> None:
    """/etc/passwd names only root and the sandbox user, not the host's accounts."""
    async with escape_session("namespace") as (session, _):
        passwd = await call(session, "read_file", path="/etc/passwd")
        shadow = await call(session, "read_file", path="/etc/shadow")

    users = [line.split(":")[0] for line in passwd["content"].splitlines()]
    assert users == ["root", "nobody"] and shadow["error"] == "ENOENT"


@pytest.mark.parametrize("backend", BACKENDS)
async def test_the_network_namespace_has_only_loopback(backend: str) -> None:
    """Inside, /proc/net/dev lists only ``lo``; the host has more."""
    async with escape_session(backend) as (session, _):
        devices = await call(session, "read_file", path="/proc/net/dev")

    names = {line.split(":")[0].strip() for line in devices["content"].splitlines()[2:]}
    assert (names == {"lo"}) == (backend == "namespace")


async def test_egress_mode_binds_the_egress_socket_only(tmp_path: Path) -> None:
    """With egress, the proxy's socket is at a fixed path and announced in the env."""
    path = tmp_path / "egress.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        path.chmod(0o666)
        listener.listen()
        network = NetworkSpec(mode="egress", egress_socket=path)
        async with escape_session("namespace", network=network) as (session, _):
            announced = await call(session, "getenv", name="MCP_EGRESS_SOCKET")
            connected = await call(session, "connect_unix", path=SANDBOX_EGRESS_SOCKET)

        listener.settimeout(5)
        conn, _ = listener.accept()
        assert conn.recv(64) == b"escaped\n"
        conn.close()

    assert announced["value"] == SANDBOX_EGRESS_SOCKET and connected["ok"]


PROXY_STAND_IN = """
import anyio, json, sys
from tests.integration.sandbox.test_namespace_isolation import descendants
from tests.support.sandbox_client import call, escape_session

async def main():
    async with escape_session("namespace") as (session, process):
        await call(session, "identity")
        print("PIDS", json.dumps(descendants(process.pid)), flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


def test_the_sandbox_dies_with_the_proxy() -> None:
    """When the proxy is killed outright, every process of its sandbox goes too."""
    proxy = subprocess.Popen(
        [sys.executable, "-c", PROXY_STAND_IN],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
    )
    assert proxy.stdout is not None
    lines = (line for line in proxy.stdout if line.startswith(b"PIDS "))
    pids = json.loads(next(lines).removeprefix(b"PIDS "))
    pidfds = [os.pidfd_open(pid) for pid in pids]
    proxy.send_signal(signal.SIGKILL)
    proxy.wait(timeout=TEARDOWN_TIMEOUT_S)

    for fd in pidfds:
        ready, _, _ = select.select([fd], [], [], TEARDOWN_TIMEOUT_S)
        os.close(fd)
        assert ready, "a sandbox process outlived the proxy"

    assert len(pids) >= 3, "bubblewrap, the sandbox's init and the server"
