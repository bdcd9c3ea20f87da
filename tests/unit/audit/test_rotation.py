"""Rotation by size and by age, with the chain continued across files."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import anyio

from mcp_sandbox_proxy.audit import AuditLog, verify_files
from mcp_sandbox_proxy.audit._files import rotated_path
from mcp_sandbox_proxy.audit._journal import Entry, Journal
from mcp_sandbox_proxy.config import AuditConfig

from .conftest import CALL, WriteLog, read_lines


def first(path: Path) -> dict[str, object]:
    """The first record of ``path``."""
    return json.loads(read_lines(path)[0])


def last(path: Path) -> dict[str, object]:
    """The last record of ``path``."""
    return json.loads(read_lines(path)[-1])


def test_a_log_past_its_size_bound_moves_aside_named_by_its_last_record(
    write_log: WriteLog, log_path: Path
) -> None:
    """Each rotated file ends at the sequence number in its name."""
    write_log(calls=6, rotate_bytes=2000)

    rotated = sorted(log_path.parent.glob("audit.jsonl.*"))
    assert len(rotated) >= 2
    for path in rotated:
        assert path.name == rotated_path(log_path, int(str(last(path)["seq"]))).name
        assert path.stat().st_size < 2000 + 1000


def test_each_new_file_starts_with_a_header_linked_to_the_file_before(
    write_log: WriteLog, log_path: Path
) -> None:
    """The chain runs on across files, through a ``rotated`` header."""
    write_log(calls=6, rotate_bytes=2000)
    files = [*sorted(log_path.parent.glob("audit.jsonl.*")), log_path]

    for older, newer in itertools.pairwise(files):
        header = first(newer)
        assert (header["event"], header["reason"]) == ("audit_opened", "rotated")
        assert header["previous_file"] == older.name
        assert header["prev"] == last(older)["hash"]

    assert verify_files(files).ok


def test_a_log_older_than_its_age_bound_is_rotated_at_the_next_write(
    log_path: Path,
) -> None:
    """Age counts from the first record of the file, even across restarts."""
    journal = Journal(log_path, instance="old", durability="fsync", key=None)
    journal.reopen()
    old = Entry("config_loaded", "2020-01-01T00:00:00.000000Z", {})
    journal.store(journal.seal([old]), sync=True)
    journal.shut()

    async def write() -> None:
        settings = AuditConfig(path=log_path, rotate_seconds=3600)
        audit = AuditLog.open(settings, instance="new")
        await audit.write("call_intent", **CALL)
        await audit.aclose()

    anyio.run(write)

    rotated = rotated_path(log_path, 2)
    assert [json.loads(line)["event"] for line in read_lines(rotated)] == [
        "audit_opened",
        "config_loaded",
        "audit_opened",
    ]
    assert first(log_path)["reason"] == "rotated"
    assert verify_files([rotated, log_path]).ok


def test_a_rotation_cut_short_by_a_crash_is_continued_at_the_next_open(
    write_log: WriteLog, log_path: Path
) -> None:
    """If the log was moved aside but no new file made, the chain still goes on."""
    write_log(calls=1)
    moved = rotated_path(log_path, int(str(last(log_path)["seq"])))
    log_path.rename(moved)

    write_log(calls=1)

    header = first(log_path)
    assert (header["reason"], header["previous_file"]) == ("rotated", moved.name)
    assert verify_files([moved, log_path]).ok
