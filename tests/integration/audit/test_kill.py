"""A proxy killed by SIGKILL loses no acknowledged record and leaves a sound chain.

A child process writes records from several tasks at once and prints each
sequence number as its ``write`` returns. The test kills it mid-stream, then
checks every printed number against the file and verifies the chain.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

from mcp_sandbox_proxy.audit import AuditLog, verify_files
from mcp_sandbox_proxy.config import AuditConfig

# Enough acknowledged records that the kill lands in the middle of a busy stream.
ACKS_BEFORE_KILL = 300
ACK_TIMEOUT_S = 60.0
EXIT_TIMEOUT_S = 10.0

WRITER = """
import sys
from pathlib import Path

import anyio

from mcp_sandbox_proxy.audit import AuditLog
from mcp_sandbox_proxy.config import AuditConfig

WRITERS = 4


async def writer(audit: AuditLog, index: int) -> None:
    for n in range(1_000_000):
        arguments = {"path": f"/data/{index}/{n}.txt", "text": "x" * (n % 300)}
        seq = await audit.write("call_intent", server="files", tool="read",
                                decision="allow", arguments=arguments)
        sys.stdout.write(f"{seq}\\n")
        sys.stdout.flush()


async def main() -> None:
    settings = AuditConfig(path=Path(sys.argv[1]), durability=sys.argv[2])
    audit = AuditLog.open(settings, instance="doomed")
    async with anyio.create_task_group() as group:
        for index in range(WRITERS):
            group.start_soon(writer, audit, index)


anyio.run(main)
"""


def collect_lines(stream: object, lines: queue.Queue[bytes | None]) -> None:
    """Move each line of ``stream`` to ``lines``; ``None`` at its end."""
    for line in stream:  # type: ignore[attr-defined]
        lines.put(line)

    lines.put(None)


def run_and_kill(path: Path, durability: str) -> list[int]:
    """Start the writer, kill it with SIGKILL mid-stream; the numbers it acked."""
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), durability],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    lines: queue.Queue[bytes | None] = queue.Queue()
    reader = threading.Thread(target=collect_lines, args=(child.stdout, lines))
    reader.start()
    acked: list[int] = []
    deadline = time.monotonic() + ACK_TIMEOUT_S
    try:
        while len(acked) < ACKS_BEFORE_KILL:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "the writer exited before it was killed"
            acked.append(int(line))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=EXIT_TIMEOUT_S)
        reader.join(timeout=EXIT_TIMEOUT_S)

    acked += [
        int(line) for line in iter(lines.get_nowait, None) if line.endswith(b"\n")
    ]
    return acked


@pytest.mark.parametrize("durability", ["fsync", "batch"])
def test_every_acknowledged_record_survives_sigkill(
    tmp_path: Path, durability: str
) -> None:
    """Each number printed before the kill is in the file; the chain verifies."""
    path = tmp_path / "audit.jsonl"

    acked = run_and_kill(path, durability)

    complete = path.read_bytes().split(b"\n")[:-1]
    on_disk = {json.loads(line)["seq"] for line in complete}
    assert set(acked) <= on_disk
    report = verify_files([path])
    assert [p.kind for p in report.problems] in ([], ["truncated"])
    assert report.valid_through is not None
    assert report.valid_through.line == len(complete)


def test_a_killed_log_is_continued_whole_by_the_next_proxy(tmp_path: Path) -> None:
    """Reopening after the kill drops any partial line and the chain goes on."""
    path = tmp_path / "audit.jsonl"
    acked = run_and_kill(path, "batch")

    async def reopen() -> None:
        audit = AuditLog.open(AuditConfig(path=path), instance="next")
        await audit.write("call_intent", server="files", tool="read")
        await audit.aclose()

    anyio.run(reopen)

    report = verify_files([path])
    assert report.ok, report.problems
    assert report.valid_through is not None
    assert report.valid_through.seq > max(acked)
