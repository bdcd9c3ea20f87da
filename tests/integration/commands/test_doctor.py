"""``mcp-sandbox-proxy doctor`` on this machine, and on one without bubblewrap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bwrap

REPO = Path(__file__).resolve().parents[3]
DOCTOR = [sys.executable, "-m", "mcp_sandbox_proxy", "doctor"]


def doctor(
    *args: str, wrapper: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*(wrapper or []), *DOCTOR, *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_doctor_says_the_namespace_backend_is_usable_here() -> None:
    """On a machine with bubblewrap and user namespaces: a table, then exit 0."""
    done = doctor()
    assert done.returncode == 0, done.stdout + done.stderr
    rows = done.stdout.splitlines()
    assert rows[0].split()[:3] == ["backend", "check", "status"]
    assert any(r.startswith("namespace") and "user namespaces" in r for r in rows)
    assert rows[-1] == "namespace backend (the default): usable"


def test_doctor_json_lists_every_backend_and_check() -> None:
    """``--json`` gives each backend's checks with name, ok, required and detail."""
    report = json.loads(doctor("--json").stdout)
    assert report["usable"] is True and report["default_backend"] == "namespace"
    assert set(report["backends"]) == {"namespace", "docker", "process"}
    for check in report["backends"]["namespace"]["checks"]:
        assert set(check) == {"name", "ok", "required", "detail"}


def test_doctor_exits_1_where_bubblewrap_is_missing() -> None:
    """With bwrap hidden (in a mount namespace of the test's own), exit 1 and say so."""
    hide = 'mount --bind /dev/null /usr/bin/bwrap && exec "$@"'
    wrapper = [
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "--",
        "sh",
        "-c",
        hide,
        "sh",
    ]
    done = doctor("--json", wrapper=wrapper)
    report = json.loads(done.stdout)
    namespace = report["backends"]["namespace"]
    assert done.returncode == 1 and not namespace["usable"]
    assert (
        namespace["checks"][0]["name"] == "bubblewrap"
        and not namespace["checks"][0]["ok"]
    )
