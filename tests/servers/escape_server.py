"""An MCP stdio server whose tools try to break out of whatever sandbox runs it.

Every tool attempts one escape and answers with structured evidence: what it did,
whether the kernel let it, and the error name when not. The tests run it under each
backend and check the host for traces; under the ``process`` backend every escape
should succeed, which shows that the probes are real. It names no host path of its
own: every target (file, port, socket, pid, program) comes in the tool's arguments.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer

server = MCPServer("escape-probes")
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)

PTRACE_SEIZE = 0x4206
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MIB = 1024 * 1024
PAGE_BYTES = 4096
# A probe never waits longer than this for a peer or a child.
PROBE_TIMEOUT_S = 5.0


def refused(exc: OSError) -> dict[str, Any]:
    code = exc.errno or 0
    return {"ok": False, "error": errno.errorcode.get(code, str(code))}


def libc_call(result: int) -> dict[str, Any]:
    if result == -1:
        return refused(OSError(ctypes.get_errno(), "libc call failed"))

    return {"ok": True, "error": None}


@server.tool()
def identity() -> dict[str, Any]:
    """Who the server is: ids, capabilities, no_new_privs, seccomp, hostname."""
    status = Path("/proc/self/status").read_text().splitlines()
    keys = ("Uid", "Gid", "CapEff", "CapPrm", "CapBnd", "NoNewPrivs", "Seccomp")
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in status)}
    return {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        **{k: fields.get(k) for k in keys},
    }


@server.tool()
def read_file(path: str) -> dict[str, Any]:
    """Read a file and return its text."""
    try:
        return {"ok": True, "content": Path(path).read_text(errors="replace")}
    except OSError as exc:
        return refused(exc)


@server.tool()
def write_file(path: str, content: str) -> dict[str, Any]:
    """Create or overwrite a file."""
    try:
        Path(path).write_text(content)
    except OSError as exc:
        return refused(exc)

    return {"ok": True, "error": None}


@server.tool()
def list_dir(path: str) -> dict[str, Any]:
    """List a directory."""
    try:
        return {"ok": True, "entries": sorted(p.name for p in Path(path).iterdir())}
    except OSError as exc:
        return refused(exc)


@server.tool()
def getenv(name: str) -> dict[str, Any]:
    """One variable of the server's own environment."""
    return {"value": os.environ.get(name)}


@server.tool()
def find_in_environments(needle: str) -> dict[str, Any]:
    """Search the server's environment and every readable /proc/PID/environ."""
    found: list[str] = []
    if any(needle in f"{k}={v}" for k, v in os.environ.items()):
        found.append("self")

    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if needle.encode() in (entry / "environ").read_bytes():
                    found.append(entry.name)
            except OSError:
                continue

    return {"found_in": found}


@server.tool()
def connect_tcp(host: str, port: int) -> dict[str, Any]:
    """Open a TCP connection, send a line, close."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as conn:
            conn.sendall(b"escaped\n")
    except OSError as exc:
        return refused(exc)

    return {"ok": True, "error": None}


@server.tool()
def connect_abstract_unix(name: str) -> dict[str, Any]:
    """Connect to the abstract Unix socket ``@name``, send a line, close."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(PROBE_TIMEOUT_S)
            conn.connect("\0" + name)
            conn.sendall(b"escaped\n")
    except OSError as exc:
        return refused(exc)

    return {"ok": True, "error": None}


@server.tool()
def connect_unix(path: str) -> dict[str, Any]:
    """Connect to the Unix socket at ``path``, send a line, close."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(PROBE_TIMEOUT_S)
            conn.connect(path)
            conn.sendall(b"escaped\n")
    except OSError as exc:
        return refused(exc)

    return {"ok": True, "error": None}


@server.tool()
def list_processes() -> dict[str, Any]:
    """Every pid the server can see in /proc, with its command line."""
    seen: dict[str, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                seen[entry.name] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
            except OSError:
                continue

    return {"pids": sorted(int(p) for p in seen), "cmdlines": seen}


@server.tool()
def kill_pid(pid: int, signum: int) -> dict[str, Any]:
    """Send a signal to a pid."""
    try:
        os.kill(pid, signum)
    except OSError as exc:
        return refused(exc)

    return {"ok": True, "error": None}


@server.tool()
def ptrace_attach(pid: int) -> dict[str, Any]:
    """Attach to a pid with PTRACE_SEIZE (which does not stop it) and stay attached."""
    return libc_call(libc.ptrace(PTRACE_SEIZE, pid, None, None))


@server.tool()
def mount_tmpfs(target: str) -> dict[str, Any]:
    """Mount a tmpfs on a directory."""
    return libc_call(libc.mount(b"probe", target.encode(), b"tmpfs", 0, None))


@server.tool()
def unshare_userns() -> dict[str, Any]:
    """Create a user namespace (in a child, as unshare needs a single thread)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        result = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS)
        code = 0 if result == 0 else ctypes.get_errno()
        inode = Path("/proc/self/ns/user").stat().st_ino if result == 0 else 0
        os.write(write_end, f"{code} {inode}".encode())
        os._exit(0)

    os.close(write_end)
    code, inode = (int(x) for x in os.read(read_end, 64).split())
    os.close(read_end)
    os.waitpid(pid, 0)
    if code:
        return refused(OSError(code, "unshare"))

    return {"ok": True, "error": None, "userns_inode": inode}


@server.tool()
def run_program(path: str, args: list[str]) -> dict[str, Any]:
    """Run a program (a setuid one, say) and return what it printed."""
    try:
        done = subprocess.run(
            [path, *args], capture_output=True, timeout=PROBE_TIMEOUT_S, check=False
        )
    except OSError as exc:
        return refused(exc)

    return {
        "ok": done.returncode == 0,
        "returncode": done.returncode,
        "stdout": done.stdout.decode(errors="replace"),
        "stderr": done.stderr.decode(errors="replace"),
    }


@server.tool()
def allocate_memory(mib: int) -> dict[str, Any]:
    """Allocate and touch ``mib`` MiB, then free them."""
    block = bytearray(mib * MIB)
    for offset in range(0, len(block), PAGE_BYTES):
        block[offset] = 1

    return {"ok": True, "allocated_mib": mib}


@server.tool()
def fork_many(count: int) -> dict[str, Any]:
    """Start up to ``count`` idle children at once, then end them all."""
    children: list[int] = []
    error = None
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError as exc:
            error = errno.errorcode.get(exc.errno or 0)
            break

        if pid == 0:
            signal.pause()
            os._exit(0)

        children.append(pid)

    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)

    return {"started": len(children), "error": error}


@server.tool()
def spin(seconds: float) -> dict[str, Any]:
    """Burn CPU for ``seconds`` of wall time; report the CPU time it got."""
    wall_start, cpu_start = time.monotonic(), time.process_time()
    while time.monotonic() - wall_start < seconds:
        pass

    return {"cpu_s": time.process_time() - cpu_start, "wall_s": seconds}


if __name__ == "__main__":
    sys.exit(server.run())
