"""The policy audit: what each tool may do, and its risky grants by severity.

For every server and tool: what it can read, write and reach, its environment,
limits and backend. Tools come from the pin file when it knows the server's tools;
otherwise there is one row for the server's own policy (tool ``*``) and one per
configured tool glob. Three renderings: a table for people, JSON for tools,
Markdown for reports.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from mcp_sandbox_proxy.policy.pins import ToolPins
from mcp_sandbox_proxy.policy.policyset import PolicySet
from mcp_sandbox_proxy.policy.resolve import ResolvedPolicy
from mcp_sandbox_proxy.policy.rules import is_within, tool_rule

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("info", "low", "medium", "high", "critical")

# Sockets that control the machine: whoever can connect to one can start
# privileged containers or services, which is the same as being root.
CONTROL_SOCKETS = (
    "/run/docker.sock",
    "/var/run/docker.sock",
    "/run/containerd/containerd.sock",
    "/run/podman/podman.sock",
    "/run/crio/crio.sock",
    "/run/dbus/system_bus_socket",
    "/run/systemd/private",
)
# Per-user runtime folders hold the session bus and rootless engines' sockets.
USER_RUNTIME = "/run/user"
SYSTEM_FOLDERS = ("/etc", "/usr", "/bin", "/sbin", "/lib", "/boot", "/var/lib")
HOME_SECRETS = (".ssh", ".gnupg", ".aws", ".kube", ".docker", ".config", ".netrc")


@dataclass(frozen=True)
class Finding:
    """One risky grant: how bad, a stable code, and a sentence for people."""

    severity: Severity
    code: str
    message: str


@dataclass(frozen=True)
class AuditRow:
    """What one tool (or tool glob) of one server may do, and what is risky."""

    server: str
    tool: str
    policy: str
    callable: bool
    backend: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    network: tuple[str, ...]
    env: tuple[str, ...]
    limits: dict[str, str]
    findings: tuple[Finding, ...] = field(default=())


def format_size(size: int | None) -> str:
    """``512MiB`` from 536870912; ``unlimited`` from None."""
    if size is None:
        return "unlimited"

    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        # A unit fits when the value needs at most two decimals: 1.5GiB, 192MiB.
        if size >= factor and (size * 100) % factor == 0:
            return f"{size / factor:g}{unit}"

    return f"{size}B"


def limits_summary(policy: ResolvedPolicy) -> dict[str, str]:
    """The limits as people write them."""
    limits = policy.policy.isolation.limits
    return {
        "memory": format_size(limits.memory),
        "cpu": "unlimited" if limits.cpu is None else f"{limits.cpu:g}",
        "pids": "unlimited" if limits.pids is None else str(limits.pids),
        "openFiles": "unlimited"
        if limits.open_files is None
        else str(limits.open_files),
        "fileSize": format_size(limits.file_size),
        "tmpfs": format_size(limits.tmpfs),
        "callTimeout": f"{limits.call_timeout:g}s",
        "output": format_size(limits.output),
        "results": format_size(policy.max_result_bytes),
    }


def findings_for(policy: ResolvedPolicy, home: str) -> list[Finding]:
    """Every risky grant of ``policy``, most severe first."""
    found = [
        *_backend_findings(policy),
        *_socket_findings(policy),
        *_write_findings(policy, home),
        *_read_findings(policy, home),
        *_network_findings(policy),
        *_limit_findings(policy),
        *_request_findings(policy),
    ]
    return sorted(found, key=lambda f: -SEVERITIES.index(f.severity))


def _backend_findings(policy: ResolvedPolicy) -> Iterable[Finding]:
    if policy.backend == "process":
        yield Finding(
            "critical",
            "process-backend",
            "runs with the process backend: no isolation, every right of your user",
        )


def _socket_findings(policy: ResolvedPolicy) -> Iterable[Finding]:
    for path in (*policy.read_paths, *policy.write_paths):
        inside = [
            s for s in _real((*CONTROL_SOCKETS, USER_RUNTIME)) if is_within(s, path)
        ]
        if inside or path.endswith(".sock") or is_within(path, USER_RUNTIME):
            shown = ", ".join(inside) or path
            yield Finding(
                "critical", "control-socket", f"mounts a control socket ({shown})"
            )


def _write_findings(policy: ResolvedPolicy, home: str) -> Iterable[Finding]:
    for path in policy.write_paths:
        if any(is_within(folder, path) for folder in SYSTEM_FOLDERS):
            yield Finding(
                "critical", "writable-system", f"can write system folder {path}"
            )
        elif is_within(home, path):
            yield Finding(
                "high", "writable-home", f"can write the home folder ({path})"
            )
        elif any(is_within(path, f"{home}/{name}") for name in HOME_SECRETS):
            yield Finding(
                "high", "writable-secrets", f"can write credentials in {path}"
            )


def _read_findings(policy: ResolvedPolicy, home: str) -> Iterable[Finding]:
    for path in policy.read_paths:
        if is_within(home, path):
            yield Finding(
                "medium",
                "readable-home",
                f"can read the whole home folder ({path}), keys and tokens included",
            )


def _real(paths: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(os.path.realpath(p) for p in paths))


def _network_findings(policy: ResolvedPolicy) -> Iterable[Finding]:
    network = policy.policy.isolation.network
    if any(rule.is_everything for rule in network.rules):
        yield Finding("high", "network-everything", "may connect to any address")

    if network.allow_private:
        yield Finding(
            "medium",
            "network-private",
            "may reach private and loopback addresses (allowPrivate)",
        )


def _limit_findings(policy: ResolvedPolicy) -> Iterable[Finding]:
    limits = policy.policy.isolation.limits
    if limits.memory is None:
        yield Finding("medium", "no-memory-limit", "has no memory limit")

    if limits.pids is None:
        yield Finding("low", "no-pids-limit", "has no limit on processes")


def _request_findings(policy: ResolvedPolicy) -> Iterable[Finding]:
    if policy.allow_sampling:
        yield Finding(
            "medium",
            "sampling",
            "may ask the client's model to generate text (sampling)",
        )

    if policy.allow_elicitation:
        yield Finding(
            "low", "elicitation", "may ask the person for input (elicitation)"
        )

    if policy.allow_roots:
        yield Finding("low", "roots", "may learn which folders the client has open")

    results = policy.policy.results
    if results.allow_terminal_escapes or results.allow_invisible_unicode:
        yield Finding(
            "medium",
            "unfiltered-results",
            "returns text with terminal escapes or invisible characters kept",
        )


def audit_rows(
    policies: PolicySet, pins: ToolPins | None, environ: Mapping[str, str]
) -> list[AuditRow]:
    """One row per known tool (or per configured glob), server by server."""
    home = os.path.realpath(environ.get("HOME") or str(Path.home()))
    rows: list[AuditRow] = []
    for server, config in policies.config.enabled_servers().items():
        known = pins.tools(server) if pins is not None else []
        for tool in known or ["*", *config.tools]:
            policy = policies.for_tool(server, tool)
            allowed, _ = tool_rule(policy.policy.tools, tool)
            rows.append(_row(server, tool, policy, allowed, home))

    return rows


def _row(
    server: str, tool: str, policy: ResolvedPolicy, allowed: bool, home: str
) -> AuditRow:
    isolation = policy.policy.isolation
    env = isolation.env
    return AuditRow(
        server=server,
        tool=tool,
        policy=policy.name,
        callable=allowed,
        backend=policy.backend,
        reads=policy.read_paths,
        writes=policy.write_paths,
        network=isolation.network.allow,
        env=(*env.pass_, *env.set_, *(f"{n} (secret)" for n in env.secrets)),
        limits=limits_summary(policy),
        findings=tuple(findings_for(policy, home)) if allowed else (),
    )


def worst_severity(rows: Iterable[AuditRow]) -> Severity | None:
    """The most severe finding of all rows, None without findings."""
    levels = [SEVERITIES.index(f.severity) for row in rows for f in row.findings]
    return SEVERITIES[max(levels)] if levels else None


def render_json(rows: list[AuditRow]) -> str:
    """Rows with their findings, and a count per severity."""
    counts = {
        s: sum(f.severity == s for r in rows for f in r.findings) for s in SEVERITIES
    }
    document: dict[str, Any] = {"rows": [asdict(r) for r in rows], "counts": counts}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _cells(row: AuditRow) -> list[str]:
    limits = row.limits
    return [
        row.server,
        row.tool,
        row.policy if row.callable else f"{row.policy} (denied)",
        row.backend,
        ", ".join(row.reads) or "-",
        ", ".join(row.writes) or "-",
        ", ".join(row.network) or "none",
        ", ".join(row.env) or "-",
        f"mem {limits['memory']}, cpu {limits['cpu']}, pids {limits['pids']},"
        f" {limits['callTimeout']}/call",
    ]


_HEADER = [
    "server",
    "tool",
    "policy",
    "backend",
    "reads",
    "writes",
    "network",
    "env",
    "limits",
]
_FINDING_HEADER = ["severity", "server", "tool", "finding"]


def _finding_cells(rows: list[AuditRow]) -> list[list[str]]:
    return [
        [f.severity, r.server, r.tool, f"{f.message} [{f.code}]"]
        for r in rows
        for f in r.findings
    ]


def render_table(rows: list[AuditRow]) -> str:
    """Two aligned tables: what each tool may do, then the findings."""
    text = _aligned([h.upper() for h in _HEADER], [_cells(r) for r in rows])
    findings = _finding_cells(rows)
    if not findings:
        return text + "\nNo findings.\n"

    return text + "\n" + _aligned([h.upper() for h in _FINDING_HEADER], findings)


def _aligned(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *body]
    ]
    return "\n".join(lines) + "\n"


def render_markdown(rows: list[AuditRow]) -> str:
    """A report: a table of what each tool may do, then a table of findings."""
    parts = ["# Policy audit\n", _markdown_table(_HEADER, [_cells(r) for r in rows])]
    findings = _finding_cells(rows)
    parts.append("## Findings\n")
    parts.append(_markdown_table(_FINDING_HEADER, findings) if findings else "None.\n")
    return "\n".join(parts)


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
    def line(cells: list[str]) -> str:
        escaped = (c.replace("|", "\\|") for c in cells)
        return "| " + " | ".join(escaped) + " |"

    rule = "|" + "|".join("---" for _ in header) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)]) + "\n"
