"""The proxy under load while one of its servers is killed from outside, twice.

10,000 calls, 32 in flight, spread over three echo servers in sandboxes of the
``namespace`` backend (``--backend process`` where bubblewrap is unusable). A third
and two thirds of the way through, the process of server ``two`` is found among
the proxy's descendants and killed with SIGKILL; the pool restarts it. Checked at
the end (the script exits 1 if any fails):

- every call got exactly one answer (an error is an answer);
- the proxy's RSS after the run is within 10 MiB of its RSS after warm-up;
- the audit log verifies (``mcp-sandbox-proxy audit-log verify``).

Prints calls/s, p50/p99 latency (send to answer, queueing in the window
included), the answers that were errors, and the RSS figures.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _harness import (
    LineClient,
    echo_argv,
    percentile,
    proxy_argv,
    proxy_config,
    rss_kib,
)

CALLS = 10_000
WARM_CALLS = 1_000
WINDOW = 32
SERVERS = ("one", "two", "three")
VICTIM = "two"
KILL_AT = (CALLS // 3, 2 * CALLS // 3)
RSS_GROWTH_LIMIT_KIB = 10 * 1024
# Far beyond a healthy run: a hang ends the benchmark instead of stalling CI.
RUN_TIMEOUT_S = 600


class Killer:
    """Kills the victim server's process when the run reaches each mark."""

    def __init__(self, proxy_pid: int, marks: tuple[int, ...]) -> None:
        self.proxy_pid = proxy_pid
        self.marks = list(marks)
        self.killed: list[int] = []

    def maybe_kill(self, answered: int) -> None:
        """At a mark, kill the victim's current process; if it is still being
        restarted, try again on the next answer."""
        if not self.marks or answered < self.marks[0]:
            return

        pid = victim_pid(self.proxy_pid)
        if pid is not None and pid not in self.killed:
            os.kill(pid, signal.SIGKILL)
            self.killed.append(pid)
            self.marks.pop(0)


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.extend(int(child) for child in text.split())

    return found


def victim_pid(proxy_pid: int) -> int | None:
    """The deepest process below the proxy that runs the victim's echo server
    (under bubblewrap, the server itself rather than bubblewrap's own)."""
    frontier, found = [(proxy_pid, 0)], (-1, None)
    while frontier:
        pid, depth = frontier.pop()
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            frontier.extend((child, depth + 1) for child in children_of(pid))
        except OSError:
            continue

        runs_victim = VICTIM.encode() in command and any(
            part.endswith(b"echo_server.py") for part in command
        )
        if runs_victim and depth > found[0]:
            found = (depth, pid)

    return found[1]


def run(
    client: LineClient, count: int, killer: Killer | None
) -> tuple[list[float], Counter[Any], int]:
    """``count`` calls, ``WINDOW`` in flight, round robin over the servers.
    Returns latencies (us), answers per id, and how many answers were errors."""
    sent_at: dict[Any, float] = {}
    answers: Counter[Any] = Counter()
    latencies: list[float] = []
    errors = 0

    def send_next() -> None:
        tool = f"{SERVERS[len(sent_at) % len(SERVERS)]}__echo"
        message = client.call(tool, {"text": "load"})
        sent_at[message["id"]] = time.perf_counter()
        client.send(message)

    for _ in range(min(WINDOW, count)):
        send_next()

    while sum(answers.values()) < count:
        response = client.receive()
        request_id = response.get("id")
        answers[request_id] += 1
        if request_id in sent_at and answers[request_id] == 1:
            latencies.append((time.perf_counter() - sent_at[request_id]) * 1e6)

        errors += "error" in response
        if len(sent_at) < count:
            send_next()

        if killer is not None:
            killer.maybe_kill(sum(answers.values()))

    unknown = set(answers) - set(sent_at)
    assert not unknown, f"answers to ids never sent: {sorted(map(str, unknown))[:5]}"
    return latencies, answers, errors


def audit_verifies(path: Path) -> tuple[bool, str]:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_sandbox_proxy", "audit-log", "verify", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0, (done.stdout + done.stderr).strip()


@dataclass
class Outcome:
    """What one load run showed."""

    backend: str
    elapsed_s: float
    latencies_us: list[float]
    answers: Counter[Any]
    errors: int
    killed: list[int]
    rss_warm_kib: int
    rss_after_kib: int
    audit_ok: bool
    audit_report: str

    @property
    def answered_once(self) -> bool:
        counts = self.answers.values()
        return len(self.answers) == CALLS and all(count == 1 for count in counts)

    @property
    def growth_kib(self) -> int:
        return self.rss_after_kib - self.rss_warm_kib

    @property
    def passed(self) -> bool:
        return (
            self.answered_once
            and len(self.killed) == len(KILL_AT)
            and self.growth_kib <= RSS_GROWTH_LIMIT_KIB
            and self.audit_ok
        )


def load(backend: str) -> Outcome:
    """Warm up, then the measured run with its two kills, then the audit check."""
    argv = echo_argv()
    servers = {n: {"command": argv[0], "args": [*argv[1:], n]} for n in SERVERS}
    config = proxy_config(servers, audit="batch", backend=backend)
    client = LineClient(proxy_argv(config))
    client.initialize()
    run(client, WARM_CALLS, None)
    rss_warm = rss_kib(client.process.pid)

    killer = Killer(client.process.pid, KILL_AT)
    started = time.perf_counter()
    latencies, answers, errors = run(client, CALLS, killer)
    elapsed = time.perf_counter() - started
    rss_after = rss_kib(client.process.pid)
    client.close()
    audit_ok, report = audit_verifies(config.parent / "audit.jsonl")
    return Outcome(
        backend=backend,
        elapsed_s=elapsed,
        latencies_us=latencies,
        answers=answers,
        errors=errors,
        killed=killer.killed,
        rss_warm_kib=rss_warm,
        rss_after_kib=rss_after,
        audit_ok=audit_ok,
        audit_report=report,
    )


def print_report(outcome: Outcome) -> None:
    last_line = outcome.audit_report.splitlines()[-1] if outcome.audit_report else ""
    warm, after = outcome.rss_warm_kib / 1024, outcome.rss_after_kib / 1024
    limit_mib = RSS_GROWTH_LIMIT_KIB // 1024
    rows = [
        ("backend", outcome.backend),
        ("calls", f"{CALLS} ({WINDOW} in flight, {len(SERVERS)} servers)"),
        (f"kills of server {VICTIM!r}", f"{len(outcome.killed)} {outcome.killed}"),
        ("calls/s", f"{CALLS / outcome.elapsed_s:.0f}"),
        ("p50 latency (us)", f"{percentile(outcome.latencies_us, 0.5):.0f}"),
        ("p99 latency (us)", f"{percentile(outcome.latencies_us, 0.99):.0f}"),
        ("answers that were errors", str(outcome.errors)),
        ("every call answered once", str(outcome.answered_once)),
        ("RSS warm / after (MiB)", f"{warm:.1f} / {after:.1f}"),
        ("RSS growth (MiB)", f"{outcome.growth_kib / 1024:+.1f} (limit +{limit_mib})"),
        ("audit log verifies", f"{outcome.audit_ok}: {last_line[:60]}"),
    ]
    for label, value in rows:
        print(f"{label:<28}{value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", choices=("namespace", "process"), default="namespace"
    )
    signal.alarm(RUN_TIMEOUT_S)
    outcome = load(parser.parse_args().backend)
    print_report(outcome)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
