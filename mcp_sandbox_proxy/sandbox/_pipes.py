"""A child process on the host, with its stdio as non-blocking pipes.

The process and namespace backends both end in a host process; this module owns its
lifecycle. Pipes go through ``fdio``; exit is watched through a pidfd, and the
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
from mcp_sandbox_proxy.fdio import FdFeed, FdReader, FdWriter
from mcp_sandbox_proxy.sandbox.backend import (
    KILL_GRACE_S,
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

    Must run on the thread that runs the event loop, or will: a parent-death
    signal set by ``preexec`` fires when the *thread* that forked exits.
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
        self._stdout: FdReader | None = None
        self._stdout_feed: FdFeed | None = None
        self._stderr: FdReader | None = None
        self._pidfd = os.pidfd_open(popen.pid)
        self._stdin: FdWriter | None = None
        self._wait_lock = anyio.Lock()
        self._returncode: int | None = None
        self._usage = ResourceUsage()
        self._on_exit = on_exit

    async def receive(self) -> bytes:
        if self._stdout is None:
            self._stdout = FdReader(self._stdout_fd)

        return await self._stdout.read()

    async def receive_stderr(self) -> bytes:
        if self._stderr is None:
            self._stderr = FdReader(self._stderr_fd)

        return await self._stderr.read()

    async def send(self, data: bytes) -> None:
        if self._stdin is None:
            if self._stdin_fd is None:
                raise BrokenPipeError("stdin of the sandboxed server is closed")

            self._stdin = FdWriter(self._stdin_fd)

        await self._stdin.write(data)

    def feed_stdout(self, on_chunk: Callable[[bytes], bool]) -> FdFeed | None:
        if self._stdout is not None or self._stdout_feed is not None:
            return None

        self._stdout_feed = FdFeed(self._stdout_fd, on_chunk)
        self._stdout_feed.resume()
        return self._stdout_feed

    def input_ready(self) -> bool:
        return self._stdin is not None and self._stdin.ready

    def send_nowait(self, data: bytes) -> None:
        assert self._stdin is not None
        self._stdin.write_nowait(data)

    async def close_stdin(self) -> None:
        if self._stdin is not None:
            self._stdin.close()

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
        for reader in (self._stdout, self._stderr):
            if reader is not None:
                reader.close()

        if self._stdout_feed is not None:
            self._stdout_feed.close()

        for pipe in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

        self._stdin_fd = None
