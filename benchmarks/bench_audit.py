"""Audit cost per record: durability off, batch and fsync, p50 and p99 in us.

Each write is one ``call_intent`` record as the relay writes it (a dozen fields,
small arguments with one secret to redact), awaited one after another, as a call
awaits its intent record before being forwarded. The fsync mode is also measured
with writers in flight together, where group commit shares one sync among them.
The budget of the batch mode (at most 20 us added per call at p50) is checked;
the exit status is 1 if it is exceeded.

Usage: python benchmarks/bench_audit.py [--dir FOLDER] (the folder's file system
is the one measured; the system's temporary folder by default).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mcp_sandbox_proxy.audit import AuditLog
from mcp_sandbox_proxy.config import AuditConfig
from mcp_sandbox_proxy.logs import configure_logging

WRITES = {"off": 20000, "batch": 20000, "fsync": 1000}
WARMUP_WRITES = 200
CONCURRENT_WRITERS = 16
CONCURRENT_WRITES = 4000
ROUNDS = 3
CASES = [
    ("off", 1),
    ("batch", 1),
    ("fsync", 1),
    ("batch", CONCURRENT_WRITERS),
    ("fsync", CONCURRENT_WRITERS),
]
BATCH_BUDGET_P50_US = 20.0

CALL_FIELDS: dict[str, Any] = {
    "session": "3f2a9c",
    "client": "claude-desktop",
    "server": "filesystem",
    "tool": "read_text_file",
    "request_id": 42,
    "policy": "read-only-folder",
    "policy_digest": "9b" * 32,
    "decision": "allow",
    "rule": "tools.read_*",
    "arguments": {"path": "/home/user/notes/todo.md", "head": 40, "token": "x1"},
}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def sequential_us(audit: AuditLog, count: int) -> list[float]:
    """The time of each of ``count`` writes made one after another."""
    for _ in range(WARMUP_WRITES):
        await audit.write("call_intent", **CALL_FIELDS)

    times: list[float] = []
    for _ in range(count):
        start = time.perf_counter_ns()
        await audit.write("call_intent", **CALL_FIELDS)
        times.append((time.perf_counter_ns() - start) / 1000)

    return times


async def concurrent(audit: AuditLog, writers: int) -> tuple[list[float], float]:
    """Per-write times and records/s with ``writers`` writing at once."""
    times: list[float] = []
    per_writer = CONCURRENT_WRITES // writers

    async def writer() -> None:
        for _ in range(per_writer):
            start = time.perf_counter_ns()
            await audit.write("call_intent", **CALL_FIELDS)
            times.append((time.perf_counter_ns() - start) / 1000)

    began = time.perf_counter()
    async with anyio.create_task_group() as group:
        for _ in range(writers):
            group.start_soon(writer)

    return times, len(times) / (time.perf_counter() - began)


async def run_mode(folder: Path, mode: str, writers: int) -> tuple[list[float], float]:
    """Per-write times and records/s of one mode, with ``writers`` in flight."""
    path = folder / f"{mode}-{writers}.jsonl"
    settings = AuditConfig(path=path, durability=mode)  # type: ignore[arg-type]
    audit = AuditLog.open(settings, instance="bench")
    try:
        if writers > 1:
            return await concurrent(audit, writers)

        began = time.perf_counter()
        times = await sequential_us(audit, WRITES[mode])
        return times, len(times) / (time.perf_counter() - began)
    finally:
        await audit.aclose()


def best_of_rounds(folder: Path, mode: str, writers: int) -> tuple[list[float], float]:
    """The round with the lowest p50: other load on the machine only adds time."""
    rounds = [anyio.run(run_mode, folder, mode, writers) for _ in range(ROUNDS)]
    return min(rounds, key=lambda result: statistics.median(result[0]))


def row(name: str, times: list[float], rate: float) -> str:
    p50, p99 = statistics.median(times), percentile(times, 0.99)
    return f"{name:<22}{p50:>10.1f}{p99:>10.1f}{rate:>14.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    where = parser.parse_args().dir
    configure_logging(level="error")
    folder = Path(tempfile.mkdtemp(prefix="msp-bench-audit-", dir=where))
    try:
        p50s = report(folder)
    finally:
        shutil.rmtree(folder)

    added = p50s["batch"] - p50s["off"]
    verdict = "within" if added <= BATCH_BUDGET_P50_US else "OVER"
    budget = f"{BATCH_BUDGET_P50_US:.0f} us"
    print(f"batch adds {added:.1f} us per call at p50: {verdict} the {budget} budget")
    return 0 if added <= BATCH_BUDGET_P50_US else 1


def report(folder: Path) -> dict[str, float]:
    """Measure and print every case; the p50 of each by name."""
    print(f"audit files in {folder}; best of {ROUNDS} rounds")
    print(f"{'mode':<22}{'p50 us':>10}{'p99 us':>10}{'records/s':>14}")
    p50s: dict[str, float] = {}
    for mode, writers in CASES:
        times, rate = best_of_rounds(folder, mode, writers)
        name = mode if writers == 1 else f"{mode}, {writers} in flight"
        p50s[name] = statistics.median(times)
        print(row(name, times, rate))

    return p50s


if __name__ == "__main__":
    sys.exit(main())
