"""A log that cannot be written stops calls (fail closed), or says so (fail open)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from mcp_sandbox_proxy.audit import AuditLog, verify_files
from mcp_sandbox_proxy.config import AuditConfig
from mcp_sandbox_proxy.exceptions import AuditError

from .conftest import CALL, read_lines

pytestmark = pytest.mark.anyio

# Small enough to fill in a moment, large enough for a header and a few records.
SMALL_DISK_BYTES = 256 * 1024
# Room left for the log once the disk is nearly filled: a few records' worth.
ROOM_BYTES = 3000
MOUNT_TIMEOUT_S = 10


def mount_tmpfs(folder: Path, options: str) -> None:
    """Mount a tmpfs on ``folder``, or skip the test where that is not allowed."""
    folder.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        timeout=MOUNT_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")


def unmount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], timeout=MOUNT_TIMEOUT_S, check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a file system of SMALL_DISK_BYTES (a tmpfs; needs root)."""
    folder = tmp_path / "disk"
    mount_tmpfs(folder, f"size={SMALL_DISK_BYTES}")
    yield folder
    unmount(folder)


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder no file can be created in, for root too (a read-only mount)."""
    folder = tmp_path / "ro"
    if os.geteuid() != 0:
        folder.mkdir(mode=0o500)
        yield folder
        return

    mount_tmpfs(folder, "ro,size=64k")
    yield folder
    unmount(folder)


@pytest.fixture
def dev_full() -> Path:
    """The device on which every write fails with ENOSPC."""
    path = Path("/dev/full")
    if not path.exists():
        pytest.skip("this system has no /dev/full")

    return path


def fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` with one file until only ``leave`` bytes are free."""
    stats = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave))
    return filler


async def write_until_refused(audit: AuditLog, limit: int = 1000) -> AuditError:
    """Write records until one is refused; the error."""
    for _ in range(limit):
        try:
            await audit.write("call_intent", **CALL, arguments={"text": "x" * 200})
        except AuditError as exc:
            return exc

    raise AssertionError(f"{limit} records were written to a full disk")


def test_a_log_in_a_folder_that_is_a_file_cannot_open(tmp_path: Path) -> None:
    """Opening fails at once, naming the log's path."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    path = blocker / "audit.jsonl"

    with pytest.raises(AuditError, match=f"cannot open the audit log {path}"):
        AuditLog.open(AuditConfig(path=path), instance="i")


def test_a_log_in_a_read_only_folder_cannot_open(read_only_folder: Path) -> None:
    """A folder that refuses new files stops the proxy from starting."""
    path = read_only_folder / "audit.jsonl"

    with pytest.raises(AuditError, match=f"cannot open the audit log {path}: "):
        AuditLog.open(AuditConfig(path=path), instance="i")


def test_a_device_that_is_always_full_fails_closed(dev_full: Path) -> None:
    """Writing to /dev/full is refused with the system's reason."""
    with pytest.raises(AuditError, match="No space left on device"):
        AuditLog.open(AuditConfig(path=dev_full), instance="i")


async def test_failing_open_lets_calls_run_but_reports_every_lost_record(
    dev_full: Path,
) -> None:
    """With ``failClosed: false`` the loss is logged and ``write`` returns 0."""
    settings = AuditConfig(path=dev_full, fail_closed=False)
    with capture_logs() as logs:
        audit = AuditLog.open(settings, instance="i")
        number = await audit.write("call_intent", **CALL)
        await audit.aclose()

    events = [entry["event"] for entry in logs]
    assert number == 0
    assert "audit_log_unavailable" in events
    assert "audit_record_lost" in events


@pytest.mark.parametrize("durability", ["fsync", "batch"])
async def test_a_full_disk_stops_calls_and_leaves_only_whole_records(
    small_disk: Path, durability: str
) -> None:
    """When the disk fills, writes are refused and the chain on disk stays intact."""
    path = small_disk / "audit.jsonl"
    audit = AuditLog.open(AuditConfig(path=path, durability=durability), instance="i")
    fill(small_disk, ROOM_BYTES)

    error = await write_until_refused(audit)

    assert "No space left on device" in str(error)
    assert all(line.endswith(b"\n") for line in read_lines(path))
    report = verify_files([path])
    assert report.ok, report.problems


async def test_the_log_resumes_when_space_is_freed(small_disk: Path) -> None:
    """After a refusal, freeing space lets writing go on, the chain unbroken."""
    path = small_disk / "audit.jsonl"
    audit = AuditLog.open(AuditConfig(path=path), instance="i")
    filler = fill(small_disk, ROOM_BYTES)
    await write_until_refused(audit)

    filler.unlink()
    number = await audit.write("call_intent", **CALL)
    await audit.aclose()

    assert number > 0
    assert verify_files([path]).ok


async def test_failing_open_on_a_full_disk_returns_zero_until_space_returns(
    small_disk: Path,
) -> None:
    """Fail open: lost records are logged, not raised, and later ones are kept."""
    path = small_disk / "audit.jsonl"
    audit = AuditLog.open(AuditConfig(path=path, fail_closed=False), instance="i")
    filler = fill(small_disk, 0)

    with capture_logs() as logs:
        lost = await audit.write("call_intent", **CALL, arguments={"text": "x" * 4000})

    filler.unlink()
    kept = await audit.write("call_intent", **CALL)
    await audit.aclose()
    assert lost == 0 < kept
    assert [entry["event"] for entry in logs] == ["audit_record_lost"]
    assert verify_files([path]).ok
