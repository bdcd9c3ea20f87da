"""``FdFeed`` and ``FdWriter.write_nowait`` on real pipes, on a plain asyncio
loop (its readable callback reads) and on the proxy's (its selector does)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from mcp_sandbox_proxy.fdio import FdFeed, FdWriter, relay_loop

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio loop", "relay loop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if request.param == "relay loop":
        return "asyncio", {"loop_factory": relay_loop(0.001)}

    return "asyncio", {}


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    yield read_fd, write_fd
    for fd in (read_fd, write_fd):
        with contextlib.suppress(OSError):
            os.close(fd)


async def settle() -> None:
    """Let the loop run its readable callbacks."""
    for _ in range(5):
        await anyio.sleep(0.01)


async def test_chunks_reach_the_callback_and_the_end_is_told_once(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    chunks: list[bytes] = []
    feed = FdFeed(read_fd, lambda chunk: chunks.append(chunk) is None)
    feed.resume()

    os.write(write_fd, b"one\n")
    await settle()
    os.write(write_fd, b"two\n")
    os.close(write_fd)
    await settle()

    assert b"".join(chunks) == b"one\ntwo\n"
    assert chunks[-1] == b"" and chunks.count(b"") == 1
    feed.close()


async def test_a_refused_chunk_pauses_reading_until_resumed(
    pipe: tuple[int, int],
) -> None:
    read_fd, write_fd = pipe
    chunks: list[bytes] = []

    def take(chunk: bytes) -> bool:
        chunks.append(chunk)
        return False

    feed = FdFeed(read_fd, take)
    feed.resume()
    os.write(write_fd, b"first")
    await settle()
    os.write(write_fd, b"second")
    await settle()
    assert chunks == [b"first"], "paused: the second write is not read"

    feed.resume()
    await settle()
    assert chunks == [b"first", b"second"]
    feed.close()


async def test_what_the_callback_writes_is_flushed(
    pipe: tuple[int, int],
) -> None:
    """A relay's own path: a chunk read, and written on at once to another pipe."""
    read_fd, write_fd = pipe
    out_read_fd, out_write_fd = os.pipe()
    os.set_blocking(out_read_fd, False)
    writer = FdWriter(out_write_fd)
    feed = FdFeed(read_fd, lambda chunk: writer.write_nowait(chunk.upper()) is None)
    feed.resume()
    try:
        os.write(write_fd, b"one\n")
        os.write(write_fd, b"two\n")
        await settle()
        assert os.read(out_read_fd, 100) == b"ONE\nTWO\n"
    finally:
        feed.close()
        writer.close()
        os.close(out_read_fd)
        os.close(out_write_fd)


async def test_write_nowait_queues_in_order_with_write(pipe: tuple[int, int]) -> None:
    read_fd, write_fd = pipe
    writer = FdWriter(write_fd, high_water_bytes=8)
    assert writer.ready

    writer.write_nowait(b"a" * 6)
    await writer.write(b"b" * 6)  # over the mark: waits until the pipe took it
    writer.write_nowait(b"c")
    await settle()

    assert os.read(read_fd, 100) == b"aaaaaabbbbbbc"
    writer.close()
    assert not writer.ready
    with pytest.raises(OSError):
        writer.write_nowait(b"late")
