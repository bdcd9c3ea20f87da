"""Reading audit files for people: filtering records and rendering them.

Showing does not verify: lines that are not records are skipped and counted, and
``audit-log verify`` says whether what is shown can be trusted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from mcp_sandbox_proxy.audit._files import chain_order, parse_line, read_lines
from mcp_sandbox_proxy.audit.chain import RecordFormatError

COLUMNS = ("seq", "time", "event", "server", "tool", "decision", "rule", "detail")
# Wide enough for typical values, narrow enough that a row fits a wide terminal.
MAX_COLUMN_CHARS = {"event": 18, "server": 20, "tool": 28, "rule": 24, "detail": 60}
ELLIPSIS = "..."


@dataclass(frozen=True)
class Filters:
    """Which records to show; ``server`` and ``tool`` accept glob patterns."""

    server: str | None = None
    tool: str | None = None
    decision: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, record: dict[str, Any]) -> bool:
        """Whether ``record`` passes every filter that is set."""
        if not _glob(self.server, record.get("server")):
            return False

        if not _glob(self.tool, record.get("tool")):
            return False

        if self.decision is not None and record.get("decision") != self.decision:
            return False

        return self._in_time(record.get("ts"))

    def _in_time(self, ts: Any) -> bool:
        if self.since is None and self.until is None:
            return True

        when = _parse_ts(ts)
        if when is None:
            return False

        return (self.since is None or when >= self.since) and (
            self.until is None or when <= self.until
        )


@dataclass
class RecordReader:
    """Reads the records of audit files in chain order, noting skipped lines.

    Each record is given with its ``hash``, which names it in other tools.
    """

    paths: list[Path]
    skipped: list[tuple[Path, int]] = field(default_factory=lambda: [])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for path in chain_order(self.paths):
            for number, raw in read_lines(path):
                try:
                    sealed = parse_line(raw)
                except RecordFormatError:
                    self.skipped.append((path, number))
                    continue

                yield sealed.record | {"hash": sealed.hash}


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or time; without a zone it is taken as UTC."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ValueError(
            f"{text!r} is not an ISO 8601 date or time (e.g. 2025-06-01T12:00Z)"
        ) from exc

    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def render_json(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """Each record as one line of JSON."""
    for record in records:
        yield json.dumps(record) + "\n"


def render_table(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The records as an aligned table with a heading row."""
    rows = [_row(record) for record in records]
    widths = [
        max([len(name), *(len(row[i]) for row in rows)])
        for i, name in enumerate(COLUMNS)
    ]
    for row in [[name.upper() for name in COLUMNS], *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        yield "  ".join(cells).rstrip() + "\n"


def _row(record: dict[str, Any]) -> list[str]:
    values = {
        "seq": str(record.get("seq", "")),
        "time": _short_time(record.get("ts")),
        "event": str(record.get("event", "")),
        "server": _text(record.get("server")),
        "tool": _text(record.get("tool")),
        "decision": _text(record.get("decision")),
        "rule": _text(record.get("rule")),
        "detail": _detail(record),
    }
    return [_clip(values[name], MAX_COLUMN_CHARS.get(name)) for name in COLUMNS]


def _detail(record: dict[str, Any]) -> str:
    event = record.get("event")
    if event == "call_outcome":
        parts = ["error" if record.get("is_error") else "ok"]
        if isinstance(record.get("total_ms"), int | float):
            parts.append(f"{record['total_ms']:.1f} ms")

        if isinstance(record.get("result_bytes"), int):
            parts.append(f"{record['result_bytes']} B")

        return " ".join(parts)

    if event in ("call_intent", "call_denied"):
        arguments = json.dumps(record.get("arguments", {}), separators=(",", ":"))
        return _text(record.get("reason")) or arguments

    keys = ("sandbox_id", "exit_status", "limit", "value", "host", "port", "reason")
    keys += ("config_path", "previous_file")
    return " ".join(f"{k}={record[k]}" for k in keys if k in record)


def _short_time(ts: Any) -> str:
    when = _parse_ts(ts)
    if when is None:
        return _text(ts)

    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _parse_ts(ts: Any) -> datetime | None:
    if not isinstance(ts, str):
        return None

    try:
        when = datetime.fromisoformat(ts)
    except ValueError:
        return None

    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _glob(pattern: str | None, value: Any) -> bool:
    return pattern is None or (isinstance(value, str) and fnmatchcase(value, pattern))


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _clip(text: str, limit: int | None) -> str:
    text = _printable(text)
    if limit is None or len(text) <= limit:
        return text

    return text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _printable(text: str) -> str:
    # Values come from clients and servers: a terminal escape or a bidi override
    # must reach the reader's terminal as visible text, not act on it.
    if text.isprintable():
        return text

    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
