"""The egress bridge: a TCP proxy port inside the sandbox that leads to the filter.

Most HTTP clients (Python's httpx and urllib, curl, git, npm) take a proxy only as
``host:port`` in ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY``, not as a Unix
socket. So inside the sandbox's own network namespace a small bridge listens on
``127.0.0.1:<port>`` and copies each connection, byte for byte, to the egress
filter's socket bound at ``/run/mcp-egress.sock``. The bridge decides nothing: the
sandbox could reach that socket itself, and everything is checked behind it.

This file is the bridge itself as well as the proxy's helpers for it. It uses the
standard library only and runs on any Python from 3.8, so ``egress_launch`` hands
its source to the sandbox's own interpreter (``python3 -I -c``) and nothing needs
installing in the sandbox; a sandbox with Node but no Python (a Node image in
Docker) runs the JavaScript twin in ``NODE_BRIDGE``. The bridge is started before
the server, which runs only once the bridge listens (the bridge signals it by
closing a pipe, with no polling), so the server's first request finds the port
open; the bridge exits with the server.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import socket
import sys
import threading
from pathlib import Path, PurePosixPath

# Where the sandbox backends bind the filter's socket, and the variable naming it.
SANDBOX_EGRESS_SOCKET = "/run/mcp-egress.sock"
EGRESS_SOCKET_ENV = "MCP_EGRESS_SOCKET"
# The port proxies conventionally listen on, so the environment reads as what it
# is; it is free in the sandbox's own network namespace.
BRIDGE_PORT = 3128
BRIDGE_HOST = "127.0.0.1"
READY_LINE = b"ready\n"
# The launcher's exit status when no bridge could start (EX_SOFTWARE).
LAUNCH_FAILED_STATUS = 70
# Read size of one copy step.
CHUNK_BYTES = 64 * 1024
# Interpreter names that run ``-I -c``: python, python3, python3.12.
_PYTHON = re.compile(r"^python(\d+(\.\d+)?)?$")

# Run by ``/bin/sh -c`` with $1 the Python bridge, $2 the Node bridge, $3 the port,
# then the server's own argv; written for any POSIX sh (dash, busybox ash).
# ``$(... &)`` returns once the bridge closes its stdout, that is once it listens,
# and does not wait for it to exit.
LAUNCHER = f"""\
bridge_py=$1 bridge_js=$2 port=$3
shift 3
server=$$
search=${{PATH:-/usr/local/bin:/usr/bin:/bin}}
if python=$(PATH=$search command -v python3); then
    ready=$("$python" -I -c "$bridge_py" bridge "$port" "$server" &)
elif node=$(PATH=$search command -v node); then
    ready=$("$node" -e "$bridge_js" -- bridge "$port" "$server" &)
else
    ready="neither python3 nor node is in the sandbox"
fi
if [ "$ready" != ready ]; then
    echo "mcp-sandbox-proxy: the egress bridge did not start: ${{ready:-it exited}}" >&2
    exit {LAUNCH_FAILED_STATUS}
fi
exec "$@"
"""

# The bridge for Node, with the same two modes as the Python one (see ``main``).
# Node can neither fork nor exec, so ``launch`` keeps the bridge in its own event
# loop and runs the server as its child, passing signals on and its exit status
# back; and ``bridge`` has no pidfd, so it looks at the server once a second.
NODE_BRIDGE = r"""
"use strict";
const childProcess = require("child_process");
const fs = require("fs");
const net = require("net");
const os = require("os");
const [mode, portText, ...rest] = process.argv.slice(1);
const port = Number(portText);
const target = process.env.MCP_EGRESS_SOCKET || "/run/mcp-egress.sock";

function listen(ready) {
  const bridge = net.createServer({ allowHalfOpen: true }, (client) => {
    const upstream = net.createConnection({ path: target, allowHalfOpen: true });
    const stop = () => { client.destroy(); upstream.destroy(); };
    client.on("error", stop);
    upstream.on("error", (error) => {
      process.stderr.write("mcp-egress-bridge: cannot reach " + target + ": " +
        error.message + "\n");
      stop();
    });
    client.pipe(upstream);
    upstream.pipe(client);
  });
  bridge.on("error", (error) => {
    process.stderr.write("mcp-egress-bridge: cannot listen on port " + port + ": " +
      error.message + "\n");
    process.exit(mode === "launch" ? 70 : 1);
  });
  bridge.listen(port, "127.0.0.1", ready);
}

// Whether a process runs: not gone and not a zombie awaiting its parent.
function alive(pid) {
  try {
    const stat = fs.readFileSync("/proc/" + pid + "/stat", "latin1");
    return stat.split(") ").pop()[0] !== "Z";
  } catch (error) {
    try { process.kill(pid, 0); return true; } catch (gone) { return false; }
  }
}

if (mode === "launch") {
  listen(() => {
    const server = childProcess.spawn(rest[0], rest.slice(1), { stdio: "inherit" });
    for (const name of ["SIGTERM", "SIGINT", "SIGHUP"]) {
      process.on(name, () => server.kill(name));
    }
    server.on("error", (error) => {
      process.stderr.write("mcp-egress-launch: " + error.message + "\n");
      process.exit(127);
    });
    server.on("exit", (code, name) => {
      process.exit(code === null ? 128 + (os.constants.signals[name] || 0) : code);
    });
  });
} else {
  const watched = Number(rest[0] || 0);
  listen(() => {
    fs.writeSync(1, "ready\n");
    fs.closeSync(1);
    fs.openSync("/dev/null", "w");
    if (watched) {
      setInterval(() => { if (!alive(watched)) process.exit(0); }, 1000);
    }
  });
}
"""


def proxy_env(bridge_port: int = BRIDGE_PORT) -> dict[str, str]:
    """The proxy variables that send a server's clients through the bridge.

    ``ALL_PROXY`` is SOCKS5 with names resolved by the proxy (``socks5h``), for
    clients that carry other TCP protocols; HTTP(S) clients use the HTTP proxy.
    Node's own ``fetch`` reads them only with ``NODE_USE_ENV_PROXY=1``.
    """
    http = f"http://{BRIDGE_HOST}:{_checked_port(bridge_port)}"
    env = {
        "HTTP_PROXY": http,
        "HTTPS_PROXY": http,
        "ALL_PROXY": f"socks5h://{BRIDGE_HOST}:{bridge_port}",
        "NO_PROXY": "localhost,127.0.0.1,::1",
    }
    env.update({name.lower(): value for name, value in env.items()})
    env["NODE_USE_ENV_PROXY"] = "1"
    return env


def egress_launch(argv: list[str], bridge_port: int = BRIDGE_PORT) -> list[str]:
    """``argv`` wrapped so that the bridge listens first, then the server runs.

    A server started by its interpreter (``python3 ...``, ``node ...``) gets the
    bridge from that same interpreter, so images without a shell work. Any other
    command goes through ``/bin/sh``, which starts the bridge with the sandbox's
    ``python3`` (or ``node``) and then ``exec``s ``argv``. Python and the shell
    ``exec`` the server (it keeps the launcher's pid, stdin and stdout); Node runs
    it as its child. Without a bridge the server does not start: status 70.
    """
    if not argv:
        raise ValueError("egress_launch needs the server's command, got an empty argv")

    port = str(_checked_port(bridge_port))
    program = PurePosixPath(argv[0]).name
    if _PYTHON.match(program):
        return [argv[0], "-I", "-c", _own_source(), "launch", port, *argv]

    if program in ("node", "nodejs"):
        return [argv[0], "-e", NODE_BRIDGE, "--", "launch", port, *argv]

    source = _own_source()
    return [
        "/bin/sh",
        "-c",
        LAUNCHER,
        "mcp-egress-launch",
        source,
        NODE_BRIDGE,
        port,
        *argv,
    ]


def _checked_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise ValueError(f"the bridge port must be from 1 to 65535, got {port}")

    return port


def _own_source() -> str:
    return Path(__file__).read_text(encoding="utf-8")


def main(args: list[str]) -> int:
    """Run inside the sandbox: ``bridge PORT [SERVER_PID]`` or ``launch PORT ARGV``.

    ``bridge`` listens, says ``ready`` on stdout and relays until the server with
    that pid exits. ``launch`` starts such a bridge in a detached process, waits
    until it listens, then ``exec``s ``ARGV`` in its own place.
    """
    mode, port = args[0], int(args[1])
    if mode == "launch":
        return _launch(port, args[2:])

    watched = int(args[2]) if len(args) > 2 else 0
    return _bridge(port, watched, ready_fd=1)


def _launch(port: int, argv: list[str]) -> int:
    server = os.getpid()
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(read_end)
        if os.fork() == 0:
            _detach_stdio()
            os._exit(_bridge(port, server, ready_fd=write_end))

        os._exit(0)

    os.close(write_end)
    os.wait()
    with os.fdopen(read_end, "rb") as ready:
        if ready.read() != READY_LINE:
            sys.stderr.write("mcp-sandbox-proxy: the egress bridge did not start\n")
            return LAUNCH_FAILED_STATUS

    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"mcp-egress-launch: cannot run {argv[0]}: {exc}\n")
        return 127


def _bridge(port: int, watched: int, *, ready_fd: int) -> int:
    target = os.environ.get(EGRESS_SOCKET_ENV, SANDBOX_EGRESS_SOCKET)
    try:
        listener = socket.create_server((BRIDGE_HOST, port))
    except OSError as exc:
        sys.stderr.write(f"mcp-egress-bridge: cannot listen on port {port}: {exc}\n")
        return 1

    _announce_ready(ready_fd)
    _serve(listener, target, _pidfd(watched))
    return 0


def _announce_ready(fd: int) -> None:
    """Say ``ready`` on ``fd``, then close it so that the launcher's read ends."""
    os.write(fd, READY_LINE)
    if fd != 1:
        os.close(fd)
        return

    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)


def _detach_stdio() -> None:
    """Give the server's stdin and stdout back to it alone."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)


def _pidfd(pid: int) -> int | None:
    """A descriptor that turns readable when ``pid`` exits (Linux 5.3, Python 3.9)."""
    pidfd_open = getattr(os, "pidfd_open", None)
    if not pid or pidfd_open is None:
        return None

    try:
        return pidfd_open(pid)
    except OSError:
        return None


def _serve(listener: socket.socket, target: str, server_exit: int | None) -> None:
    watched: list[socket.socket | int] = [listener]
    if server_exit is not None:
        watched.append(server_exit)

    while True:
        readable, _, _ = select.select(watched, [], [])
        if server_exit in readable:
            return

        client, _ = listener.accept()
        threading.Thread(target=_forward, args=(client, target), daemon=True).start()


def _forward(client: socket.socket, target: str) -> None:
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(target)
    except OSError as exc:
        sys.stderr.write(f"mcp-egress-bridge: cannot reach {target}: {exc}\n")
        client.close()
        upstream.close()
        return

    down = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    down.start()
    _pump(client, upstream)
    down.join()
    client.close()
    upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then end ``sink``; a broken side ends both."""
    try:
        while True:
            data = source.recv(CHUNK_BYTES)
            if not data:
                break

            sink.sendall(data)

        sink.shutdown(socket.SHUT_WR)
    except OSError:
        for side in (source, sink):
            with contextlib.suppress(OSError):
                side.shutdown(socket.SHUT_RDWR)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
