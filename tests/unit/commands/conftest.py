"""Configurations for the policy commands, and running the command line."""

from __future__ import annotations

import contextlib
import io
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mcp_sandbox_proxy.cli import main
from tests.conftest import WriteConfig

RISKY_POLICY = """\
isolation:
  backend: process
  filesystem: {write: ["${HOME}"]}
  network: {allow: ["*:443"]}
serverRequests: {sampling: true}
"""


@dataclass(frozen=True)
class Outcome:
    """What one run of the command line printed, and its exit status."""

    status: int
    out: str
    err: str


Run = Callable[..., Outcome]
Configure = Callable[..., Path]


@pytest.fixture
def run() -> Run:
    """Run ``mcp-sandbox-proxy ARGS...`` in this process, capturing its output."""

    def run_cli(*args: str) -> Outcome:
        # Streams of our own, never closed: the command line configures logging
        # with the stderr it finds, and loggers cached then outlive the test.
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(args))

        return Outcome(status, out.getvalue(), err.getvalue())

    return run_cli


@pytest.fixture
def configure(
    write_config: WriteConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Configure:
    """Write policies and a configuration; HOME and WORKSPACE point into tmp."""
    folder = tmp_path / "policies"
    folder.mkdir()
    (tmp_path / "home").mkdir()
    (tmp_path / "ws").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WORKSPACE", str(tmp_path / "ws"))

    def write(servers: dict[str, Any], policies: dict[str, str] | None = None) -> Path:
        for name, text in (policies or {}).items():
            (folder / f"{name}.yaml").write_text(textwrap.dedent(text))

        return write_config(servers, policyPaths=["policies"])

    return write


def server(policy: str, **keys: Any) -> dict[str, Any]:
    """One server's configuration, running a harmless command."""
    return {"command": "python3", "args": ["-c", "pass"], "policy": policy, **keys}
