"""A child process on the host, with its stdio as non-blocking pipes.

The process and namespace backends both end in a host process; this module owns its
lifecycle. Pipes are read with ``os.read`` of a bounded chunk once the event loop
reports them readable: asyncio's pipe transports ask for 256 KiB per read, which
costs about 100 us per small message. Exit is watched through a pidfd, and the
child is reaped with ``wait4`` so that its CPU time and peak memory are known.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio
import structlog

from mcp_sandbox_proxy.exceptions import SandboxStartFailed
from mcp_sandbox_proxy.sandbox.backend import (
    KILL_GRACE_S,
    READ_CHUNK_BYTES,
    STOP_GRACE_S,
    ResourceUsage,
    SandboxProcess,
)

log = structlog.get_logger(__name__)

# After SIGKILL the kernel reaps promptly; only an unkillable (D-state) process
# runs this out, and then we stop waiting rather than hang the proxy.
REAP_TIMEOUT_S = 2.0


def spawn_piped(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None,
    pass_fds: Sequence[int] = (),
    preexec: Callable[[], None] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with piped stdio and non-blocking pipes.

    Must run on the event loop's own thread: a parent-death signal set by
    ``preexec`` fires when the *thread* that forked exits.
    """
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
            close_fds=True,
            preexec_fn=preexec,
        )
    except OSError as exc:
        raise SandboxStartFailed(f"cannot start {argv[0]!r}: {exc.strerror}") from exc

    for pipe in (popen.stdin, popen.stdout, popen.stderr):
        assert pipe is not None
        os.set_blocking(pipe.fileno(), False)

    return popen


class PipedProcess(SandboxProcess):
    """A ``SandboxProcess`` backed by a host child process and its pipes."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        backend: str,
        sandbox_id: str,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        assert popen.stdin and popen.stdout and popen.stderr
        self.backend = backend
        self.sandbox_id = sandbox_id
        self.pid = popen.pid
        self._popen = popen
        self._stdin_fd: int | None = popen.stdin.fileno()
        self._stdout_fd = popen.stdout.fileno()
        self._stderr_fd = popen.stderr.fileno()
        self._pidfd = os.pidfd_open(popen.pid)
        self._write_lock = anyio.Lock()
        self._wait_lock = anyio.Lock()
        self._returncode: int | None = None
        self._usage = ResourceUsage()
        self._on_exit = on_exit

    async def receive(self) -> bytes:
        return await _read_chunk(self._stdout_fd)

    async def receive_stderr(self) -> bytes:
        return await _read_chunk(self._stderr_fd)

    async def send(self, data: bytes) -> None:
        async with self._write_lock:
            view = memoryview(data)
            while view:
                fd = self._stdin_fd
                if fd is None:
                    raise BrokenPipeError("stdin of the sandboxed server is closed")

                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await anyio.wait_writable(fd)
                    continue

                view = view[written:]

    async def close_stdin(self) -> None:
        async with self._write_lock:
            if self._stdin_fd is not None and self._popen.stdin is not None:
                self._stdin_fd = None
                with contextlib.suppress(OSError):
                    self._popen.stdin.close()

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        async with self._wait_lock:
            while self._returncode is None:
                if not self._try_reap():
                    await anyio.wait_readable(self._pidfd)

        return self._returncode

    def _try_reap(self) -> bool:
        try:
            pid, status, rusage = os.wait4(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status, rusage = self.pid, 0, None

        if pid == 0:
            return False

        self._returncode = os.waitstatus_to_exitcode(status)
        self._popen.returncode = self._returncode
        if rusage is not None:
            self._usage = ResourceUsage(
                cpu_seconds=rusage.ru_utime + rusage.ru_stime,
                peak_memory_bytes=rusage.ru_maxrss * 1024,
            )

        self._release()
        return True

    def _release(self) -> None:
        # The pipes stay open: a reader may still be draining them. ``close``
        # releases them once no task uses the streams any more.
        with contextlib.suppress(OSError):
            os.close(self._pidfd)

        if self._on_exit is not None:
            self._on_exit()
            self._on_exit = None

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the server's whole process group."""
        if self._returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signum)

    async def stop(self) -> int:
        with anyio.CancelScope(shield=True):
            await self.close_stdin()
            for grace, next_signal in (
                (STOP_GRACE_S, signal.SIGTERM),
                (KILL_GRACE_S, signal.SIGKILL),
            ):
                with anyio.move_on_after(grace):
                    return await self.wait()

                self.signal_group(next_signal)

            with anyio.move_on_after(REAP_TIMEOUT_S):
                return await self.wait()

            log.error("sandbox_unreapable", sandbox_id=self.sandbox_id, pid=self.pid)
            return -signal.SIGKILL

    def resource_usage(self) -> ResourceUsage:
        return self._usage

    def close(self) -> None:
        for pipe in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

        self._stdin_fd = None


async def _read_chunk(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, READ_CHUNK_BYTES)
        except BlockingIOError:
            await anyio.wait_readable(fd)
        except OSError:
            # A closed or broken pipe is the end of the stream.
            return b""
