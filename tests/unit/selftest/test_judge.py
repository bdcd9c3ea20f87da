"""Judging the probes: the host's findings outweigh what the sandbox says."""

from __future__ import annotations

import json
from typing import Any

from mcp_sandbox_proxy.selftest.bait import Trace
from mcp_sandbox_proxy.selftest.judge import (
    ProbeRun,
    Row,
    Status,
    judge,
    parse_reports,
    summary,
    verdict,
)
from mcp_sandbox_proxy.selftest.probes import PROBES


def report(probe: str, escaped: bool, evidence: str, **extra: Any) -> dict[str, Any]:
    return {
        "probe": probe,
        "escaped": escaped,
        "evidence": evidence,
        "digest": None,
        "error": None,
        **extra,
    }


def run_of(*reports: dict[str, Any], problem: str | None = None) -> ProbeRun:
    return ProbeRun({r["probe"]: r for r in reports}, problem)


def test_a_probe_that_got_through_is_an_escape() -> None:
    """The sandbox's own word decides where the host has nothing to check."""
    run = run_of(report("shadow-read", True, "read 600 bytes of /etc/shadow"))

    assert verdict("shadow-read", run, {}, {}) == (
        "ESCAPED",
        "read 600 bytes of /etc/shadow",
    )


def test_a_refused_probe_is_contained() -> None:
    """A probe the kernel refused is contained, with the error as evidence."""
    run = run_of(report("tmpfs-mount", False, "mount tmpfs: EPERM"))

    assert verdict("tmpfs-mount", run, {}, {}) == ("contained", "mount tmpfs: EPERM")


def test_a_trace_on_the_host_is_an_escape_whatever_the_sandbox_said() -> None:
    """A file in the host folder counts even if the probe reported failure."""
    run = run_of(report("host-folder-write", False, "write x: EACCES"))
    traces = {"host-folder-write": Trace(True, "escaped.txt appeared in /tmp/f")}

    assert verdict("host-folder-write", run, traces, {}) == (
        "ESCAPED",
        "escaped.txt appeared in /tmp/f",
    )


def test_a_write_that_landed_only_inside_the_sandbox_is_contained() -> None:
    """The probe wrote (into its own /tmp); the host folder stayed empty."""
    run = run_of(report("host-folder-write", True, "wrote /tmp/f/escaped.txt"))
    traces = {"host-folder-write": Trace(False, "nothing appeared in /tmp/f")}

    status, detail = verdict("host-folder-write", run, traces, {})

    assert status == "contained"
    assert detail == "nothing appeared in /tmp/f (inside: wrote /tmp/f/escaped.txt)"


def test_a_granted_target_is_granted_even_with_a_trace() -> None:
    """What the policy grants on purpose is neither contained nor an escape."""
    run = run_of(report("home-file-read", True, "read the canary /home/u/c"))
    granted = {"home-file-read": "the policy grants /home/u, where the canary is"}

    assert verdict("home-file-read", run, {}, granted) == (
        "granted",
        "the policy grants /home/u, where the canary is",
    )


def test_a_missing_report_is_not_run_with_the_runs_problem() -> None:
    """A probe that printed nothing is not run, for the reason the run gives."""
    run = run_of(problem="the probes did not finish within 60 s")

    assert verdict("user-namespace", run, {}, {}) == (
        "not run",
        "the probes did not finish within 60 s",
    )


def test_a_probe_that_broke_is_not_run() -> None:
    """A probe's own error proves nothing either way."""
    broken = report("proxy-ptrace", False, "", error="AttributeError: no ptrace")

    assert verdict("proxy-ptrace", run_of(broken), {}, {}) == (
        "not run",
        "the probe broke: AttributeError: no ptrace",
    )


def test_judge_gives_one_row_per_probe_in_order() -> None:
    """Every probe gets a row, reported or not, in the probes' own order."""
    run = run_of(report("shadow-read", False, "read /etc/shadow: ENOENT"))
    rows = judge("files", "namespace", run, {}, {})

    assert [row.probe for row in rows] == list(PROBES)
    assert rows[-1] == Row(
        "files", "namespace", "shadow-read", "contained", "read /etc/shadow: ENOENT"
    )


def test_parse_reports_keeps_only_well_formed_lines_of_known_probes() -> None:
    """Noise, unknown probes, wrong types and repeats are ignored."""
    first = report("user-namespace", False, "unshare(CLONE_NEWUSER): EPERM")
    lines = [
        "Traceback (most recent call last):",
        json.dumps(report("no-such-probe", True, "x")),
        json.dumps({**report("shadow-read", True, "x"), "escaped": "yes"}),
        json.dumps([1, 2]),
        json.dumps(first),
        json.dumps(report("user-namespace", True, "created a user namespace")),
    ]

    reports = parse_reports("\n".join(lines).encode())

    assert reports == {"user-namespace": first}


def test_summary_counts_the_worst_first() -> None:
    """Escapes first, then probes not run, then the contained and granted."""
    statuses: list[Status] = ["contained", "ESCAPED", "granted", "ESCAPED", "not run"]
    rows = [Row("s", "process", "p", status, "") for status in statuses]

    assert summary(rows) == "2 ESCAPED, 1 not run, 1 contained, 1 granted"
