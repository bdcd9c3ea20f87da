"""The policy audit: what each tool may do, and risky grants by severity, in the
three renderings."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mcp_sandbox_proxy.policy import PolicySet, ToolPins
from mcp_sandbox_proxy.policy.review import (
    AuditRow,
    audit_rows,
    render_json,
    render_markdown,
    render_table,
    worst_severity,
)
from tests.unit.policy.conftest import LoadPolicies, WritePolicy, server

SHIPPED = {
    "time": "compute-only",
    "docs": "read-only-folder",
    "notes": "read-write-folder",
    "repo": "git-read-only",
    "web": "web-fetch-allow-list",
    "other": "strict",
}
RISKY_FINDINGS = {
    ("critical", "process-backend"),
    ("critical", "control-socket"),
    ("critical", "writable-system"),
    ("high", "writable-home"),
    ("high", "network-everything"),
    ("medium", "network-private"),
    ("medium", "no-memory-limit"),
    ("medium", "sampling"),
    ("medium", "unfiltered-results"),
    ("low", "no-pids-limit"),
    ("low", "elicitation"),
    ("low", "roots"),
}


@pytest.fixture
def shipped(load_policies: LoadPolicies, tmp_path: Path, home: Path) -> PolicySet:
    """Every shipped policy, each on a server, folders outside the home."""
    for name in ("ws", "repo"):
        (tmp_path / name).mkdir()

    environ = {
        "WORKSPACE": str(tmp_path / "ws"),
        "REPOSITORY": str(tmp_path / "repo"),
        "HOME": str(home),
    }
    servers = {name: server(policy) for name, policy in SHIPPED.items()}
    return load_policies(servers, environ=environ)


@pytest.fixture
def risky(write_policy: WritePolicy, load_policies: LoadPolicies) -> PolicySet:
    """A deliberately risky policy: every grant the audit should flag."""
    write_policy(
        "risky",
        """\
        isolation:
          backend: process
          filesystem:
            read: [/var/run/docker.sock]
            write: ["${HOME}", /etc]
          network: {allow: ["*:*"], allowPrivate: true}
          limits: {memory: unlimited, pids: unlimited}
        serverRequests: {sampling: true, elicitation: true, roots: true}
        results: {allowTerminalEscapes: true}
        tools: {deny: [format_disk]}
        """,
    )
    return load_policies({"danger": server("risky"), "calm": server("compute-only")})


def codes(rows: list[AuditRow]) -> set[tuple[str, str]]:
    return {(f.severity, f.code) for row in rows for f in row.findings}


def test_the_shipped_policies_have_no_findings(shipped: PolicySet) -> None:
    """The library is safe as shipped: nothing flagged on any server."""
    rows = audit_rows(shipped, None, shipped.environ)

    assert [(r.server, r.tool, r.policy) for r in rows] == sorted(
        (name, "*", policy) for name, policy in SHIPPED.items()
    )
    assert codes(rows) == set()
    assert worst_severity(rows) is None


def test_the_shipped_rows_say_what_each_server_may_do(
    shipped: PolicySet, tmp_path: Path
) -> None:
    """Reads, writes, network, environment, backend and limits per server."""
    rows = {r.server: r for r in audit_rows(shipped, None, shipped.environ)}

    assert rows["docs"].reads == (str(tmp_path / "ws"),)
    assert rows["notes"].writes == (str(tmp_path / "ws"),)
    assert rows["web"].network == (
        "docs.python.org:443",
        "*.wikipedia.org:443",
        "modelcontextprotocol.io:443",
    )
    assert rows["time"].env == ("TZ",)
    assert rows["time"].limits["memory"] == "192MiB"
    assert {r.backend for r in rows.values()} == {"namespace"}


def test_a_risky_policy_is_flagged_for_every_risky_grant(risky: PolicySet) -> None:
    """Each risk has its finding and severity; the calm server has none."""
    rows = audit_rows(risky, None, risky.environ)

    assert codes([r for r in rows if r.server == "danger"]) == RISKY_FINDINGS
    assert codes([r for r in rows if r.server == "calm"]) == set()
    assert worst_severity(rows) == "critical"


def test_the_table_lists_the_findings_most_severe_first(risky: PolicySet) -> None:
    """People read a table: one line per finding, its code in brackets."""
    text = render_table(audit_rows(risky, None, risky.environ))

    lines = text.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("SEVERITY")))
    found = {
        (line.split()[0], re.findall(r"\[([a-z-]+)\]$", line)[0])
        for line in lines[start + 1 :]
    }
    assert found == RISKY_FINDINGS
    assert lines[start + 1].split()[:3] == ["critical", "danger", "*"]
    assert lines[0].split() == [
        "SERVER", "TOOL", "POLICY", "BACKEND", "READS", "WRITES", "NETWORK", "ENV",
        "LIMITS",
    ]  # fmt: skip


def test_the_json_carries_rows_findings_and_counts(risky: PolicySet) -> None:
    """Tools read JSON: every row with its findings, and a count per severity."""
    document = json.loads(render_json(audit_rows(risky, None, risky.environ)))

    danger = next(r for r in document["rows"] if r["server"] == "danger")
    assert {(f["severity"], f["code"]) for f in danger["findings"]} == RISKY_FINDINGS
    assert danger["backend"] == "process"
    assert danger["network"] == ["*:*"]
    assert document["counts"] == {
        "info": 0,
        "low": 3,
        "medium": 4,
        "high": 2,
        "critical": 3,
    }


def test_the_markdown_report_has_both_tables(risky: PolicySet) -> None:
    """Reports take Markdown: a heading, the rows, then the findings."""
    text = render_markdown(audit_rows(risky, None, risky.environ))

    finding_rows = re.findall(
        r"^\| (\w+) \| danger \| \* \| .* \[([a-z-]+)\] \|$", text, re.M
    )
    assert text.startswith("# Policy audit\n")
    assert "## Findings" in text
    assert set(finding_rows) == RISKY_FINDINGS


def test_without_findings_each_rendering_says_so(shipped: PolicySet) -> None:
    """An empty findings section is stated, not left out."""
    rows = audit_rows(shipped, None, shipped.environ)

    assert render_table(rows).endswith("\nNo findings.\n")
    assert render_markdown(rows).endswith("## Findings\n\nNone.\n")
    assert json.loads(render_json(rows))["counts"]["critical"] == 0


def test_tools_known_from_the_pin_file_get_a_row_each(
    risky: PolicySet, tmp_path: Path
) -> None:
    """With pins, rows are per tool; a denied tool is marked and not flagged."""
    pins = ToolPins.load(tmp_path / "pins.json")
    pins.check("danger", [{"name": "format_disk"}, {"name": "list"}])

    rows = [r for r in audit_rows(risky, pins, risky.environ) if r.server == "danger"]

    assert [(r.tool, r.callable, bool(r.findings)) for r in rows] == [
        ("format_disk", False, False),
        ("list", True, True),
    ]
    assert "risky (denied)" in render_table(rows)
