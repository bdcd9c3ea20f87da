"""Escape probes that ``doctor --self-test`` runs inside a sandbox; stdlib only.

This file is run as a script by the sandbox's own ``python3`` (the host's for the
namespace and process backends, the image's for docker), so it imports nothing
beyond the standard library and runs on Python 3.8 or later. Each probe attempts
one escape, bounded in time, and prints one JSON line:

    {"probe": NAME, "escaped": BOOL, "evidence": TEXT, "digest": TEXT or null,
     "error": TEXT or null}

``escaped`` is what the sandbox saw: whether the kernel let the attempt through.
Where an escape leaves a trace on the host (a file written, a connection made),
or reads something the host can compare (``digest``: the SHA-256 of what was
read), the host checks and its word wins. ``error`` means the probe itself
broke, so it proves nothing either way. Under the ``process`` backend every probe
can succeed (those that need root: when the proxy runs as root), which shows the
checks are real; in a sandbox, every one should fail.

Every target comes in the arguments; the probe names no host path of its own
beyond ``/etc/shadow`` and ``/proc``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import select
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

# No probe waits longer than this for a peer or for a child process.
PROBE_TIMEOUT_S = 5.0
# Evidence is a sentence for a table cell, not a dump.
MAX_EVIDENCE_CHARS = 200
# The name of the file the write probe tries to leave in the host's folder.
WRITTEN_NAME = "escaped.txt"
SHADOW = "/etc/shadow"
PTRACE_SEIZE = 0x4206
CLONE_NEWUSER = 0x10000000
MNT_DETACH = 2


class Outcome(NamedTuple):
    """What one probe saw: whether it got through, the evidence, and the SHA-256
    of what it read where the host can compare that with its own file."""

    escaped: bool
    evidence: str
    digest: str | None = None


def refused(exc: OSError, what: str) -> Outcome:
    """The kernel said no: name the error and what was tried."""
    return Outcome(False, f"{what}: {_errno_name(exc.errno)}")


def _errno_name(code: int | None) -> str:
    return errno.errorcode.get(code or 0, str(code))


def _libc() -> Any:
    return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def home_file_read(targets: argparse.Namespace) -> Outcome:
    """Read the canary file planted in the home folder of the proxy's user."""
    try:
        data = Path(targets.canary).read_bytes()
    except OSError as exc:
        return refused(exc, f"read {targets.canary}")

    if targets.token.encode() not in data:
        return Outcome(False, f"{targets.canary} exists here but is not the canary")

    return Outcome(True, f"read the canary {targets.canary}")


def host_folder_write(targets: argparse.Namespace) -> Outcome:
    """Write a file into a host folder that no policy grants."""
    target = Path(targets.write_dir) / WRITTEN_NAME
    try:
        target.write_text(targets.token)
    except OSError as exc:
        return refused(exc, f"write {target}")

    return Outcome(True, f"wrote {target} (the host checks where it landed)")


def proxy_secret_read(targets: argparse.Namespace) -> Outcome:
    """Look for the proxy's planted secret in the own and every readable
    ``/proc/PID/environ``."""
    found = ["own environment"] if _in_environment(targets.token) else []
    readable = 0
    for entry in _pid_entries():
        try:
            data = (entry / "environ").read_bytes()
        except OSError:
            continue

        readable += 1
        if targets.token.encode() in data:
            found.append(f"/proc/{entry.name}/environ")

    if found:
        return Outcome(True, "found the proxy's secret in " + ", ".join(found))

    return Outcome(
        False, f"not in its own environment nor in {readable} readable environs"
    )


def _in_environment(token: str) -> bool:
    return any(token in value for value in os.environ.values())


def host_loopback_connect(targets: argparse.Namespace) -> Outcome:
    """Connect to the listener the self-test opened on the host's 127.0.0.1."""
    where = f"connect 127.0.0.1:{targets.port}"
    address = ("127.0.0.1", targets.port)
    try:
        with socket.create_connection(address, timeout=PROBE_TIMEOUT_S) as conn:
            conn.sendall(targets.token.encode() + b"\n")
    except OSError as exc:
        return refused(exc, where)

    return Outcome(True, f"{where} succeeded (the host checks who answered)")


def host_process_listing(targets: argparse.Namespace) -> Outcome:
    """Whether the proxy's own pid (with its start time) shows in ``/proc``."""
    visible = len(_pid_entries())
    try:
        started = start_time(Path("/proc") / str(targets.proxy_pid))
    except OSError:
        started = None

    if started == targets.proxy_start:
        return Outcome(True, f"sees the proxy (pid {targets.proxy_pid}) in /proc")

    return Outcome(False, f"proxy pid {targets.proxy_pid} not seen; {visible} visible")


def _pid_entries() -> list[Path]:
    return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def start_time(proc_entry: Path) -> str:
    """Field 22 of ``stat``: with the pid, it names one process for good."""
    stat = (proc_entry / "stat").read_text()
    return stat.rpartition(")")[2].split()[19]


def proxy_ptrace(targets: argparse.Namespace) -> Outcome:
    """Attach with ptrace to the proxy and to the own parent (the sandbox's
    supervisor); the attaching child exits at once, which detaches it."""
    libc = _libc()
    tried: list[str] = []
    attached: list[str] = []
    for pid in dict.fromkeys([targets.proxy_pid, os.getppid()]):
        code = _in_child(lambda pid=pid: libc.ptrace(PTRACE_SEIZE, pid, None, None))
        if code == 0:
            attached.append(f"pid {pid}")
        else:
            tried.append(f"pid {pid}: {_errno_name(code)}")

    if attached:
        return Outcome(True, "ptrace attached to " + ", ".join(attached))

    return Outcome(False, "ptrace refused: " + ", ".join(tried))


def tmpfs_mount(targets: argparse.Namespace) -> Outcome:
    """Mount a tmpfs on a folder of the probe's own, and unmount it at once."""
    libc = _libc()
    try:
        target = Path(tempfile.mkdtemp(prefix="mcp-sandbox-probe-"))
    except OSError as exc:
        return refused(exc, "make a folder to mount on")

    try:
        if libc.mount(b"probe", os.fsencode(target), b"tmpfs", 0, None) != 0:
            return refused(OSError(ctypes.get_errno(), "mount"), "mount tmpfs")

        libc.umount2(os.fsencode(target), MNT_DETACH)
        return Outcome(True, f"mounted a tmpfs on {target} (and unmounted it)")
    finally:
        target.rmdir()


def user_namespace(targets: argparse.Namespace) -> Outcome:
    """Create a user namespace, in a child: one more step towards capabilities."""
    libc = _libc()
    code = _in_child(lambda: libc.unshare(CLONE_NEWUSER))
    if code == 0:
        return Outcome(True, "created a user namespace")

    return Outcome(False, f"unshare(CLONE_NEWUSER): {_errno_name(code)}")


def shadow_read(targets: argparse.Namespace) -> Outcome:
    """Read the host's password hashes; only their size is reported."""
    try:
        data = Path(SHADOW).read_bytes()
    except OSError as exc:
        return refused(exc, f"read {SHADOW}")

    digest = hashlib.sha256(data).hexdigest()
    return Outcome(True, f"read {len(data)} bytes of {SHADOW}", digest)


def _in_child(attempt: Callable[[], int]) -> int:
    """Run ``attempt`` (a libc call) in a forked child; its errno, 0 on success."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            code = 0 if attempt() == 0 else ctypes.get_errno() or errno.EPERM
            os.write(write_end, str(code).encode())
        finally:
            os._exit(0)

    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], PROBE_TIMEOUT_S)
        answer = os.read(read_end, 32) if ready else b""
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)

    return int(answer) if answer.strip().isdigit() else errno.ETIMEDOUT


PROBES: dict[str, Callable[[argparse.Namespace], Outcome]] = {
    "home-file-read": home_file_read,
    "host-folder-write": host_folder_write,
    "proxy-secret-read": proxy_secret_read,
    "host-loopback-connect": host_loopback_connect,
    "host-process-listing": host_process_listing,
    "proxy-ptrace": proxy_ptrace,
    "tmpfs-mount": tmpfs_mount,
    "user-namespace": user_namespace,
    "shadow-read": shadow_read,
}


def parse_targets(argv: list[str]) -> argparse.Namespace:
    """The host's targets: where the bait is, and the token that marks it."""
    parser = argparse.ArgumentParser(prog="probes.py")
    parser.add_argument("--token", required=True)
    parser.add_argument("--canary", required=True)
    parser.add_argument("--write-dir", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--proxy-pid", type=int, required=True)
    parser.add_argument("--proxy-start", required=True)
    return parser.parse_args(argv)


def run_probe(name: str, targets: argparse.Namespace) -> dict[str, Any]:
    """One probe's JSON line; a probe that breaks reports ``error`` instead."""
    try:
        escaped, evidence, digest = PROBES[name](targets)
    except Exception as exc:
        # A broken probe must not stop the others; the host shows it as not run.
        error = f"{type(exc).__name__}: {exc}"[:MAX_EVIDENCE_CHARS]
        return {"probe": name, **_report(False, ""), "error": error}

    return {"probe": name, **_report(escaped, evidence, digest), "error": None}


def _report(escaped: bool, evidence: str, digest: str | None = None) -> dict[str, Any]:
    return {
        "escaped": escaped,
        "evidence": evidence[:MAX_EVIDENCE_CHARS],
        "digest": digest,
    }


def main(argv: list[str]) -> int:
    """Run every probe in order, one JSON line each on stdout."""
    targets = parse_targets(argv)
    for name in PROBES:
        sys.stdout.write(json.dumps(run_probe(name, targets)) + "\n")
        sys.stdout.flush()

    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
