"""Judging the probes: their JSON lines and the host's findings become rows.

Each probe ends in one of four states: contained; ESCAPED; granted (the policy
gives that right on purpose, so there is nothing to contain); or not run, with
the reason. What the host found itself outweighs what the sandbox said.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, cast

from mcp_sandbox_proxy.selftest.bait import Traces
from mcp_sandbox_proxy.selftest.probes import MAX_EVIDENCE_CHARS, PROBES

Status = Literal["contained", "ESCAPED", "granted", "not run"]


@dataclass(frozen=True)
class Row:
    """One probe in one server's sandbox, and what came of it."""

    server: str
    backend: str
    probe: str
    status: Status
    detail: str


@dataclass(frozen=True)
class ProbeRun:
    """The probes' reports by name, and why some may be missing."""

    reports: dict[str, dict[str, Any]]
    problem: str | None = None


def parse_reports(stdout: bytes) -> dict[str, dict[str, Any]]:
    """The probes' JSON lines by probe name; anything else in the output is ignored."""
    reports: dict[str, dict[str, Any]] = {}
    for line in stdout.splitlines():
        try:
            report = json.loads(line)
        except ValueError:
            continue

        if _well_formed(report) and report["probe"] not in reports:
            reports[report["probe"]] = report

    return reports


def _well_formed(report: object) -> TypeGuard[dict[str, Any]]:
    if not isinstance(report, dict):
        return False

    fields = cast("dict[str, Any]", report)
    return (
        fields.get("probe") in PROBES
        and isinstance(fields.get("escaped"), bool)
        and isinstance(fields.get("evidence"), str)
        and isinstance(fields.get("digest"), str | None)
        and isinstance(fields.get("error"), str | None)
    )


def judge(
    server: str, backend: str, run: ProbeRun, traces: Traces, granted: dict[str, str]
) -> list[Row]:
    """One row per probe, in the probes' order."""
    return [
        Row(server, backend, probe, *verdict(probe, run, traces, granted))
        for probe in PROBES
    ]


def verdict(
    probe: str, run: ProbeRun, traces: Traces, granted: dict[str, str]
) -> tuple[Status, str]:
    """Where the host could judge a probe, its finding decides, whatever the
    sandbox said; otherwise the probe's own report does."""
    if probe in granted:
        return "granted", granted[probe]

    trace = traces.get(probe)
    if trace is not None and trace.escaped:
        return "ESCAPED", trace.detail

    report = run.reports.get(probe)
    if report is None:
        return "not run", run.problem or "the probe reported nothing"

    if report["error"] is not None:
        return "not run", f"the probe broke: {report['error']}"

    evidence = str(report["evidence"])[:MAX_EVIDENCE_CHARS]
    if trace is not None:
        return "contained", f"{trace.detail} (inside: {evidence})"

    return ("ESCAPED" if report["escaped"] else "contained"), evidence


def summary(rows: list[Row]) -> str:
    """``9 contained`` or ``7 ESCAPED, 2 contained``: counts, worst first."""
    order: tuple[Status, ...] = ("ESCAPED", "not run", "contained", "granted")
    counts = [(status, sum(r.status == status for r in rows)) for status in order]
    return ", ".join(f"{count} {status}" for status, count in counts if count)
