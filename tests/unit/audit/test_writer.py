"""``AuditLog`` writes chained, redacted, durable records in sequence order."""

from __future__ import annotations

import itertools
import json
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_sandbox_proxy.audit import REDACTED, AuditLog, verify_files
from mcp_sandbox_proxy.audit.chain import GENESIS_HASH, key_id
from mcp_sandbox_proxy.audit.records import SCHEMA_VERSION
from mcp_sandbox_proxy.config import AuditConfig
from mcp_sandbox_proxy.exceptions import AuditError

from .conftest import CALL, WriteLog, read_lines, write_calls

pytestmark = pytest.mark.anyio


def records(path: Path) -> list[dict[str, Any]]:
    """Every record of ``path``, parsed."""
    return [json.loads(line) for line in read_lines(path)]


async def test_a_new_log_starts_with_a_genesis_header(log_path: Path) -> None:
    """The first record is a header at sequence 0 linked to the genesis hash."""
    audit = AuditLog.open(AuditConfig(path=log_path), instance="proxy-1")
    await audit.aclose()

    header = records(log_path)[0]
    assert header["event"] == "audit_opened"
    assert (header["seq"], header["prev"]) == (0, GENESIS_HASH)
    assert header["v"] == SCHEMA_VERSION
    assert header["reason"] == "new"
    assert header["instance"] == "proxy-1"


@pytest.mark.parametrize("durability", ["fsync", "batch"])
async def test_writes_return_consecutive_numbers_of_chained_records(
    log_path: Path, durability: str
) -> None:
    """Each record links to the one before it, in the order written."""
    audit = AuditLog.open(
        AuditConfig(path=log_path, durability=durability), instance="i"
    )
    numbers = await write_calls(audit, 3)
    await audit.aclose()

    written = records(log_path)
    assert numbers == [1, 2, 3, 4, 5, 6]
    assert [r["seq"] for r in written] == list(range(8))
    assert all(r["prev"] == p["hash"] for p, r in itertools.pairwise(written))
    assert verify_files([log_path]).ok


async def test_a_record_holds_the_envelope_then_the_fields_as_given(
    log_path: Path,
) -> None:
    """Envelope first, then the caller's fields in order, then the chain fields."""
    audit = AuditLog.open(AuditConfig(path=log_path), instance="i")
    await audit.write("call_outcome", **CALL, result_bytes=42, is_error=False)
    await audit.aclose()

    record = records(log_path)[1]
    envelope = ["v", "seq", "ts", "instance", "event"]
    assert list(record) == [
        *envelope,
        *CALL,
        "result_bytes",
        "is_error",
        "prev",
        "hash",
    ]
    assert record["ts"].endswith("Z")
    assert record["policy_digest"] == CALL["policy_digest"]


async def test_arguments_are_redacted_before_they_reach_the_file(
    log_path: Path,
) -> None:
    """Secrets in arguments, and names the policy lists, never touch the disk."""
    audit = AuditLog.open(AuditConfig(path=log_path), instance="i")
    arguments = {"url": "https://u:hunter2@h/x", "apiKey": "k-123", "ssn": "078-05"}
    await audit.write("call_intent", **CALL, arguments=arguments, redact_names=["ssn"])
    await audit.aclose()

    text = await anyio.Path(log_path).read_text()
    record = records(log_path)[1]
    assert "hunter2" not in text and "k-123" not in text and "078-05" not in text
    assert record["arguments"] == {
        "url": f"https://u:{REDACTED}@h/x",
        "apiKey": REDACTED,
        "ssn": REDACTED,
    }
    assert "redact_names" not in record


async def test_unknown_fields_are_kept_after_redaction(log_path: Path) -> None:
    """Fields the schema does not list are written, secrets removed."""
    audit = AuditLog.open(AuditConfig(path=log_path), instance="i")
    await audit.write(
        "sandbox_crashed", server="files", error="auth failed: Bearer abcdefgh1234567"
    )
    await audit.aclose()

    assert records(log_path)[1]["error"] == f"auth failed: Bearer {REDACTED}"


async def test_an_unknown_event_is_refused(log_path: Path) -> None:
    """A misspelt event name is a programming error, caught at once."""
    audit = AuditLog.open(AuditConfig(path=log_path), instance="i")

    with pytest.raises(ValueError, match="unknown audit event 'call_intnet'"):
        await audit.write("call_intnet", **CALL)

    await audit.aclose()


async def test_a_field_that_shadows_the_envelope_is_refused(log_path: Path) -> None:
    """Callers cannot set the sequence number, hash or the like."""
    audit = AuditLog.open(AuditConfig(path=log_path), instance="i")

    with pytest.raises(ValueError, match="reserved field"):
        await audit.write("call_intent", seq=99)

    await audit.aclose()


async def test_durability_off_writes_nothing(log_path: Path) -> None:
    """The opt-out creates no file and every write returns 0."""
    audit = AuditLog.open(AuditConfig(path=log_path, durability="off"), instance="i")

    assert await audit.write("call_intent", **CALL) == 0
    await audit.aclose()
    assert not log_path.parent.exists()


async def test_without_a_path_the_log_goes_to_the_state_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no path set, the log is XDG_STATE_HOME/mcp-sandbox-proxy/audit.jsonl."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))

    audit = AuditLog.open(AuditConfig(), instance="i")
    await audit.aclose()

    assert (tmp_path / "state" / "mcp-sandbox-proxy" / "audit.jsonl").exists()


async def test_the_log_file_is_readable_by_its_owner_only(log_path: Path) -> None:
    """Audit records may describe private work: the file is created 0600."""
    audit = AuditLog.open(AuditConfig(path=log_path), instance="i")
    await audit.aclose()

    mode = (await anyio.Path(log_path).stat()).st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_reopening_continues_the_chain_with_a_header(
    write_log: WriteLog, log_path: Path
) -> None:
    """A second proxy appends a header linked to the last record on disk."""
    write_log(calls=1)
    last = records(log_path)[-1]

    write_log(calls=0)

    header = records(log_path)[len(read_lines(log_path)) - 2]
    assert header["event"] == "audit_opened" and header["reason"] == "appended"
    assert (header["seq"], header["prev"]) == (last["seq"] + 1, last["hash"])
    assert verify_files([log_path]).ok


def test_a_partial_last_line_is_cut_and_noted_when_reopening(
    write_log: WriteLog, log_path: Path
) -> None:
    """A record cut by a crash is removed, and the header says how many bytes."""
    write_log(calls=1)
    partial = b'{"v":1,"seq":9,"ts":"2025-'
    with log_path.open("ab") as file:
        file.write(partial)

    write_log(calls=0)

    header = [r for r in records(log_path) if r["event"] == "audit_opened"][-1]
    assert header["discarded_tail_bytes"] == len(partial)
    assert verify_files([log_path]).ok


def test_a_damaged_last_record_stops_the_log_from_opening(
    write_log: WriteLog, log_path: Path
) -> None:
    """The chain cannot continue from a record that does not check out."""
    write_log(calls=1)
    log_path.write_bytes(log_path.read_bytes().replace(b'"records":', b'"records":1'))

    with pytest.raises(AuditError, match=r"last record of .* is damaged"):
        AuditLog.open(AuditConfig(path=log_path), instance="i")


async def test_concurrent_writers_get_their_own_numbers_in_file_order(
    log_path: Path,
) -> None:
    """Writers that overlap share syncs, yet every record is whole and in order."""
    audit = AuditLog.open(AuditConfig(path=log_path, durability="fsync"), instance="i")
    numbers: list[int] = []

    async def writer(index: int) -> None:
        for _ in range(5):
            numbers.append(await audit.write("client_request", method=f"m{index}"))

    async with anyio.create_task_group() as group:
        for index in range(8):
            group.start_soon(writer, index)

    await audit.aclose()
    assert sorted(numbers) == list(range(1, 41))
    assert [r["seq"] for r in records(log_path)] == list(range(42))
    assert verify_files([log_path]).ok


async def test_a_batch_record_is_in_the_file_when_its_write_returns(
    log_path: Path,
) -> None:
    """Batch mode hands each record to the kernel before acknowledging it."""
    audit = AuditLog.open(AuditConfig(path=log_path, durability="batch"), instance="i")

    number = await audit.write("call_intent", **CALL)

    assert records(log_path)[-1]["seq"] == number
    await audit.aclose()


async def test_a_cancelled_caller_still_gets_its_record_written(log_path: Path) -> None:
    """Cancelling the call being audited does not leave its record unwritten."""
    audit = AuditLog.open(AuditConfig(path=log_path, durability="fsync"), instance="i")

    with anyio.CancelScope() as scope:
        scope.cancel()
        await audit.write("call_intent", **CALL)

    await audit.aclose()
    assert [r["event"] for r in records(log_path)][1] == "call_intent"
    assert verify_files([log_path]).ok


async def test_closing_writes_a_final_record_and_later_writes_fail(
    log_path: Path,
) -> None:
    """The log ends with ``audit_closed``; nothing is accepted after it."""
    audit = AuditLog.open(AuditConfig(path=log_path), instance="i")
    await write_calls(audit, 1)
    await audit.aclose()

    closing = records(log_path)[-1]
    assert (closing["event"], closing["records"]) == ("audit_closed", 4)
    with pytest.raises(AuditError, match="is closed"):
        await audit.write("call_intent", **CALL)


async def test_with_a_key_every_record_carries_an_hmac(
    tmp_path: Path, log_path: Path
) -> None:
    """The header names the key by its id, and each record has a ``mac``."""
    key_file = tmp_path / "audit.key"
    key_file.write_bytes(b"0123456789abcdef0123456789abcdef")
    settings = AuditConfig(path=log_path, hmac_key_file=key_file)

    audit = AuditLog.open(settings, instance="i")
    await write_calls(audit, 1)
    await audit.aclose()

    written = records(log_path)
    assert written[0]["key_id"] == key_id(key_file.read_bytes())
    assert all(len(record["mac"]) == 64 for record in written)
    assert verify_files([log_path], key=key_file.read_bytes()).ok
