"""The lines of one peer's output, handled where they arrive when they can be.

Most messages on a busy connection are tool calls and their answers, which the
relay can pass on without waiting for anything. ``LineFeed`` decodes each line
and offers the message to such a quick handler right where the bytes come in
(the read that ``fdio.FdFeed`` makes when they arrive); a line it declines,
one too large, or one that is not a JSON-RPC message goes as it came to a task
that handles it with all the waiting (and error answers) it may need. Order is
kept: once a line waits, every line after it waits too, until the task has
caught up and finished with them. Blank lines are dropped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import anyio
import structlog

from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.jsonrpc import FrameTooLarge, LineSplitter, Message

log = structlog.get_logger(__name__)

Line = bytes | FrameTooLarge

# Bytes of declined lines held for the task; past this, reading pauses until
# the task has taken half of them.
MAX_WAITING_BYTES = 1024 * 1024


class LineFeed:
    """Splits chunks into lines and hands each to ``take_now`` or to the task.

    ``take_now(message)`` returns True when it has dealt with the decoded line,
    and False, having done nothing at all, to leave the line to ``next_line``.
    ``push`` returns False when the reader should pause; ``resume`` is then
    called once there is room again.
    """

    def __init__(
        self,
        splitter: LineSplitter,
        take_now: Callable[[Message], bool],
        resume: Callable[[], None] | None = None,
    ) -> None:
        self.resume = resume
        self._splitter = splitter
        self._take_now = take_now
        self._waiting: deque[Line] = deque()
        self._waiting_bytes = 0
        self._busy = False
        self._ended = False
        self._paused = False
        self._arrived: anyio.Event | None = None

    def push(self, chunk: bytes) -> bool:
        """Take the next chunk of the stream (``b""`` at its end)."""
        if chunk:
            waiting = self._waiting
            for line in self._splitter.feed(chunk):
                # A line that the task holds, or that waits before this one,
                # keeps this one from overtaking it.
                if waiting or self._busy or not self._take(line):
                    waiting.append(line)
                    self._waiting_bytes += _size(line)
        else:
            self._ended = True

        if self._arrived is not None and (self._waiting or self._ended):
            self._arrived.set()

        self._paused = self._waiting_bytes > MAX_WAITING_BYTES
        return not self._paused

    def _take(self, line: Line) -> bool:
        if type(line) is not bytes:
            return False  # too large: the task answers it

        try:
            message = jsonrpc.decode(line)
        except jsonrpc.DecodeError:
            # A blank line is dropped here; any other is the task's to answer.
            return not line or line.isspace()

        try:
            return self._take_now(message)
        except Exception:
            # A bug must cost one message, never the stream; and a message half
            # handled must not be handled twice, so the line counts as taken.
            log.exception("line_handling_failed")
            return True

    async def next_line(self) -> Line | None:
        """The next line left to the task, in order; None at the end of the stream.
        The line counts as being handled until the next call."""
        self._busy = False
        while not self._waiting:
            if self._ended:
                return None

            self._arrived = anyio.Event()
            try:
                await self._arrived.wait()
            finally:
                self._arrived = None

        line = self._waiting.popleft()
        self._waiting_bytes -= _size(line)
        self._busy = True
        if self._paused and self._waiting_bytes <= MAX_WAITING_BYTES // 2:
            self._paused = False
            if self.resume is not None:
                self.resume()

        return line


def _size(line: Line) -> int:
    return len(line) if isinstance(line, bytes) else 0
