"""Taking the Docker engine's attach stream apart into stdout and stderr frames."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox_proxy.exceptions import DownstreamError
from mcp_sandbox_proxy.sandbox._docker_frames import (
    MAX_FRAME_BYTES,
    STDERR,
    STDOUT,
    FrameDecoder,
    payload_of,
)


def frame(stream: int, payload: bytes) -> bytes:
    """A frame as the engine writes it: stream, three zero bytes, length, payload."""
    return bytes([stream, 0, 0, 0]) + struct.pack(">I", len(payload)) + payload


def test_a_whole_frame_decodes_to_its_stream_and_payload() -> None:
    """One complete frame fed at once comes out as (stream, payload)."""
    decoder = FrameDecoder()

    assert decoder.feed(frame(STDOUT, b'{"id":1}\n')) == [(STDOUT, b'{"id":1}\n')]
    assert decoder.pending_bytes == 0


def test_frames_split_anywhere_come_out_whole_and_in_order() -> None:
    """Bytes fed one at a time yield each frame once it is complete."""
    stream = frame(STDOUT, b"out") + frame(STDERR, b"err") + frame(STDOUT, b"")
    decoder = FrameDecoder()

    frames = [f for byte in stream for f in decoder.feed(bytes([byte]))]

    assert frames == [(STDOUT, b"out"), (STDERR, b"err"), (STDOUT, b"")]


def test_an_unfinished_frame_is_held_until_its_end_arrives() -> None:
    """A header and half a payload give nothing; the rest gives the frame."""
    data = frame(STDERR, b"traceback")
    decoder = FrameDecoder()

    assert decoder.feed(data[:12]) == []
    assert decoder.pending_bytes == 12
    assert decoder.feed(data[12:]) == [(STDERR, b"traceback")]


@given(
    st.lists(st.tuples(st.sampled_from([STDOUT, STDERR]), st.binary(max_size=300))),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_any_split_of_any_frames_decodes_to_the_same_frames(
    frames: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    """Wherever the socket cuts the stream, the decoded frames are the written ones."""
    stream = b"".join(frame(number, payload) for number, payload in frames)
    bounds = sorted({0, len(stream), *(c for c in cuts if c < len(stream))})
    decoder = FrameDecoder()
    pieces = [stream[start:end] for start, end in itertools.pairwise(bounds)]

    decoded = [f for piece in pieces for f in decoder.feed(piece)]

    assert decoded == frames
    assert decoder.pending_bytes == 0


def test_payload_of_keeps_one_stream_in_order() -> None:
    """Only the chosen stream's payloads are joined, in the order they came."""
    frames = [(STDOUT, b"a"), (STDERR, b"x"), (STDOUT, b"b")]

    assert payload_of(frames, STDOUT) == b"ab"
    assert payload_of(frames, STDERR) == b"x"


def test_an_unknown_stream_number_is_an_error_naming_the_byte() -> None:
    """Stream 7 is no stream the engine writes; the error says which and where."""
    decoder = FrameDecoder()
    decoder.feed(frame(STDOUT, b"ok"))

    with pytest.raises(DownstreamError, match=r"byte 10: unknown stream number 7"):
        decoder.feed(frame(7, b"?"))


def test_non_zero_reserved_bytes_are_an_error() -> None:
    """A header whose padding is not zero is not an engine frame."""
    bad = bytes([STDOUT, 0, 1, 0]) + struct.pack(">I", 1) + b"x"

    with pytest.raises(DownstreamError, match="reserved bytes 000100 are not zero"):
        FrameDecoder().feed(bad)


def test_a_frame_length_past_the_bound_is_refused_before_buffering() -> None:
    """A header announcing more than the bound fails at once, not after reading it."""
    header = bytes([STDOUT, 0, 0, 0]) + struct.pack(">I", MAX_FRAME_BYTES + 1)

    with pytest.raises(DownstreamError, match="exceeds"):
        FrameDecoder().feed(header)
