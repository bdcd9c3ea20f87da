"""Audit logs written for the tests: settings, sample logs and their lines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_sandbox_proxy.audit import AuditLog
from mcp_sandbox_proxy.config import AuditConfig

CALL = {
    "session": "s-1",
    "client": "test-client",
    "server": "files",
    "tool": "read_file",
    "policy": "read-only",
    "policy_digest": "ab" * 32,
    "decision": "allow",
    "rule": "tools.read_*",
}

WriteLog = Callable[..., Path]


def read_lines(path: Path) -> list[bytes]:
    """The lines of ``path``, newlines kept."""
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    """Replace the content of ``path`` with ``lines``."""
    path.write_bytes(b"".join(lines))


async def write_calls(audit: AuditLog, count: int, **fields: Any) -> list[int]:
    """Write ``count`` intent and outcome pairs; the sequence numbers returned."""
    numbers: list[int] = []
    for index in range(count):
        call = CALL | {"arguments": {"path": f"/data/{index}.txt"}} | fields
        numbers.append(await audit.write("call_intent", **call))
        outcome = CALL | {
            "result_bytes": 10 + index,
            "is_error": False,
            "total_ms": 1.5,
        }
        numbers.append(await audit.write("call_outcome", **outcome))

    return numbers


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    """Where the test's audit log is written."""
    return tmp_path / "logs" / "audit.jsonl"


@pytest.fixture
def write_log(log_path: Path) -> WriteLog:
    """Write a closed log of ``calls`` audited calls with the given settings."""

    def write(calls: int = 3, path: Path = log_path, **settings: Any) -> Path:
        async def run() -> None:
            audit = AuditLog.open(AuditConfig(path=path, **settings), instance="test")
            await write_calls(audit, calls)
            await audit.aclose()

        anyio.run(run)
        return path

    return write
