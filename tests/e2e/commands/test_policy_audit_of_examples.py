"""The policy audit run on the shipped example configurations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

EXAMPLES = REPO / "examples"


def policy_audit(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MCP_SANDBOX_PROXY_DEMO_DIR": "/srv/notes"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mcp_sandbox_proxy",
            "audit",
            "--config",
            str(config),
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_the_quickstart_example_has_no_finding_at_high_severity() -> None:
    """The example a new user runs first grants nothing risky: the audit passes
    at --fail-on high and names each server's reach in every format."""
    config = EXAMPLES / "quickstart.yaml"
    table = policy_audit(config, "--fail-on", "high")
    report = json.loads(policy_audit(config, "--format", "json").stdout)
    markdown = policy_audit(config, "--format", "markdown").stdout

    assert table.returncode == 0, table.stdout + table.stderr
    assert "notes" in table.stdout and "time" in table.stdout
    assert "/srv/notes" in json.dumps(report)
    assert markdown.lstrip().startswith("#") and "/srv/notes" in markdown
