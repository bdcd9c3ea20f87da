"""``audit``: the three formats, and ``--fail-on`` for scripts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_sandbox_proxy.policy import ToolPins
from tests.unit.commands.conftest import RISKY_POLICY, Configure, Run, server

RISKY_CODES = {
    ("critical", "process-backend"),
    ("high", "writable-home"),
    ("high", "network-everything"),
    ("medium", "sampling"),
}


@pytest.fixture
def risky_config(configure: Configure) -> Path:
    return configure(
        {"danger": server("risky"), "time": server("compute-only")},
        {"risky": RISKY_POLICY},
    )


def test_the_table_shows_rows_and_findings(risky_config: Path, run: Run) -> None:
    """The default format: a table of servers, then one of findings."""
    outcome = run("audit", "-c", str(risky_config))

    assert outcome.status == 0
    assert outcome.out.splitlines()[0].split()[:3] == ["SERVER", "TOOL", "POLICY"]
    found = {
        (line.split()[0], line.rsplit("[", 1)[1].rstrip("]"))
        for line in outcome.out.splitlines()
        if line.split()[:1] in (["critical"], ["high"], ["medium"], ["low"])
    }
    assert found == RISKY_CODES


def test_json_output_carries_the_findings(risky_config: Path, run: Run) -> None:
    """``--format json`` for tools."""
    outcome = run("audit", "-c", str(risky_config), "--format", "json")

    document = json.loads(outcome.out)
    found = {
        (f["severity"], f["code"]) for row in document["rows"] for f in row["findings"]
    }
    assert found == RISKY_CODES
    assert document["counts"]["critical"] == 1


def test_markdown_output_is_a_report(risky_config: Path, run: Run) -> None:
    """``--format markdown`` for reports."""
    outcome = run("audit", "-c", str(risky_config), "--format", "markdown")

    assert outcome.out.startswith("# Policy audit\n")
    assert "| critical | danger | * | runs with the process backend" in outcome.out


@pytest.mark.parametrize(
    ("severity", "status"), [("critical", 1), ("high", 1), ("low", 1)]
)
def test_fail_on_exits_1_when_a_finding_is_that_severe(
    risky_config: Path, run: Run, severity: str, status: int
) -> None:
    """Any finding at or above the threshold fails the run."""
    outcome = run("audit", "-c", str(risky_config), "--fail-on", severity)

    assert outcome.status == status


def test_fail_on_passes_a_configuration_of_shipped_policies(
    configure: Configure, run: Run
) -> None:
    """The shipped library raises nothing, even at the lowest threshold."""
    path = configure({"files": server("read-only-folder"), "t": server("strict")})

    outcome = run("audit", "-c", str(path), "--fail-on", "info")

    assert outcome.status == 0
    assert outcome.out.endswith("No findings.\n")


def test_tools_come_from_the_pin_file_when_it_knows_them(
    risky_config: Path, run: Run, tmp_path: Path
) -> None:
    """With a pin file, one row per pinned tool instead of one per server."""
    pins = ToolPins.load(tmp_path / "pins.json")
    pins.check("time", [{"name": "get_current_time"}, {"name": "convert_time"}])
    pins.save()

    outcome = run("audit", "-c", str(risky_config), "--format", "json")

    rows = json.loads(outcome.out)["rows"]
    assert [(r["server"], r["tool"]) for r in rows] == [
        ("danger", "*"),
        ("time", "convert_time"),
        ("time", "get_current_time"),
    ]
