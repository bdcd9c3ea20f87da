"""Demultiplexing of the Docker engine's attach stream, without any I/O.

A container without a terminal gets its output framed by the engine: each frame is
an 8-byte header (the stream: 0 stdin, 1 stdout, 2 stderr; three zero bytes; the
payload length as a big-endian 32-bit number) followed by the payload. The decoder
takes bytes in whatever pieces the socket delivers and returns whole frames.
"""

from __future__ import annotations

import struct

from mcp_sandbox_proxy.exceptions import DownstreamError

STDIN = 0
STDOUT = 1
STDERR = 2
HEADER = struct.Struct(">B3sI")
HEADER_BYTES = HEADER.size

# The engine copies container output in chunks of 32 KiB, so no real frame comes
# near this; a larger length means the stream is not what we think it is, and
# buffering it would let a broken stream grow the proxy without bound.
MAX_FRAME_BYTES = 16 * 1024 * 1024

Frame = tuple[int, bytes]


class FrameDecoder:
    """Turns attach-stream bytes, fed in any pieces, into ``(stream, payload)``."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0
        # Stream bytes already dropped from the buffer, to place errors.
        self._consumed = 0

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame they complete, in order.

        Raises ``DownstreamError`` on a header no engine writes.
        """
        self._buffer += data
        frames: list[Frame] = []
        while (frame := self._next_frame()) is not None:
            frames.append(frame)

        del self._buffer[: self._offset]
        self._consumed += self._offset
        self._offset = 0
        return frames

    @property
    def pending_bytes(self) -> int:
        """Bytes of a frame begun but not finished (non-zero at a cut-off end)."""
        return len(self._buffer) - self._offset

    def _next_frame(self) -> Frame | None:
        start = self._offset
        if len(self._buffer) - start < HEADER_BYTES:
            return None

        stream, padding, size = HEADER.unpack_from(self._buffer, start)
        _check_header(stream, padding, size, at=self._consumed + start)
        end = start + HEADER_BYTES + size
        if len(self._buffer) < end:
            return None

        self._offset = end
        return stream, bytes(self._buffer[start + HEADER_BYTES : end])


def payload_of(frames: list[Frame], stream: int) -> bytes:
    """The payloads of ``stream``'s frames, joined."""
    return b"".join(payload for number, payload in frames if number == stream)


def _check_header(stream: int, padding: bytes, size: int, *, at: int) -> None:
    where = f"Docker attach stream, frame header at byte {at}"
    if stream not in (STDIN, STDOUT, STDERR):
        raise DownstreamError(f"{where}: unknown stream number {stream} (expected 0-2)")

    if padding != b"\0\0\0":
        raise DownstreamError(f"{where}: reserved bytes {padding.hex()} are not zero")

    if size > MAX_FRAME_BYTES:
        raise DownstreamError(
            f"{where}: frame of {size} bytes exceeds the {MAX_FRAME_BYTES}-byte bound"
        )
