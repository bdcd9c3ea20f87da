"""The client-facing channel: the proxy's own stdin and stdout.

stdout carries nothing but MCP messages. Input that is not a JSON-RPC message is
answered with the error the protocol prescribes and the channel keeps serving; no
message, however malformed, ends it.
"""

from __future__ import annotations

import os
from typing import Protocol

import structlog

from mcp_sandbox_proxy.fdio import FdFeed, FdWriter
from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.jsonrpc import Message
from mcp_sandbox_proxy.gateway.lines import LineFeed

log = structlog.get_logger(__name__)


class ClientHandler(Protocol):
    """What the relay does with a message from the client."""

    def take_now(self, message: Message) -> bool:
        """Deal with a decoded message at once if it is well-formed and nothing
        needs a wait; False, having done nothing, leaves it to the channel's own
        checks and then ``on_client_message``."""
        ...

    async def on_client_message(self, message: Message) -> None: ...


class ClientChannel:
    """Reads messages from the client and writes messages to it."""

    def __init__(self, read_fd: int = 0, write_fd: int = 1) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._writer: FdWriter | None = None
        self._splitter = jsonrpc.LineSplitter()
        self.broken = False
        # Chunks read from the client so far: a measure of activity.
        self.chunks_read = 0
        for fd in (read_fd, write_fd):
            os.set_blocking(fd, False)

    @property
    def output_ready(self) -> bool:
        """True when ``send_now`` may be used: the client takes output now."""
        return not self.broken and self._writer is not None and self._writer.ready

    def send_now(self, message: Message) -> None:
        """``send`` for a caller that checked ``output_ready`` and cannot wait."""
        assert self._writer is not None
        try:
            self._writer.write_nowait(jsonrpc.encode(message))
        except OSError as exc:
            self.broken = True
            log.warning("client_output_closed", error=str(exc))

    async def send(self, message: Message) -> None:
        """Write one message to the client; a gone client is logged once."""
        if self.broken:
            return

        if self._writer is None:
            self._writer = FdWriter(self._write_fd)

        try:
            await self._writer.write(jsonrpc.encode(message))
        except OSError as exc:
            self.broken = True
            log.warning("client_output_closed", error=str(exc))

    async def serve(self, handler: ClientHandler) -> None:
        """Feed every client message to ``handler`` until end of input."""

        def push(chunk: bytes) -> bool:
            self.chunks_read += 1
            return lines.push(chunk)

        lines = LineFeed(self._splitter, handler.take_now)
        feed = FdFeed(self._read_fd, push)
        lines.resume = feed.resume
        feed.resume()
        try:
            while (line := await lines.next_line()) is not None:
                if isinstance(line, jsonrpc.FrameTooLarge):
                    await self.send(
                        jsonrpc.error_response(
                            None,
                            jsonrpc.INVALID_REQUEST,
                            f"Invalid Request: message over {jsonrpc.MAX_MESSAGE_BYTES}"
                            " bytes",
                        )
                    )
                elif line and not line.isspace():
                    await self._dispatch(line, handler)
        finally:
            feed.close()

    async def _dispatch(self, line: bytes, handler: ClientHandler) -> None:
        try:
            message = jsonrpc.decode(line)
        except jsonrpc.DecodeError as exc:
            log.warning("client_message_refused", reason=str(exc))
            await self.send(jsonrpc.error_response(exc.request_id, exc.code, str(exc)))
            return

        if "method" in message and not isinstance(message["method"], str):
            await self.send(
                jsonrpc.error_response(
                    jsonrpc.valid_id(message),
                    jsonrpc.INVALID_REQUEST,
                    "Invalid Request: method must be a string",
                )
            )
            return

        if "id" in message and jsonrpc.valid_id(message) is None:
            await self.send(
                jsonrpc.error_response(
                    None,
                    jsonrpc.INVALID_REQUEST,
                    "Invalid Request: id must be a string or an integer",
                )
            )
            return

        try:
            await handler.on_client_message(message)
        except Exception as exc:
            # A bug must cost one message, never the connection: log it, and
            # answer a request so that its caller does not wait forever.
            log.exception("client_message_failed")
            if jsonrpc.is_request(message):
                error = jsonrpc.error_response(
                    message["id"],
                    jsonrpc.INTERNAL_ERROR,
                    f"Internal error: {type(exc).__name__}",
                )
                await self.send(error)

    def close(self) -> None:
        for fd in (self._read_fd, self._write_fd):
            os.set_blocking(fd, True)
