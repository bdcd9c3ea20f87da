"""``verify`` finds every edit, removal, reordering, forgery and truncation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mcp_sandbox_proxy.audit.chain import encode_body, seal, unseal
from mcp_sandbox_proxy.audit.verify import (
    MAX_PROBLEMS,
    Report,
    format_report,
    verify_files,
)

from .conftest import WriteLog, read_lines, write_lines

KEY = b"an audit key of thirty-two bytes"


def kinds(report: Report) -> list[tuple[int, str]]:
    """Each problem as (line, kind)."""
    return [(problem.line, problem.kind) for problem in report.problems]


def resealed(line: bytes, key: bytes | None = None, **changes: Any) -> bytes:
    """``line`` with ``changes`` made and a fresh, valid hash (and MAC)."""
    record = unseal(line.removesuffix(b"\n")).record | changes
    return seal(encode_body(record), key)[0]


def rechain(lines: list[bytes], start: int, key: bytes | None = None) -> list[bytes]:
    """Recompute ``prev`` and hashes from line ``start`` on, as a forger would."""
    out = lines[:start]
    for line in lines[start:]:
        prev = json.loads(out[-1])["hash"]
        out.append(resealed(line, key, prev=prev))

    return out


def test_an_untouched_log_verifies(write_log: WriteLog) -> None:
    """A log as written verifies, and the report gives its last hash."""
    path = write_log(calls=3)

    report = verify_files([path])

    assert report.ok, format_report(report)
    assert report.records == 8
    assert report.last_hash == json.loads(read_lines(path)[-1])["hash"]
    assert report.notes == []


def test_an_edited_value_is_found_at_its_line(write_log: WriteLog) -> None:
    """Changing a decision in place breaks that record's hash."""
    path = write_log(calls=3)
    lines = read_lines(path)
    lines[3] = lines[3].replace(b'"allow"', b'"deny!"')
    write_lines(path, lines)

    assert kinds(verify_files([path])) == [(4, "edited")]


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(
    write_log: WriteLog,
) -> None:
    """Rehashing an edited record does not fool the record after it."""
    path = write_log(calls=3)
    lines = read_lines(path)
    lines[3] = resealed(lines[3], decision="deny")
    write_lines(path, lines)

    assert kinds(verify_files([path])) == [(5, "unlinked")]


def test_a_removed_record_is_found_as_a_gap(write_log: WriteLog) -> None:
    """Deleting a line leaves a gap in the sequence where it was."""
    path = write_log(calls=3)
    lines = read_lines(path)
    del lines[2]
    write_lines(path, lines)

    report = verify_files([path])

    assert kinds(report) == [(3, "gap")]
    assert "record(s) 2..2 missing" in report.problems[0].message


def test_reordered_records_are_found_where_the_order_breaks(
    write_log: WriteLog,
) -> None:
    """Swapping two lines is reported at the first of them."""
    path = write_log(calls=3)
    lines = read_lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(path, lines)

    assert kinds(verify_files([path])) == [(3, "gap"), (4, "out_of_order")]


def test_a_forged_record_inserted_into_the_chain_is_found(
    write_log: WriteLog,
) -> None:
    """A made-up record, hashed and linked, still breaks the record after it."""
    path = write_log(calls=3)
    lines = read_lines(path)
    prev = json.loads(lines[2])["hash"]
    forged = resealed(lines[3], seq=3, prev=prev, tool="delete_everything")
    lines.insert(3, forged)
    write_lines(path, lines)

    assert kinds(verify_files([path]))[0] == (5, "out_of_order")


def test_a_fully_rewritten_chain_is_caught_only_by_the_hmac(
    tmp_path: Path, write_log: WriteLog
) -> None:
    """Without the key a forger can rehash everything; with it, MACs fail."""
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY)
    path = write_log(calls=3, hmac_key_file=key_file)
    lines = read_lines(path)
    lines[3] = resealed(lines[3], decision="deny")
    write_lines(path, rechain(lines, 4))

    assert verify_files([path]).ok
    assert verify_files([path], key=KEY).problems[0].kind == "forged"


def test_records_stripped_of_their_hmac_fail_when_the_key_is_given(
    tmp_path: Path, write_log: WriteLog
) -> None:
    """Removing every MAC and rehashing does not pass a check with the key."""
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY)
    path = write_log(calls=1, hmac_key_file=key_file)
    lines = read_lines(path)
    write_lines(path, rechain([resealed(lines[0]), *lines[1:]], 1))

    assert b'"mac"' not in path.read_bytes()
    assert verify_files([path]).ok
    assert {kind for _, kind in kinds(verify_files([path], key=KEY))} == {"forged"}


def test_a_log_checked_with_another_key_names_the_mismatch(
    tmp_path: Path, write_log: WriteLog
) -> None:
    """The header's key id tells a wrong key apart from forged records."""
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY)
    path = write_log(calls=1, hmac_key_file=key_file)

    report = verify_files([path], key=b"some other key of 32 bytes......")

    assert report.problems[0].kind == "wrong_key"


def test_macs_present_but_unchecked_are_noted(
    tmp_path: Path, write_log: WriteLog
) -> None:
    """Verifying a keyed log without the key says the MACs went unchecked."""
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(KEY)
    path = write_log(calls=1, hmac_key_file=key_file)

    report = verify_files([path])

    assert report.ok
    assert any("--hmac-key-file" in note for note in report.notes)


def test_a_truncated_last_line_is_found_and_the_rest_verifies(
    write_log: WriteLog,
) -> None:
    """A cut tail is reported at its line; everything before it still checks out."""
    path = write_log(calls=3)
    data = path.read_bytes()
    path.write_bytes(data[:-40])

    report = verify_files([path])

    assert kinds(report) == [(8, "truncated")]
    assert report.valid_through is not None
    assert (report.valid_through.line, report.valid_through.seq) == (7, 6)


def test_removing_the_header_is_found_at_the_start(write_log: WriteLog) -> None:
    """A chain must begin with its genesis header."""
    path = write_log(calls=2)
    write_lines(path, read_lines(path)[1:])

    assert kinds(verify_files([path])) == [(1, "bad_start")]


def test_a_line_that_is_not_a_record_does_not_cascade(write_log: WriteLog) -> None:
    """A garbled line is one problem; the records after it still verify."""
    path = write_log(calls=3)
    lines = read_lines(path)
    lines[3] = b"garbage\n"
    write_lines(path, lines)

    assert kinds(verify_files([path])) == [(4, "malformed")]


def test_an_empty_file_is_a_problem(tmp_path: Path) -> None:
    """No records at all is not an intact log."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")

    assert kinds(verify_files([path])) == [(0, "empty")]


def test_a_log_without_its_closing_record_is_noted(write_log: WriteLog) -> None:
    """Records cut at a line boundary cannot be proven missing, only noted."""
    path = write_log(calls=2)
    write_lines(path, read_lines(path)[:-1])

    report = verify_files([path])

    assert report.ok
    assert any("closing record" in note for note in report.notes)


def rotated_pair(write_log: WriteLog, tmp_path: Path) -> list[Path]:
    """A log rotated once by size: the older file first."""
    path = write_log(calls=4, rotate_bytes=1500, path=tmp_path / "r" / "audit.jsonl")
    files = sorted(path.parent.iterdir())
    assert len(files) >= 2
    return [*files[1:], files[0]]


def test_rotated_files_verify_as_one_chain_in_any_order(
    write_log: WriteLog, tmp_path: Path
) -> None:
    """Files are put in chain order by their first record, whatever order given."""
    files = rotated_pair(write_log, tmp_path)

    assert verify_files(files).ok
    assert verify_files(list(reversed(files))).ok


def test_a_missing_older_rotated_file_is_found(
    write_log: WriteLog, tmp_path: Path
) -> None:
    """Without the file it continues, the newer file does not start a chain."""
    files = rotated_pair(write_log, tmp_path)

    report = verify_files(files[1:])

    assert [(p.file, p.kind) for p in report.problems] == [(files[1], "bad_start")]


def test_a_record_removed_at_a_file_boundary_is_found(
    write_log: WriteLog, tmp_path: Path
) -> None:
    """Cutting the last record of the older file breaks the newer file's link."""
    files = rotated_pair(write_log, tmp_path)
    write_lines(files[0], read_lines(files[0])[:-1])

    report = verify_files(files)

    assert [(p.file, p.line, p.kind) for p in report.problems] == [(files[1], 1, "gap")]


@pytest.mark.parametrize("case", ["ok", "edited"])
def test_the_report_text_names_file_line_and_outcome(
    write_log: WriteLog, case: str
) -> None:
    """The text shows ``file:line: kind`` and a final verdict."""
    path = write_log(calls=1)
    if case == "edited":
        lines = read_lines(path)
        lines[1] = lines[1].replace(b"read_file", b"rm_rf_all")
        write_lines(path, lines)

    text = format_report(verify_files([path]))

    if case == "ok":
        assert text.startswith("ok: 4 records in 1 file(s) verified")
    else:
        assert text.startswith(f"{path}:2: edited: ")
        assert f"records verify up to {path}:1 (seq 0)" in text


def test_listing_stops_after_many_problems(write_log: WriteLog) -> None:
    """A log garbled throughout gives a bounded report that says it stopped."""
    path = write_log(calls=40)
    write_lines(path, [b"garbage\n"] * (MAX_PROBLEMS + 20))

    report = verify_files([path])

    assert len(report.problems) == MAX_PROBLEMS
    assert f"stopped after {MAX_PROBLEMS} problems" in report.notes
