"""A running container as a ``SandboxProcess``: its stdio over attach sockets.

The engine turns an attach request into a raw socket once the HTTP exchange is
upgraded. The backend opens two before it starts the container (so that no output
is lost): one carries stdin and stdout, the other stderr. Each stream thus has a
reader of its own, and a reader that falls behind holds back only its stream, as
with pipes. No ``docker`` CLI process sits in the path: sockets are read through
``fdio`` (as the proxy's pipes are), and the engine's frames are taken apart by
``FrameDecoder``.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import ssl
from collections.abc import Callable
from typing import Any

import anyio
import docker.errors
import structlog

from mcp_sandbox_proxy.exceptions import SandboxUnavailable
from mcp_sandbox_proxy.fdio import FdReader
from mcp_sandbox_proxy.sandbox import _docker_engine as engine_calls
from mcp_sandbox_proxy.sandbox._docker_engine import Engine
from mcp_sandbox_proxy.sandbox._docker_frames import STDOUT, FrameDecoder, payload_of
from mcp_sandbox_proxy.sandbox.backend import (
    KILL_GRACE_S,
    STOP_GRACE_S,
    ResourceUsage,
    SandboxProcess,
)

log = structlog.get_logger(__name__)

# After SIGKILL the engine reports the exit within milliseconds; only a wedged
# engine or runtime runs this out, and then the container is removed by force.
REAP_TIMEOUT_S = 5.0

# A one-shot stats sample usually takes milliseconds, but a busy engine has been
# seen to need more than 250 ms; past a second, stopping goes on without figures.
USAGE_TIMEOUT_S = 1.0

# The attach connections: stdin with stdout, and stderr on its own.
_STDIO_PARAMS = {"stream": 1, "stdin": 1, "stdout": 1}
_STDERR_PARAMS = {"stream": 1, "stderr": 1}


class AttachedStream:
    """One attach connection, delivering the payload of one output stream."""

    def __init__(self, sock: socket.socket, stream: int) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._fd = sock.fileno()
        self._stream = stream
        self._decoder = FrameDecoder()
        self._reader: FdReader | None = None
        self._ended = False

    async def receive(self) -> bytes:
        """The next output of the stream; ``b""`` once the engine closed it."""
        while not self._ended:
            data = await self._recv()
            if not data:
                self._ended = True
                break

            payload = payload_of(self._decoder.feed(data), self._stream)
            if payload:
                return payload

        return b""

    async def send_all(self, data: bytes) -> None:
        """Write all of ``data``; raises ``OSError`` if the engine hung up."""
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self._fd)
                continue

            view = view[sent:]

    def close_sending(self) -> None:
        """Half-close: the engine then closes the container's stdin."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()

        self._sock.close()

    async def _recv(self) -> bytes:
        if self._reader is None:
            # Made on first use: it binds to the running event loop.
            self._reader = FdReader(self._fd)

        return await self._reader.read()


async def attach(engine: Engine, container_id: str, *, stream: int) -> AttachedStream:
    """Open an attach connection to ``stream``; stdout's also carries stdin."""
    params = _STDIO_PARAMS if stream == STDOUT else _STDERR_PARAMS
    raw = await engine_calls.call(engine.attach_socket, container_id, dict(params))
    sock = getattr(raw, "_sock", raw)
    if not isinstance(sock, socket.socket) or isinstance(sock, ssl.SSLSocket):
        raw.close()
        raise SandboxUnavailable(
            "the docker backend attaches over a Unix or plain TCP engine socket;"
            f" this engine connection is a {type(sock).__name__}"
        )

    # Our own descriptor, so that the SDK's objects can be let go of.
    owned = sock.dup()
    raw.close()
    sock.close()
    return AttachedStream(owned, stream)


class DockerProcess(SandboxProcess):
    """A server running in a container, spoken to over its attach sockets."""

    backend = "docker"

    def __init__(
        self,
        engine: Engine,
        *,
        container_id: str,
        name: str,
        stdio: AttachedStream,
        stderr: AttachedStream,
        on_removed: Callable[[str], None],
    ) -> None:
        self.sandbox_id = name
        self.container_id = container_id
        self._engine = engine
        self._stdio = stdio
        self._stderr = stderr
        self._on_removed = on_removed
        self._stdin_open = True
        self._write_lock = anyio.Lock()
        self._wait_lock = anyio.Lock()
        self._returncode: int | None = None
        self._removed = False
        self._usage = ResourceUsage()

    async def receive(self) -> bytes:
        return await self._stdio.receive()

    async def receive_stderr(self) -> bytes:
        return await self._stderr.receive()

    async def send(self, data: bytes) -> None:
        async with self._write_lock:
            if not self._stdin_open:
                raise BrokenPipeError("stdin of the sandboxed server is closed")

            await self._stdio.send_all(data)

    async def close_stdin(self) -> None:
        async with self._write_lock:
            if self._stdin_open:
                self._stdin_open = False
                self._stdio.close_sending()

    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        """Wait for the exit; the exited container is then removed."""
        async with self._wait_lock:
            if self._returncode is None:
                self._returncode = await self._wait_for_exit()

            await self.remove()

        return self._returncode

    async def stop(self) -> int:
        with anyio.CancelScope(shield=True):
            await self._measure_usage()
            await self.close_stdin()
            for grace, next_signal in (
                (STOP_GRACE_S, signal.SIGTERM),
                (KILL_GRACE_S, signal.SIGKILL),
                (REAP_TIMEOUT_S, None),
            ):
                with anyio.move_on_after(grace):
                    await self.wait()

                if self._returncode is not None:
                    return self._returncode

                if next_signal is not None:
                    await self._kill(next_signal)

            log.error("docker_container_unstoppable", container=self.sandbox_id)
            await self.remove()

        return -signal.SIGKILL

    async def remove(self) -> None:
        """Remove the container, by force; once, and never raising."""
        if self._removed:
            return

        self._removed = True
        try:
            await engine_calls.call(
                self._engine.remove_container, self.container_id, force=True
            )
        except docker.errors.NotFound:
            pass
        except (docker.errors.APIError, SandboxUnavailable) as exc:
            log.warning(
                "docker_container_not_removed",
                container=self.sandbox_id,
                error=str(exc),
            )

        self._on_removed(self.container_id)

    def resource_usage(self) -> ResourceUsage:
        return self._usage

    def close(self) -> None:
        self._stdio.close()
        self._stderr.close()

    async def _wait_for_exit(self) -> int:
        try:
            result = await engine_calls.call_cancellable(
                self._engine.wait, self.container_id
            )
        except (docker.errors.NotFound, SandboxUnavailable) as exc:
            log.warning(
                "docker_container_lost", container=self.sandbox_id, error=str(exc)
            )
            return -signal.SIGKILL

        status = int(result["StatusCode"])
        log.debug("docker_container_exited", container=self.sandbox_id, status=status)
        return status

    async def _kill(self, signum: signal.Signals) -> None:
        # Not running any more (409) or gone (404): the exit is on its way.
        with contextlib.suppress(docker.errors.APIError, SandboxUnavailable):
            await engine_calls.call(
                self._engine.kill, self.container_id, signal=signum.name
            )

    async def _measure_usage(self) -> None:
        """Take CPU time and peak memory from the engine while the cgroup lives."""
        if self._returncode is not None:
            return

        stats = None
        with anyio.move_on_after(USAGE_TIMEOUT_S):
            try:
                stats = await engine_calls.call_cancellable(
                    self._engine.stats, self.container_id, stream=False, one_shot=True
                )
            except (docker.errors.APIError, SandboxUnavailable):
                return

        if stats is not None:
            self._usage = usage_from_stats(stats)


def usage_from_stats(stats: dict[str, Any]) -> ResourceUsage:
    """CPU seconds and peak memory from one engine stats sample, where present."""
    cpu_ns = stats.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
    # cgroup v1 keeps a peak ("max_usage"); v2 only the current use.
    peak = stats.get("memory_stats", {}).get("max_usage")
    return ResourceUsage(
        cpu_seconds=cpu_ns / 1e9 if isinstance(cpu_ns, int) and cpu_ns else None,
        peak_memory_bytes=peak if isinstance(peak, int) and peak else None,
    )
