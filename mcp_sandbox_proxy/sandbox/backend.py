"""The interface every sandbox backend implements.

A backend turns a ``SandboxSpec`` into a running ``SandboxProcess``: a process with
byte streams for stdin, stdout and stderr, that can be stopped and waited for.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from mcp_sandbox_proxy.fdio import FdFeed
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

# How long a server may take to exit after its stdin closes, and after SIGTERM.
STOP_GRACE_S = 2.0
KILL_GRACE_S = 2.0


@dataclass(frozen=True)
class ResourceUsage:
    """What a backend could measure of a finished or running sandbox."""

    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None


@dataclass(frozen=True)
class BackendCheck:
    """One line of ``doctor``: what was checked, whether it holds, and detail."""

    name: str
    ok: bool
    detail: str
    required: bool = True


class SandboxProcess(ABC):
    """A running sandboxed server with its three byte streams."""

    backend: str
    sandbox_id: str

    @abstractmethod
    async def receive(self) -> bytes:
        """The next chunk of the server's stdout; ``b""`` at end of stream."""

    @abstractmethod
    async def receive_stderr(self) -> bytes:
        """The next chunk of the server's stderr; ``b""`` at end of stream."""

    @abstractmethod
    async def send(self, data: bytes) -> None:
        """Write all of ``data`` to the server's stdin."""

    def feed_stdout(self, on_chunk: Callable[[bytes], bool]) -> FdFeed | None:
        """Hand stdout to ``on_chunk`` as soon as it is readable (see ``FdFeed``),
        where the backend has a descriptor to watch; None where it has not, and
        ``receive`` is the way to read."""
        return None

    def input_ready(self) -> bool:
        """True when ``send_nowait`` may be used: stdin takes more at once."""
        return False

    def send_nowait(self, data: bytes) -> None:
        """Queue ``data`` for stdin without waiting; only after ``input_ready``."""
        raise NotImplementedError("this backend writes only through send")

    @abstractmethod
    async def close_stdin(self) -> None:
        """Close the server's stdin, the polite request to exit."""

    @abstractmethod
    async def wait(self) -> int:
        """Wait for the server to exit and return its exit status."""

    @property
    @abstractmethod
    def returncode(self) -> int | None:
        """The exit status, or ``None`` while the server runs."""

    @abstractmethod
    async def stop(self) -> int:
        """Stop the server: close stdin, grace period, terminate, kill; bounded."""

    def resource_usage(self) -> ResourceUsage:
        """CPU time and peak memory where the backend can tell."""
        return ResourceUsage()

    def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release OS handles; call only once no task reads or writes any more."""


class Backend(ABC):
    """A way to run a ``SandboxSpec``."""

    name: str

    @abstractmethod
    async def start(self, spec: SandboxSpec) -> SandboxProcess:
        """Start the server described by ``spec``; raise ``SandboxError`` if not."""

    def start_now(self, spec: SandboxSpec) -> SandboxProcess | None:
        """``start`` done at once, blocking, before the event loop runs; None from
        a backend that can start a server only inside the loop."""
        return None

    def checks(self) -> list[BackendCheck]:
        """What this host offers the backend, for ``doctor`` and fail-closed starts."""
        return []

    async def aclose(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release what the backend holds (engine connections, leftovers)."""
