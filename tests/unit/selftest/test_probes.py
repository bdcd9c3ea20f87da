"""The probe script: standard library only, and what single probes report.

Here the probes run in the test's own process, with no sandbox around them, on
targets the test makes; the e2e tests run the whole script in real sandboxes.
"""

from __future__ import annotations

import argparse
import ast
import os
import socket
import sys
from pathlib import Path

import pytest

from mcp_sandbox_proxy.selftest import probes
from mcp_sandbox_proxy.selftest.probes import (
    WRITTEN_NAME,
    Outcome,
    home_file_read,
    host_folder_write,
    host_loopback_connect,
    host_process_listing,
    proxy_secret_read,
    run_probe,
    start_time,
)

TOKEN = "f00dfeed" * 4


def targets(**changes: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "token": TOKEN,
        "canary": "/nonexistent/canary",
        "write_dir": "/nonexistent/folder",
        "port": 9,
        "proxy_pid": os.getpid(),
        "proxy_start": start_time(Path("/proc/self")),
    }
    values.update(changes)
    return argparse.Namespace(**values)


def test_the_script_imports_only_the_standard_library() -> None:
    """It runs on a sandbox's or image's bare python3, without the package."""
    tree = ast.parse(Path(probes.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }

    assert imported - set(sys.stdlib_module_names) == set()


def test_the_canary_counts_only_when_it_holds_the_token(tmp_path: Path) -> None:
    """Reading a file at the canary's path that is not the canary is no escape."""
    canary = tmp_path / "canary"
    canary.write_text(f"{TOKEN}\n")
    other = tmp_path / "other"
    other.write_text("something else\n")

    assert home_file_read(targets(canary=str(canary))).escaped
    assert not home_file_read(targets(canary=str(other))).escaped


def test_a_refused_read_names_the_error_and_the_path() -> None:
    """The evidence of a refusal is the errno's name and what was tried."""
    assert home_file_read(targets()) == Outcome(
        False, "read /nonexistent/canary: ENOENT"
    )


def test_the_write_probe_leaves_its_file_where_it_was_told(tmp_path: Path) -> None:
    """A write that succeeds leaves the marked file for the host to find."""
    outcome = host_folder_write(targets(write_dir=str(tmp_path)))

    assert outcome.escaped
    assert (tmp_path / WRITTEN_NAME).read_text() == TOKEN


def test_the_secret_is_found_in_the_own_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A secret passed into the probe's environment is an escape."""
    monkeypatch.setenv("LEAKED", f"x{TOKEN}x")
    outcome = proxy_secret_read(targets())

    assert outcome.escaped
    assert "own environment" in outcome.evidence


def test_the_connect_probe_sends_the_token() -> None:
    """A listener the probe reaches receives the token, the host's evidence."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        outcome = host_loopback_connect(targets(port=listener.getsockname()[1]))
        conn, _ = listener.accept()
        with conn:
            received = conn.recv(256)

    assert outcome.escaped
    assert received == TOKEN.encode() + b"\n"


def test_the_proxy_is_recognised_by_pid_and_start_time() -> None:
    """The same pid with another start time is another process: not the proxy."""
    assert host_process_listing(targets()).escaped
    assert not host_process_listing(targets(proxy_start="0")).escaped


def test_a_probe_that_breaks_reports_an_error_not_a_verdict(tmp_path: Path) -> None:
    """A probe raising (here: given no token to look for) gives ``error``."""
    canary = tmp_path / "canary"
    canary.write_text("text")
    line = run_probe("home-file-read", targets(canary=str(canary), token=None))

    assert line["escaped"] is False
    assert line["error"] is not None and line["error"].startswith("AttributeError")
