"""Showing records: filters by server, tool, decision and time; table and JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import anyio
import pytest

from mcp_sandbox_proxy.audit import AuditLog
from mcp_sandbox_proxy.audit.show import (
    Filters,
    RecordReader,
    parse_time,
    render_json,
    render_table,
)
from mcp_sandbox_proxy.config import AuditConfig

from .conftest import CALL, read_lines, write_lines


@pytest.fixture
def mixed_log(log_path: Path) -> Path:
    """Calls to two servers and tools, one denied, plus a sandbox event."""

    async def write() -> None:
        audit = AuditLog.open(AuditConfig(path=log_path), instance="i")
        await audit.write("call_intent", **CALL, arguments={"path": "/a"})
        await audit.write("call_outcome", **CALL, total_ms=2.25, result_bytes=7)
        git = CALL | {"server": "git", "tool": "git_push", "decision": "deny"}
        await audit.write("call_denied", **git, reason="tool not allowed")
        await audit.write(
            "sandbox_exited", server="git", sandbox_id="ns-7", exit_status=0
        )
        await audit.aclose()

    anyio.run(write)
    return log_path


def shown(path: Path, filters: Filters) -> list[str]:
    """The events of the records that pass ``filters``."""
    return [r["event"] for r in RecordReader([path]) if filters.matches(r)]


def test_no_filter_shows_every_record(mixed_log: Path) -> None:
    """All records come back in chain order."""
    assert shown(mixed_log, Filters()) == [
        "audit_opened",
        "call_intent",
        "call_outcome",
        "call_denied",
        "sandbox_exited",
        "audit_closed",
    ]


def test_filters_by_server_tool_glob_and_decision(mixed_log: Path) -> None:
    """Server and tool take glob patterns; the decision must match exactly."""
    assert shown(mixed_log, Filters(server="git")) == ["call_denied", "sandbox_exited"]
    assert shown(mixed_log, Filters(tool="read_*")) == ["call_intent", "call_outcome"]
    assert shown(mixed_log, Filters(decision="deny")) == ["call_denied"]
    assert shown(mixed_log, Filters(server="files", decision="deny")) == []


def test_filters_by_time_range(mixed_log: Path) -> None:
    """Records outside [since, until] are left out."""
    stamps = [json.loads(line)["ts"] for line in read_lines(mixed_log)]
    since, until = parse_time(stamps[1]), parse_time(stamps[2])

    assert shown(mixed_log, Filters(since=since, until=until)) == [
        "call_intent",
        "call_outcome",
    ]
    assert shown(mixed_log, Filters(since=datetime(2999, 1, 1, tzinfo=UTC))) == []


def test_times_without_a_zone_are_utc() -> None:
    """A bare date or time is read as UTC; a bad one is named in the error."""
    assert parse_time("2025-06-01") == datetime(2025, 6, 1, tzinfo=UTC)
    assert parse_time("2025-06-01T12:00Z") == datetime(2025, 6, 1, 12, tzinfo=UTC)
    with pytest.raises(ValueError, match="'yesterday' is not an ISO 8601"):
        parse_time("yesterday")


def test_table_has_a_heading_and_a_readable_row_per_record(mixed_log: Path) -> None:
    """Columns line up; details summarise each kind of event."""
    rows = list(render_table(RecordReader([mixed_log])))

    assert rows[0].split() == [
        "SEQ", "TIME", "EVENT", "SERVER", "TOOL", "DECISION", "RULE", "DETAIL"
    ]  # fmt: skip
    assert len(rows) == 7
    assert rows[3].split()[3:] == [
        "call_outcome", "files", "read_file", "allow", "tools.read_*", "ok", "2.2",
        "ms", "7", "B",
    ]  # fmt: skip
    assert "tool not allowed" in rows[4]
    assert "sandbox_id=ns-7 exit_status=0" in rows[5]
    start = rows[0].index("EVENT")
    assert all(row[start - 2 : start] == "  " != row[start : start + 2] for row in rows)


def test_json_output_is_one_record_per_line_with_its_hash(mixed_log: Path) -> None:
    """``--json`` gives each record as written, hash included."""
    lines = list(render_json(RecordReader([mixed_log])))

    parsed = [json.loads(line) for line in lines]
    assert [p["hash"] for p in parsed] == [
        json.loads(line)["hash"] for line in read_lines(mixed_log)
    ]


def test_lines_that_are_not_records_are_skipped_and_counted(mixed_log: Path) -> None:
    """Showing does not verify, but it says which lines it could not read."""
    lines = read_lines(mixed_log)
    lines[2] = b"not a record\n"
    write_lines(mixed_log, lines)
    reader = RecordReader([mixed_log])

    events = [record["event"] for record in reader]

    assert "call_outcome" not in events
    assert reader.skipped == [(mixed_log, 3)]


def test_control_characters_in_values_are_shown_escaped(log_path: Path) -> None:
    """A terminal escape or bidi override in a value cannot act on the terminal."""

    async def write() -> None:
        audit = AuditLog.open(AuditConfig(path=log_path), instance="i")
        await audit.write("call_denied", **CALL | {"tool": "x\x1b[2J\u202ey"})
        await audit.aclose()

    anyio.run(write)

    table = "".join(render_table(RecordReader([log_path])))
    assert "\x1b" not in table and "\u202e" not in table
    assert "x\\x1b[2J\\u202ey" in table
