"""Where audit files live, how rotated files are named, and reading their ends."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp_sandbox_proxy.audit.chain import RecordFormatError, Sealed, unseal

APP_DIR = "mcp-sandbox-proxy"
DEFAULT_FILE = "audit.jsonl"

# Bytes read per step when searching backwards for the last complete line.
TAIL_STEP_BYTES = 64 * 1024

# Rotated files are named after the sequence number of their last record, padded
# so that names sort in chain order.
SEQ_DIGITS = 12


@dataclass(frozen=True)
class Tail:
    """The end of an existing audit file."""

    last_line: bytes | None
    complete_bytes: int
    partial: bytes


def default_audit_path(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_STATE_HOME/mcp-sandbox-proxy/audit.jsonl`` (``~/.local/state``)."""
    state = environ.get("XDG_STATE_HOME") or ""
    base = Path(state) if Path(state).is_absolute() else Path.home() / ".local/state"
    return base / APP_DIR / DEFAULT_FILE


def rotated_path(path: Path, last_seq: int) -> Path:
    """The name ``path`` is renamed to once its last record is ``last_seq``."""
    return path.with_name(f"{path.name}.{last_seq:0{SEQ_DIGITS}d}")


def rotated_siblings(path: Path) -> list[Path]:
    """Files rotated out of ``path``, oldest first."""
    pattern = re.compile(re.escape(path.name) + rf"\.\d{{{SEQ_DIGITS}}}")
    try:
        names = [e.name for e in os.scandir(path.parent) if pattern.fullmatch(e.name)]
    except OSError:
        return []

    return [path.with_name(name) for name in sorted(names)]


def read_tail(path: Path) -> Tail:
    """The last complete line of ``path`` and any bytes after it.

    Only the end of the file is read, so a large log opens quickly.
    """
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        end = size
        chunk = b""
        while end > 0:
            start = max(0, end - TAIL_STEP_BYTES)
            file.seek(start)
            chunk = file.read(end - start) + chunk
            end = start
            if chunk.count(b"\n") >= 2 or (end == 0 and b"\n" in chunk):
                break

    return _split_tail(chunk, size)


def _split_tail(chunk: bytes, size: int) -> Tail:
    cut = chunk.rfind(b"\n") + 1
    partial = chunk[cut:]
    if cut == 0:
        return Tail(None, 0, partial)

    begin = chunk.rfind(b"\n", 0, cut - 1) + 1
    return Tail(chunk[begin : cut - 1], size - len(partial), partial)


def first_record(path: Path) -> dict[str, Any] | None:
    """The first record of ``path``, or ``None`` if it has no readable one."""
    try:
        with path.open("rb") as file:
            line = file.readline()
    except OSError:
        return None

    if not line.endswith(b"\n"):
        return None

    try:
        return unseal(line[:-1]).record
    except RecordFormatError:
        return None


def chain_order(paths: Iterable[Path]) -> list[Path]:
    """``paths`` sorted by the sequence number of their first record.

    Files without a readable first record keep their given order, after the rest.
    """

    def key(item: tuple[int, Path]) -> tuple[int, int]:
        record = first_record(item[1]) or {}
        seq = record.get("seq")
        return (seq, item[0]) if isinstance(seq, int) else (1 << 62, item[0])

    return [path for _, path in sorted(enumerate(paths), key=key)]


def read_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Each line of ``path`` with its 1-based number, newline kept if present."""
    with path.open("rb") as file:
        yield from enumerate(file, start=1)


def parse_line(raw: bytes) -> Sealed:
    """The record on one raw line (newline included); ``RecordFormatError`` if not."""
    return unseal(raw.removesuffix(b"\n"))
