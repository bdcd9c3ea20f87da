"""The egress bridge and its launcher, run as real processes on this host.

A Unix-socket echo server stands in for the filter: the bridge decides nothing, so
what matters here is that bytes pass both ways, that the server starts only once
the bridge listens, keeps the launcher's pid and stdio, and that the bridge exits
with it.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mcp_sandbox_proxy.sandbox import egress_bridge
from mcp_sandbox_proxy.sandbox.egress_bridge import (
    BRIDGE_PORT,
    LAUNCH_FAILED_STATUS,
    egress_launch,
    proxy_env,
)

# The launcher and its bridge finish well within this; a bridge that outlived its
# server would hold stderr open and run it out.
RUN_TIMEOUT_S = 20.0

# The stand-in server: reads a line from stdin, sends it through the bridge, and
# reports what came back along with its own pid.
SERVER = """
import json, os, socket, sys
line = sys.stdin.readline().strip()
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as conn:
        conn.sendall(line.encode())
        conn.shutdown(socket.SHUT_WR)
        echoed = b"".join(iter(lambda: conn.recv(65536), b"")).decode()
except OSError as exc:
    echoed = type(exc).__name__
print(json.dumps({"pid": os.getpid(), "echoed": echoed}))
"""


# The same stand-in in JavaScript, for a server started by ``node``.
NODE_SERVER = """
const net = require("net");
let line = "";
process.stdin.on("data", (chunk) => { line += chunk; });
process.stdin.on("end", () => {
  const chunks = [];
  const conn = net.createConnection(Number(process.argv[1]), "127.0.0.1", () => {
    conn.end(line.trim());
  });
  let failure = null;
  conn.on("data", (chunk) => chunks.push(chunk));
  conn.on("error", (error) => { failure = error.code; });
  conn.on("close", () => console.log(JSON.stringify(
    { pid: process.pid, echoed: failure || Buffer.concat(chunks).toString() })));
});
"""


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        conn: socket.socket = self.request
        while chunk := conn.recv(65536):
            conn.sendall(chunk)


@pytest.fixture
def echo_socket(tmp_path: Path) -> Iterator[Path]:
    """A Unix-socket echo server standing in for the egress filter."""
    path = tmp_path / "egress.sock"
    server = socketserver.ThreadingUnixStreamServer(str(path), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _only(tmp_path: Path, *programs: str) -> str:
    """A PATH holding just ``programs`` (as found on this host)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for name in programs:
        # This interpreter stands in for python3: a wrapper script (pyenv's shims)
        # would need more of PATH than the test leaves.
        found = sys.executable if name == "python3" else shutil.which(name)
        assert found is not None, f"{name} is needed for this test"
        (folder / name).symlink_to(Path(found).resolve())

    return str(folder)


def _server_argv(kind: str, tmp_path: Path, port: int) -> list[str]:
    """The stand-in server started by python, by node, or as a script of its own."""
    if kind == "python":
        return [str(Path(sys.executable).resolve()), "-c", SERVER, str(port)]

    if kind == "node":
        node = shutil.which("node")
        assert node is not None, "node is needed for this test"
        return [node, "-e", NODE_SERVER, str(port)]

    script = tmp_path / "server"
    script.write_text(f"#!{Path(sys.executable).resolve()}\n{SERVER}")
    script.chmod(0o755)
    return [str(script), str(port)]


def _launch(
    socket_path: Path, argv: list[str], port: int, search_path: str
) -> tuple[subprocess.Popen[str], str, str]:
    env = {"PATH": search_path, "MCP_EGRESS_SOCKET": str(socket_path)}
    process = subprocess.Popen(
        egress_launch(argv, port), env=env, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = process.communicate("through the bridge\n", timeout=RUN_TIMEOUT_S)
    return process, out, err


def test_proxy_variables_point_every_client_at_the_bridge() -> None:
    """HTTP(S) through the HTTP proxy, the rest through SOCKS5 with remote names."""
    env = proxy_env(4000)

    assert env["HTTP_PROXY"] == env["https_proxy"] == "http://127.0.0.1:4000"
    assert env["ALL_PROXY"] == env["all_proxy"] == "socks5h://127.0.0.1:4000"
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    assert env["NODE_USE_ENV_PROXY"] == "1"
    assert proxy_env()["HTTP_PROXY"].endswith(f":{BRIDGE_PORT}")


@pytest.mark.parametrize(
    ("command", "launcher"),
    [
        ("/usr/bin/python3.11", ["/usr/bin/python3.11", "-I", "-c"]),
        ("node", ["node", "-e"]),
        ("mcp-server-fetch", ["/bin/sh", "-c"]),
        ("python-lsp-server", ["/bin/sh", "-c"]),
    ],
)
def test_the_launcher_wraps_the_servers_argv_unchanged(
    command: str, launcher: list[str]
) -> None:
    """An interpreter launches its own bridge; other commands go through sh. The
    server's argv comes last, word for word."""
    argv = egress_launch([command, "server.js", "--flag", "a b"], 4000)

    assert argv[: len(launcher)] == launcher
    assert argv[-5:] == ["4000", command, "server.js", "--flag", "a b"]


@pytest.mark.parametrize(
    ("argv", "port", "message"),
    [([], 3128, "empty argv"), (["x"], 0, "from 1 to 65535"), (["x"], 70000, "65535")],
)
def test_the_launcher_refuses_bad_input(
    argv: list[str], port: int, message: str
) -> None:
    """An empty command or an impossible port is named in the error."""
    with pytest.raises(ValueError, match=message):
        egress_launch(argv, port)


def test_the_bridge_source_runs_on_python_3_8() -> None:
    """The file handed to the sandbox's python3 parses as Python 3.8."""
    ast.parse(Path(egress_bridge.__file__).read_text(), feature_version=(3, 8))


@pytest.mark.parametrize(
    ("kind", "available", "same_pid"),
    [
        ("python", [], True),
        ("node", [], False),
        ("script", ["python3"], True),
        ("script", ["node"], True),
    ],
)
def test_the_server_reaches_the_socket_through_the_bridge(
    echo_socket: Path, tmp_path: Path, kind: str, available: list[str], same_pid: bool
) -> None:
    """Started by python, by node, or as a script with only python3 or only node
    on PATH: bytes pass both ways, the server reads the launcher's stdin, and the
    bridge exits with the server. Python and sh exec the server in their place."""
    port = _free_port()
    argv = _server_argv(kind, tmp_path, port)
    process, out, err = _launch(echo_socket, argv, port, _only(tmp_path, *available))

    assert process.returncode == 0, err
    report = json.loads(out)
    assert report["echoed"] == "through the bridge"
    assert (report["pid"] == process.pid) is same_pid


def test_without_python_or_node_a_script_server_does_not_start(
    echo_socket: Path, tmp_path: Path
) -> None:
    """No interpreter for the bridge: status 70 and a message, no server run."""
    port = _free_port()
    argv = _server_argv("script", tmp_path, port)
    process, out, err = _launch(echo_socket, argv, port, _only(tmp_path))

    assert process.returncode == LAUNCH_FAILED_STATUS and out == ""
    assert "egress bridge did not start: neither python3 nor node" in err


@pytest.mark.parametrize("kind", ["python", "node", "script"])
def test_a_bridge_that_cannot_listen_stops_the_launch(
    echo_socket: Path, tmp_path: Path, kind: str
) -> None:
    """A taken port: the bridge says why and the server is not started."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        argv = _server_argv(kind, tmp_path, port)
        process, out, err = _launch(echo_socket, argv, port, _only(tmp_path, "python3"))

    assert process.returncode == LAUNCH_FAILED_STATUS and out == ""
    assert f"cannot listen on port {port}" in err


@pytest.mark.parametrize("kind", ["python", "node"])
def test_the_bridge_closes_a_connection_it_cannot_forward(
    tmp_path: Path, kind: str
) -> None:
    """With no filter behind the socket path, a client sees its connection end."""
    missing = tmp_path / "missing.sock"
    port = _free_port()
    argv = _server_argv(kind, tmp_path, port)
    process, out, err = _launch(missing, argv, port, _only(tmp_path))

    assert process.returncode == 0, err
    # The connection ends unanswered: empty, reset or refused, by timing.
    assert json.loads(out)["echoed"] != "through the bridge"
    assert f"cannot reach {missing}" in err


def test_the_bridge_runs_from_its_file_as_a_script(echo_socket: Path) -> None:
    """``python3 egress_bridge.py PORT`` is the same bridge, for manual use."""
    port = _free_port()
    env = {**os.environ, "MCP_EGRESS_SOCKET": str(echo_socket)}
    with subprocess.Popen(
        [sys.executable, "-I", egress_bridge.__file__, "bridge", str(port)],
        env=env, stdout=subprocess.PIPE,
    ) as bridge:  # fmt: skip
        assert bridge.stdout is not None
        assert bridge.stdout.readline() == b"ready\n"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"ping")
            conn.shutdown(socket.SHUT_WR)
            assert conn.recv(16) == b"ping"

        bridge.kill()
