"""The link to one running instance of a tool server.

A ``Downstream`` owns one sandboxed process: it frames and decodes what the server
writes (within its policy's size bound), answers the proxy's own requests to it,
keeps the table of requests in flight with the ids the server knows them by,
drains stderr into a bounded tail kept for error messages, and stops a server
that no longer serves after being told to cancel. It knows routing and policy only
through its handler.
"""

from __future__ import annotations

import itertools
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import structlog

from mcp_sandbox_proxy.exceptions import DownstreamError, SandboxError
from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.jsonrpc import Message
from mcp_sandbox_proxy.gateway.lines import Line, LineFeed
from mcp_sandbox_proxy.sandbox.backend import Backend, SandboxProcess
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

log = structlog.get_logger(__name__)

# Stderr kept per server for error messages; older output is dropped.
STDERR_TAIL_BYTES = 8 * 1024
STDERR_TAIL_LINES = 20
# Error messages quote this much of the tail: enough for a traceback's last lines.
STDERR_QUOTE_CHARS = 500
# A server that floods stderr is still logged, at most this many lines a second
# (the rest are kept in the tail only).
STDERR_LOG_LINES_PER_S = 50
# A server whose stdout ended has this long to exit, and its stderr this long to
# end after that, before calls in flight are failed: well within a second.
EXIT_AFTER_EOF_S = 0.5
STDERR_SETTLE_S = 0.1
# Undecodable stdout lines and unmatched responses logged per server before they
# are only counted.
GARBAGE_LOG_LIMIT = 5
# A server told to cancel a request has this long to take the notice and answer a
# ping; one that does not is stuck (in the cancelled work, most likely) and is
# stopped, so that its pool restarts it.
CANCEL_GRACE_S = 2.0
# Requests a server sends the client wait this long for the client's answer,
# unless the server's policy bounds its calls more tightly.
CLIENT_ANSWER_TIMEOUT_S = 120.0

# Control characters are removed from stderr before it is quoted to the client.
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class DownstreamHandler(Protocol):
    """What the relay does with what a server sends."""

    async def on_server_message(self, link: Downstream, message: Message) -> None: ...

    async def on_server_ready(self, link: Downstream) -> None: ...

    async def on_server_exit(self, link: Downstream, reason: str) -> None: ...


ResponseCallback = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class InstanceBounds:
    """What the server's policy bounds for each of its instances."""

    max_message_bytes: int = jsonrpc.MAX_MESSAGE_BYTES
    client_answer_timeout_s: float = CLIENT_ANSWER_TIMEOUT_S


class Pending:
    """A request sent to the server that awaits its response.

    ``deliver`` takes the response (or the error that stands for it); a
    subclass may also finish a response at once, in the callback that read it
    (``deliver_now``). The relay's forwarded calls are such a subclass: one
    object per call, with no closures made for it.
    """

    __slots__ = ("client_id", "deadline", "method")

    def __init__(self, method: str, client_id: jsonrpc.RequestId | None = None):
        self.method = method
        self.client_id = client_id
        self.deadline = float("inf")

    async def deliver(self, response: Message) -> None:
        raise NotImplementedError

    def deliver_now(self, response: Message) -> bool:
        """Finish a plain success at once; False, having done nothing, when that
        needs a wait (``deliver`` then gets the response)."""
        return False


class Awaited(Pending):
    """A request of the proxy's own, whose response goes to ``callback``."""

    __slots__ = ("_callback",)

    def __init__(self, method: str, callback: ResponseCallback) -> None:
        super().__init__(method)
        self._callback = callback

    async def deliver(self, response: Message) -> None:
        await self._callback(response)


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
        bounds: InstanceBounds | None = None,
    ) -> None:
        self.server = server
        self.profile = profile
        self.spec = spec
        self.backend = backend
        self.bounds = bounds or InstanceBounds()
        self.process: SandboxProcess | None = None
        self.pending: dict[int, Pending] = {}
        self.initialize_result: Message | None = None
        self.stderr = StderrTail()
        self.ready = anyio.Event()
        self.closed = False
        self.garbage_lines = 0
        self.unmatched_responses = 0
        self.exit_reason = ""
        self._handler = handler
        self._ids = itertools.count(1)
        self._splitter = jsonrpc.LineSplitter(self.bounds.max_message_bytes)
        self._stderr_done = anyio.Event()
        self._exit_reason = ""
        self._probing = False

    @property
    def capabilities(self) -> dict[str, Any]:
        result = self.initialize_result or {}
        capabilities = result.get("capabilities")
        return jsonrpc.as_object(capabilities)

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

            with anyio.move_on_after(STDERR_SETTLE_S, shield=True):
                await self._stderr_done.wait()

            await self._fail_pending(self.with_stderr(self._reason(process)))
            if process.returncode is None:
                await process.stop()

            group.cancel_scope.cancel()

        process.close()
        reason = self._reason(process)
        self.exit_reason = self.with_stderr(reason)
        await self._handler.on_server_exit(self, reason)

    def _reason(self, process: SandboxProcess) -> str:
        if self._exit_reason:
            return self._exit_reason

        if process.returncode is None:
            return "server closed its output"

        return f"server exited with status {process.returncode}"

    def with_stderr(self, reason: str) -> str:
        """``reason`` followed by the end of the server's stderr, if it wrote any."""
        tail = self.stderr.text().strip()[-STDERR_QUOTE_CHARS:]
        tail = _CONTROL_CHARS.sub("", tail)
        return f"{reason}; stderr: {tail}" if tail else reason

    async def _read_stdout(self, process: SandboxProcess) -> None:
        lines = LineFeed(self._splitter, self._take_now)
        feed = process.feed_stdout(lines.push)
        if feed is None:
            # A backend without a descriptor to watch: its chunks come from a
            # task, and every line takes the task's way.
            while chunk := await process.receive():
                for line in self._splitter.feed(chunk):
                    if not await self._on_any_line(line):
                        return
            return

        lines.resume = feed.resume
        try:
            while (line := await lines.next_line()) is not None:
                if not await self._on_any_line(line):
                    return
        finally:
            feed.close()

    async def _on_any_line(self, line: Line) -> bool:
        """Handle one line of stdout; False when reading must end."""
        if isinstance(line, jsonrpc.FrameTooLarge):
            limit = self._splitter.max_bytes
            log.error("server_message_too_large", server=self.server, limit=limit)
            await self.stop(f"server sent a message over {limit} bytes and was stopped")
            return False

        if line and not line.isspace():
            await self._on_line(line)

        return True

    def _take_now(self, message: Message) -> bool:
        """A message dealt with where it arrived: a well-formed response whose
        request can be finished at once (see ``Pending.deliver_now``). Anything
        else is left to ``_on_any_line``."""
        request_id = message.get("id")
        if type(request_id) is not int:
            return False

        # Only a plain success is finished here: an error, or anything odd, is
        # checked and reported on the task's way.
        pending = self.pending.get(request_id)
        if (
            pending is None
            or "method" in message
            or "error" in message
            or type(message.get("result")) is not dict
            or not pending.deliver_now(message)
        ):
            return False

        del self.pending[request_id]
        return True

    async def _on_line(self, line: bytes) -> None:
        try:
            message = jsonrpc.decode(line)
        except jsonrpc.DecodeError as exc:
            self._ignore(str(exc), line)
            return

        try:
            if "method" not in message:
                await self._on_response(message, line)
            elif _well_formed(message):
                await self._handler.on_server_message(self, message)
            else:
                self._ignore("method is not a string or params not an object", line)
        except Exception:
            # A bug must cost one message, never the link: log its traceback.
            log.exception("server_message_failed", server=self.server)

    def _ignore(self, reason: str, line: bytes) -> None:
        self.garbage_lines += 1
        if self.garbage_lines <= GARBAGE_LOG_LIMIT:
            log.warning(
                "server_output_ignored",
                server=self.server,
                reason=reason,
                sample=line[:120].decode(errors="replace"),
            )

    async def _on_response(self, message: Message, line: bytes) -> None:
        if not jsonrpc.is_response(message):
            self._ignore("neither a request, a notification nor a response", line)
            return

        request_id = message.get("id")
        pending = (
            self.pending.pop(request_id, None) if type(request_id) is int else None
        )
        if pending is None:
            self._unmatched(request_id)
            return

        problem = jsonrpc.response_problem(message)
        if problem is not None:
            log.warning("server_response_invalid", server=self.server, problem=problem)
            message = jsonrpc.error_response(
                request_id,
                jsonrpc.INTERNAL_ERROR,
                f"server {self.server!r} answered {pending.method} wrongly: {problem}",
            )

        await pending.deliver(message)

    def _unmatched(self, request_id: Any) -> None:
        """Count (and log the first few) responses to unknown ids, duplicates and
        late answers to cancelled requests."""
        self.unmatched_responses += 1
        if self.unmatched_responses <= GARBAGE_LOG_LIMIT:
            log.warning(
                "server_response_unmatched", server=self.server, id=str(request_id)[:40]
            )

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

        self._stderr_done.set()

    def input_ready(self) -> bool:
        """True when ``send_request_now`` may be used: the server takes input now."""
        return (
            self.process is not None and not self.closed and self.process.input_ready()
        )

    def send_request_now(
        self, message: Message, pending: Pending, timeout_s: float, request_id: int
    ) -> None:
        """``send_request`` for a caller that checked ``input_ready`` and gives up
        ``message``: its id is set in place."""
        assert self.process is not None
        pending.deadline = time.monotonic() + timeout_s
        self.pending[request_id] = pending
        message["id"] = request_id
        self.process.send_nowait(jsonrpc.encode(message))

    async def send(self, message: Message) -> None:
        """Write one message to the server; raises ``DownstreamError``."""
        if self.process is None or self.closed:
            raise DownstreamError(f"server {self.server!r} is not running")

        try:
            await self.process.send(jsonrpc.encode(message))
        except OSError as exc:
            raise DownstreamError(f"server {self.server!r} closed its input") from exc

    async def send_request(
        self,
        message: Message,
        pending: Pending,
        *,
        timeout_s: float | None = None,
        request_id: int | None = None,
    ) -> int:
        """Send a request under a fresh id (or ``request_id``, taken from
        ``next_id``); ``pending.deliver`` gets the response."""
        if request_id is None:
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

        request_id = await self.send_request(message, Awaited(method, deliver))
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

    async def cancel(self, request_ids: Sequence[int], reason: str) -> None:
        """Send ``notifications/cancelled`` for ``request_ids``, then check that
        the server still serves: one that does not take the notices and answer a
        ping within ``CANCEL_GRACE_S`` is stopped (its pool restarts it)."""
        with anyio.move_on_after(CANCEL_GRACE_S) as scope:
            try:
                for request_id in request_ids:
                    await self.send(_cancelled(request_id, reason))

                if not self._probing:
                    self._probing = True
                    try:
                        await self._ping()
                    finally:
                        self._probing = False
            except DownstreamError:
                return  # gone already: its pool takes it from here

        if scope.cancelled_caught and not self.closed:
            log.warning("server_stuck_after_cancel", server=self.server)
            await self.stop(
                f"server did not answer a ping within {CANCEL_GRACE_S:g} s of a"
                " cancellation and was stopped"
            )

    async def _ping(self) -> None:
        """Return once the server answers a ping; any answer shows it serves."""
        answered = anyio.Event()

        async def deliver(_: Message) -> None:
            answered.set()

        message: Message = {"jsonrpc": "2.0", "method": "ping"}
        request_id = await self.send_request(message, Awaited("ping", deliver))
        try:
            await answered.wait()
        finally:
            self.pending.pop(request_id, None)

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

    async def stop(self, reason: str | None = None) -> None:
        """Stop the process, bounded; safe to call more than once. With a
        ``reason``, requests in flight are failed with it at once."""
        self.closed = True
        if reason is not None:
            self._exit_reason = self._exit_reason or reason
            await self._fail_pending(self.with_stderr(reason))

        if self.process is not None:
            try:
                await self.process.stop()
            except SandboxError as exc:
                log.error("sandbox_stop_failed", server=self.server, error=str(exc))


def _well_formed(message: Message) -> bool:
    """A request or notification the relay can read: JSON-RPC wants a string
    method, MCP wants params to be an object."""
    params = message.get("params")
    return isinstance(message["method"], str) and (
        params is None or isinstance(params, dict)
    )


def _cancelled(request_id: int, reason: str) -> Message:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": reason},
    }
