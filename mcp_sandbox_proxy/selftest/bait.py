"""The host side of the self-test: bait planted for the probes, and its traces.

Before any sandbox is built, the self-test plants, all marked with one random
token:

- a canary file in the home folder of the proxy's user;
- a secret in the proxy's own environment, which spec building reads, and in the
  environment of a stand-in host process started with it, because
  ``/proc/PID/environ`` shows only what a process was started with, as the
  proxy's real secrets are;
- an empty host folder that no policy grants, which the sandbox's uid could write;
- a TCP listener on the host's 127.0.0.1.

After each server the host judges what it can see itself: a file in the folder,
a connection that carried the token, and whether a ``/etc/shadow`` the probe read
was the host's (an image has its own). Everything is removed when the self-test
ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import socket
import sys
import tempfile
from collections.abc import AsyncGenerator, Generator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

from mcp_sandbox_proxy.exceptions import ProxyError
from mcp_sandbox_proxy.sandbox._pipes import PipedProcess, spawn_piped
from mcp_sandbox_proxy.sandbox.process import die_with_parent
from mcp_sandbox_proxy.selftest.probes import SHADOW, start_time

SECRET_VAR = "MCP_SANDBOX_SELFTEST_SECRET"
TOKEN_BYTES = 16
# A probe's connection is made before its sandbox exits; this bounds the read of
# what it sent, which is already waiting in the host's socket buffer.
TRACE_READ_TIMEOUT_S = 1.0
# Connections looked at per server; more than one means something else knocked.
MAX_CONNECTIONS = 8
# For a folder that cannot be given to the sandbox's uid; it lives for seconds.
WORLD_WRITABLE = 0o777
# The stand-in waits for its stdin to close, then exits.
HOLDER_CODE = "import sys; sys.stdin.read()"


class Trace(NamedTuple):
    """The host's own finding on one probe; it outweighs what the probe said."""

    escaped: bool
    detail: str


# The host's findings by probe name, for the probes it could judge.
Traces = dict[str, Trace]


class Bait:
    """The planted files, listener and token, and how to read their traces."""

    def __init__(
        self, token: str, canary: Path, write_dir: Path, listener: socket.socket
    ) -> None:
        self.token = token
        self.canary = canary
        self.write_dir = write_dir
        self.listener = listener
        self.port: int = listener.getsockname()[1]
        self.shadow_digest = _digest_of(Path(SHADOW))

    def probe_args(self) -> list[str]:
        """The probe script's arguments: where every piece of bait is."""
        return [
            "--token", self.token,
            "--canary", str(self.canary),
            "--write-dir", str(self.write_dir),
            "--port", str(self.port),
            "--proxy-pid", str(os.getpid()),
            "--proxy-start", start_time(Path("/proc/self")),
        ]  # fmt: skip

    def open_to(self, uid: int, gid: int) -> None:
        """Let the sandbox's host uid write the folder, so that only the sandbox's
        view of the filesystem stands between it and the folder. A non-root proxy's
        sandboxes run as its own uid, which owns the folder already."""
        if os.geteuid() != 0:
            return

        try:
            os.chown(self.write_dir, uid, gid)
        except OSError:
            # Root of a user namespace that does not map ``uid``: open to all.
            self.write_dir.chmod(WORLD_WRITABLE)

    def traces(self, reports: Mapping[str, Mapping[str, Any]]) -> Traces:
        """What the host finds since the last call; the folder is emptied."""
        found = {
            "host-folder-write": self._folder_trace(),
            "host-loopback-connect": self._listener_trace(),
        }
        shadow = reports.get("shadow-read", {})
        if shadow.get("escaped") and self.shadow_digest is not None:
            found["shadow-read"] = _shadow_trace(
                shadow.get("digest"), self.shadow_digest
            )

        return found

    def _folder_trace(self) -> Trace:
        landed = sorted(entry.name for entry in self.write_dir.iterdir())
        _empty(self.write_dir)
        if landed:
            return Trace(True, f"{', '.join(landed)} appeared in {self.write_dir}")

        return Trace(False, f"nothing appeared in the host folder {self.write_dir}")

    def _listener_trace(self) -> Trace:
        where = f"the host's listener on 127.0.0.1:{self.port}"
        if self._token_arrived():
            return Trace(True, f"{where} got the token")

        return Trace(False, f"nothing reached {where}")

    def _token_arrived(self) -> bool:
        arrived = False
        for _ in range(MAX_CONNECTIONS):
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                break

            with conn:
                conn.settimeout(TRACE_READ_TIMEOUT_S)
                with contextlib.suppress(OSError):
                    arrived |= self.token.encode() in conn.recv(256)

        return arrived


@asynccontextmanager
async def planted() -> AsyncGenerator[Bait]:
    """Plant every piece of bait; remove it all on the way out."""
    token = secrets.token_hex(TOKEN_BYTES)
    with (
        _secret_in_environment(token),
        _canary(token) as canary,
        _write_dir() as write_dir,
        _listener() as listener,
    ):
        holder = _start_holder(token)
        try:
            yield Bait(token, canary, write_dir, listener)
        finally:
            await holder.stop()
            holder.close()


@contextlib.contextmanager
def _secret_in_environment(token: str) -> Generator[None]:
    previous = os.environ.get(SECRET_VAR)
    os.environ[SECRET_VAR] = token
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SECRET_VAR, None)
        else:
            os.environ[SECRET_VAR] = previous


@contextlib.contextmanager
def _canary(token: str) -> Generator[Path]:
    canary = Path.home() / f".mcp-sandbox-selftest-canary-{token[:12]}"
    try:
        canary.write_text(f"{token}\n")
    except OSError as exc:
        raise ProxyError(
            f"cannot plant the canary file {canary}: {exc.strerror}; the self-test"
            " needs to write one file into your home folder (it removes it again)"
        ) from exc

    try:
        yield canary.resolve()
    finally:
        canary.unlink(missing_ok=True)


@contextlib.contextmanager
def _write_dir() -> Generator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="mcp-sandbox-selftest-")).resolve()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _listener() -> Generator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        yield listener


def _start_holder(token: str) -> PipedProcess:
    """A host process with the secret in the environment it was started with."""
    popen = spawn_piped(
        [sys.executable, "-I", "-c", HOLDER_CODE],
        env={SECRET_VAR: token},
        cwd=Path("/"),
        preexec=die_with_parent,
    )
    return PipedProcess(popen, backend="host", sandbox_id=f"selftest-{popen.pid}")


def _shadow_trace(read: object, host: str) -> Trace:
    if read == host:
        return Trace(True, f"read the host's {SHADOW}")

    return Trace(False, f"the {SHADOW} it read is not the host's (an image's own)")


def _digest_of(path: Path) -> str | None:
    """SHA-256 of a file the proxy may read; ``None`` if it may not."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _empty(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
