"""Checking audit files: each record's form, hash and MAC, the chain, the tail.

Files are read in chain order (by the sequence number of their first record),
so a rotated set can be given in any order. Each problem names the file, the
line and what is wrong; after one, checking goes on from the record at fault, so
one edit yields one problem rather than a cascade.

What the chain alone cannot show: records cut from the very end of the log (a
final record that is not ``audit_closed`` is noted, and the last hash is printed
so that a copy kept elsewhere can be compared), and a chain rewritten in full by
someone who can recompute hashes; an HMAC key kept outside the log closes that.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mcp_sandbox_proxy.audit._files import chain_order, parse_line, read_lines
from mcp_sandbox_proxy.audit.chain import (
    GENESIS_HASH,
    RecordFormatError,
    Sealed,
    body_hash,
    body_mac,
    key_id,
)
from mcp_sandbox_proxy.audit.records import CLOSE_EVENT, HEADER_EVENT, SCHEMA_VERSION

# Past this many problems the rest are likely consequences; stop listing them.
MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the log, where it is."""

    file: Path
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.kind}: {self.message}"


@dataclass(frozen=True)
class Position:
    """A record's place: file, line and sequence number."""

    file: Path
    line: int
    seq: int


@dataclass
class Report:
    """The outcome of verifying a set of audit files."""

    files: list[Path]
    records: int = 0
    problems: list[Problem] = field(default_factory=lambda: [])
    notes: list[str] = field(default_factory=lambda: [])
    valid_through: Position | None = None
    last_hash: str | None = None
    last_event: str | None = None

    @property
    def ok(self) -> bool:
        """Whether no problem was found."""
        return not self.problems


def verify_files(paths: Iterable[Path], *, key: bytes | None = None) -> Report:
    """Verify the audit files ``paths`` as one chain; ``OSError`` if unreadable."""
    checker = _Checker(chain_order(paths), key)
    for path in checker.report.files:
        if not checker.check_file(path):
            break

    return checker.finish()


def format_report(report: Report) -> str:
    """The report as text for people, one finding per line."""
    lines = [str(problem) for problem in report.problems]
    lines += [f"note: {note}" for note in report.notes]
    where = report.valid_through
    if report.ok and where is not None:
        lines.append(
            f"ok: {report.records} records in {len(report.files)} file(s) verified;"
            f" the chain ends at seq {where.seq} with hash {report.last_hash}"
        )
    elif where is not None:
        lines.append(
            f"FAILED: {len(report.problems)} problem(s); records verify up to"
            f" {where.file}:{where.line} (seq {where.seq})"
        )
    else:
        lines.append(f"FAILED: {len(report.problems)} problem(s); no record verifies")

    return "\n".join(lines) + "\n"


class _Checker:
    def __init__(self, files: list[Path], key: bytes | None) -> None:
        self.report = Report(files)
        self.key = key
        self.key_id = None if key is None else key_id(key)
        self.seq: int | None = None
        self.head: str | None = None
        self.resync = False
        self.macs_unchecked = False

    def check_file(self, path: Path) -> bool:
        """Check every line of ``path``; whether to go on to the next file."""
        for number, raw in read_lines(path):
            if len(self.report.problems) >= MAX_PROBLEMS:
                self.report.notes.append(f"stopped after {MAX_PROBLEMS} problems")
                return False

            self.check_line(path, number, raw)

        return True

    def check_line(self, path: Path, number: int, raw: bytes) -> None:
        if not raw.endswith(b"\n"):
            self.problem(path, number, "truncated", "the last line is incomplete")
            return

        try:
            sealed = parse_line(raw)
            seq = _envelope(sealed)
        except RecordFormatError as exc:
            self.problem(path, number, "malformed", str(exc))
            self.resync = True
            return

        found = len(self.report.problems)
        self.check_seal(path, number, sealed)
        if self.check_link(path, number, sealed, seq):
            self.seq, self.head, self.resync = seq, sealed.hash, False

        self.report.records += 1
        self.report.last_hash, self.report.last_event = (
            sealed.hash,
            sealed.record["event"],
        )
        if len(self.report.problems) == found == 0:
            self.report.valid_through = Position(path, number, seq)

    def check_seal(self, path: Path, number: int, sealed: Sealed) -> None:
        if body_hash(sealed.body) != sealed.hash:
            self.problem(path, number, "edited", "the content does not match its hash")

        record = sealed.record
        if record["event"] == HEADER_EVENT:
            self.check_key(path, number, record.get("key_id"))

        if self.key is None:
            self.macs_unchecked |= sealed.mac is not None
        elif sealed.mac is None:
            self.problem(path, number, "forged", "the record carries no HMAC")
        elif not hmac.compare_digest(body_mac(self.key, sealed.body), sealed.mac):
            self.problem(path, number, "forged", "the HMAC does not match the record")

    def check_key(self, path: Path, number: int, logged_id: object) -> None:
        if self.key_id is not None and logged_id not in (None, self.key_id):
            self.problem(
                path,
                number,
                "wrong_key",
                f"the log was written with key {logged_id}, not the one given"
                f" ({self.key_id})",
            )

    def check_link(self, path: Path, number: int, sealed: Sealed, seq: int) -> bool:
        """Check the record follows the one before; whether to follow on from it.

        A record that goes back in sequence is not followed on from, so a moved
        or repeated record is one problem, not a cascade.
        """
        prev, event = sealed.record["prev"], sealed.record["event"]
        if self.seq is None:
            self.check_start(path, number, prev, event)
            return True

        found = None if self.resync else _link_problem(self.seq, self.head, sealed)
        if found is None:
            return True

        self.problem(path, number, *found)
        return found[0] != "out_of_order"

    def check_start(self, path: Path, number: int, prev: str, event: str) -> None:
        if event != HEADER_EVENT:
            message = "the chain does not start with a header record: records removed"
            self.problem(path, number, "bad_start", message)
        elif prev != GENESIS_HASH:
            message = "the chain continues from a file that was not given"
            self.problem(path, number, "bad_start", message)

    def problem(self, path: Path, number: int, kind: str, message: str) -> None:
        self.report.problems.append(Problem(path, number, kind, message))

    def finish(self) -> Report:
        report = self.report
        if report.records == 0 and not report.problems:
            where = report.files[0] if report.files else Path("-")
            self.problem(where, 0, "empty", "no audit record found")

        if self.macs_unchecked:
            report.notes.append("records carry HMACs; give --hmac-key-file to check")

        if report.records and report.last_event != CLOSE_EVENT:
            report.notes.append(
                "the log does not end with a closing record: the proxy is running or"
                " stopped abruptly (records cut from the end cannot be detected)"
            )

        return report


def _link_problem(
    last: int, head: str | None, sealed: Sealed
) -> tuple[str, str] | None:
    record = sealed.record
    seq, expected = record["seq"], last + 1
    if record["prev"] == GENESIS_HASH and record["event"] == HEADER_EVENT:
        return "restarted", "a new chain starts here, unlinked to the records before"

    if seq > expected:
        missing = f"record(s) {expected}..{seq - 1} missing or moved"
        return "gap", f"expected record {expected}, found {seq}: {missing}"

    if seq < expected:
        return "out_of_order", f"record {seq} follows record {last}: moved or repeated"

    if record["prev"] != head:
        return "unlinked", "it does not link to the record before: replaced or inserted"

    return None


def _envelope(sealed: Sealed) -> int:
    record = sealed.record
    seq, prev, event = record.get("seq"), record.get("prev"), record.get("event")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise RecordFormatError("the record has no valid 'seq'")

    if not isinstance(prev, str) or not isinstance(event, str):
        raise RecordFormatError("the record has no valid 'prev' or 'event'")

    if record.get("v") != SCHEMA_VERSION:
        raise RecordFormatError(f"unknown schema version {record.get('v')!r}")

    return seq
