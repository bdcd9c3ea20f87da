"""``LineSplitter``: a byte stream cut into bounded lines, chunk by chunk."""

from __future__ import annotations

from mcp_sandbox_proxy.gateway.jsonrpc import FrameTooLarge, LineSplitter


def lines_of(splitter: LineSplitter, *chunks: bytes) -> list[bytes | str]:
    found: list[bytes | str] = []
    for chunk in chunks:
        for line in splitter.feed(chunk):
            found.append("too large" if isinstance(line, FrameTooLarge) else line)

    return found


def test_a_chunk_of_several_messages_gives_each_line() -> None:
    """Three messages in one read come out as three lines, blank ones kept."""
    splitter = LineSplitter()

    assert lines_of(splitter, b"{}\n{}\n\n[1]\n") == [b"{}", b"{}", b"", b"[1]"]


def test_a_line_split_across_chunks_is_joined() -> None:
    """The end of one chunk and the start of the next make one line."""
    splitter = LineSplitter()

    assert lines_of(splitter, b'{"a":', b"1}\n{", b"}\n") == [b'{"a":1}', b"{}"]


def test_an_oversized_line_is_refused_and_the_next_one_kept() -> None:
    """A line past the bound is reported once; the stream goes on after it."""
    splitter = LineSplitter(max_bytes=8)

    found = lines_of(splitter, b"0123456789", b"abc\nok\n", b"0123456789\nfine\n")

    assert found == ["too large", b"ok", "too large", b"fine"]
