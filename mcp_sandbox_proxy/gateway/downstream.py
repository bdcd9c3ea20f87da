"""The link to one running instance of a tool server.

A ``Downstream`` owns one sandboxed process: it frames and decodes what the server
writes, answers the proxy's own requests to it, keeps the table of requests in
flight with the ids the server knows them by, and drains stderr into a bounded tail
kept for error messages. It knows routing and policy only through its handler.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import structlog

from mcp_sandbox_proxy.exceptions import DownstreamError, SandboxError
from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.jsonrpc import Message
from mcp_sandbox_proxy.sandbox.backend import Backend, SandboxProcess
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

log = structlog.get_logger(__name__)

# Stderr kept per server for error messages; older output is dropped.
STDERR_TAIL_BYTES = 8 * 1024
STDERR_TAIL_LINES = 20
# A server that floods stderr is still logged, at most this many lines a second
# (the rest are kept in the tail only).
STDERR_LOG_LINES_PER_S = 50
# A server whose stdout ended has this long to exit before it is stopped; calls in
# flight are failed right after, well within a second.
EXIT_AFTER_EOF_S = 0.5
# Undecodable stdout lines logged per server before they are only counted.
GARBAGE_LOG_LIMIT = 5


class DownstreamHandler(Protocol):
    """What the relay does with what a server sends."""

    async def on_server_message(self, link: Downstream, message: Message) -> None: ...

    async def on_server_ready(self, link: Downstream) -> None: ...

    async def on_server_exit(self, link: Downstream, reason: str) -> None: ...


ResponseCallback = Callable[[Message], Awaitable[None]]


@dataclass
class Pending:
    """A request sent to the server that awaits its response."""

    method: str
    deliver: ResponseCallback
    client_id: jsonrpc.RequestId | None = None
    deadline: float = float("inf")
    meta: dict[str, Any] = field(default_factory=lambda: {})


class StderrTail:
    """The last lines a server wrote to stderr, bounded in bytes and lines."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._partial = b""

    def feed(self, data: bytes) -> list[str]:
        """Add output; return the complete lines it finished."""
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()[-STDERR_TAIL_BYTES:]
        lines = [c[-STDERR_TAIL_BYTES:].decode(errors="replace") for c in chunks]
        self._lines.extend(lines)
        return lines

    def text(self) -> str:
        parts = [*self._lines]
        if self._partial:
            parts.append(self._partial.decode(errors="replace"))

        return "\n".join(parts)[-STDERR_TAIL_BYTES:]


class Downstream:
    """One sandboxed instance of a server, keyed by (server, isolation profile)."""

    def __init__(
        self,
        server: str,
        profile: str,
        spec: SandboxSpec,
        backend: Backend,
        handler: DownstreamHandler,
    ) -> None:
        self.server = server
        self.profile = profile
        self.spec = spec
        self.backend = backend
        self.process: SandboxProcess | None = None
        self.pending: dict[int, Pending] = {}
        self.initialize_result: Message | None = None
        self.stderr = StderrTail()
        self.ready = anyio.Event()
        self.closed = False
        self.garbage_lines = 0
        self._handler = handler
        self._ids = itertools.count(1)
        self._splitter = jsonrpc.LineSplitter()
        self._exit_reason = ""
        self.exit_reason = ""

    @property
    def capabilities(self) -> dict[str, Any]:
        result = self.initialize_result or {}
        capabilities = result.get("capabilities")
        return capabilities if isinstance(capabilities, dict) else {}  # type: ignore[return-value]

    @property
    def sandbox_id(self) -> str:
        return self.process.sandbox_id if self.process else ""

    def next_id(self) -> int:
        return next(self._ids)

    async def start(self) -> None:
        """Start the sandboxed process; raises ``SandboxError``."""
        self.process = await self.backend.start(self.spec)

    async def run(self) -> None:
        """Pump the server's output until it exits, then tell the handler why."""
        process = self.process
        assert process is not None
        async with anyio.create_task_group() as group:
            group.start_soon(self._drain_stderr, process)
            await self._read_stdout(process)
            self.closed = True
            with anyio.move_on_after(EXIT_AFTER_EOF_S, shield=True):
                await process.wait()

            if process.returncode is None:
                await process.stop()

            group.cancel_scope.cancel()

        process.close()
        reason = self._exit_reason or f"server exited with status {process.returncode}"
        tail = self.stderr.text().strip()
        self.exit_reason = f"{reason}; stderr: {tail[-500:]}" if tail else reason
        await self._fail_pending(reason)
        await self._handler.on_server_exit(self, reason)

    async def _read_stdout(self, process: SandboxProcess) -> None:
        while chunk := await process.receive():
            for line in self._splitter.feed(chunk):
                if isinstance(line, jsonrpc.FrameTooLarge):
                    self._exit_reason = (
                        "server sent a message over"
                        f" {jsonrpc.MAX_MESSAGE_BYTES} bytes and was stopped"
                    )
                    log.error("server_message_too_large", server=self.server)
                    await process.stop()
                    return

                if line.strip():
                    await self._on_line(line)

    async def _on_line(self, line: bytes) -> None:
        try:
            message = jsonrpc.decode(line)
        except jsonrpc.DecodeError as exc:
            self.garbage_lines += 1
            if self.garbage_lines <= GARBAGE_LOG_LIMIT:
                log.warning(
                    "server_output_ignored",
                    server=self.server,
                    reason=str(exc),
                    sample=line[:120].decode(errors="replace"),
                )

            return

        if jsonrpc.is_response(message):
            await self._on_response(message)
        elif "method" in message:
            await self._handler.on_server_message(self, message)
        else:
            self.garbage_lines += 1

    async def _on_response(self, message: Message) -> None:
        request_id = message.get("id")
        pending = (
            self.pending.pop(request_id, None) if isinstance(request_id, int) else None
        )
        if pending is None:
            log.warning("server_response_unmatched", server=self.server, id=request_id)
            return

        await pending.deliver(message)

    async def _drain_stderr(self, process: SandboxProcess) -> None:
        budget, window = STDERR_LOG_LINES_PER_S, time.monotonic()
        while chunk := await process.receive_stderr():
            for line in self.stderr.feed(chunk):
                now = time.monotonic()
                if now - window >= 1.0:
                    budget, window = STDERR_LOG_LINES_PER_S, now

                if budget > 0 and line.strip():
                    budget -= 1
                    log.info("server_stderr", server=self.server, line=line[:500])

    async def send(self, message: Message) -> None:
        """Write one message to the server; raises ``DownstreamError``."""
        if self.process is None or self.closed:
            raise DownstreamError(f"server {self.server!r} is not running")

        try:
            await self.process.send(jsonrpc.encode(message))
        except OSError as exc:
            raise DownstreamError(f"server {self.server!r} closed its input") from exc

    async def send_request(
        self, message: Message, pending: Pending, *, timeout_s: float | None = None
    ) -> int:
        """Send a request under a fresh id; ``pending.deliver`` gets the response."""
        request_id = self.next_id()
        if timeout_s is not None:
            pending.deadline = time.monotonic() + timeout_s

        self.pending[request_id] = pending
        try:
            await self.send({**message, "id": request_id})
        except DownstreamError:
            self.pending.pop(request_id, None)
            raise

        return request_id

    async def request(self, method: str, params: Any, timeout_s: float) -> Any:
        """Send a request of the proxy's own and return its result."""
        done = anyio.Event()
        box: list[Message] = []

        async def deliver(response: Message) -> None:
            box.append(response)
            done.set()

        message: Message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params

        request_id = await self.send_request(message, Pending(method, deliver))
        with anyio.move_on_after(timeout_s):
            await done.wait()

        if not box:
            self.pending.pop(request_id, None)
            raise DownstreamError(
                f"server {self.server!r} did not answer {method} in {timeout_s:g} s"
            )

        response = box[0]
        if "error" in response:
            detail = jsonrpc.as_object(response["error"]).get("message", "")
            raise DownstreamError(f"server {self.server!r} refused {method}: {detail}")

        return response.get("result")

    async def _fail_pending(self, reason: str) -> None:
        pending, self.pending = self.pending, {}
        for request_id, entry in pending.items():
            error = jsonrpc.error_response(
                request_id,
                jsonrpc.SERVER_UNAVAILABLE,
                f"server {self.server!r} is unavailable: {reason}",
            )
            await entry.deliver(error)

    async def expire(self, now: float) -> list[tuple[int, Pending]]:
        """Remove and return the requests whose deadline has passed."""
        expired = [(i, p) for i, p in self.pending.items() if p.deadline <= now]
        for request_id, _ in expired:
            del self.pending[request_id]

        return expired

    async def stop(self) -> None:
        """Stop the process, bounded; safe to call more than once."""
        self.closed = True
        if self.process is not None:
            try:
                await self.process.stop()
            except SandboxError as exc:
                log.error("sandbox_stop_failed", server=self.server, error=str(exc))
