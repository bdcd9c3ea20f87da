"""``doctor --self-test`` on the command line: escape probes in the sandboxes a
configuration gives, contained under the shipped policy, escaping without one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mcp_sandbox_proxy.selftest.probes import PROBES
from tests.conftest import WriteConfig
from tests.integration.sandbox.test_docker_engine import (
    PYTHON_IMAGE,
    docker_engine_fixture,  # noqa: F401 - the fixture, by its registered name
)

REPO = Path(__file__).resolve().parents[2]
SELF_TEST = [sys.executable, "-m", "mcp_sandbox_proxy", "doctor", "--self-test"]
# A few seconds per server; this bounds a run that hangs.
RUN_TIMEOUT_S = 120
# Escapes that need root on the host even without a sandbox: mounting, reading
# /etc/shadow, and tracing the parent where Yama restricts ptrace to descendants.
ROOT_ONLY_ESCAPES = {"tmpfs-mount", "shadow-read", "proxy-ptrace"}
CANARY_GLOB = ".mcp-sandbox-selftest-canary-*"


def self_test(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SELF_TEST, "--config", str(config), *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )


def rows_of(done: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return json.loads(done.stdout)["rows"]


def a_server(**keys: Any) -> dict[str, Any]:
    """A server entry; its command is replaced by the probes anyway."""
    return {"command": sys.executable, "args": ["-c", "pass"], **keys}


@pytest.fixture
def unconfined(tmp_path: Path) -> Path:
    """A policies folder with one policy on the process backend."""
    folder = tmp_path / "policies"
    folder.mkdir()
    policy = {
        "description": "No isolation at all, for development.",
        "extends": "strict",
        "isolation": {"backend": "process"},
    }
    (folder / "unconfined.yaml").write_text(yaml.safe_dump(policy))
    return folder


@pytest.mark.bwrap
def test_every_probe_is_contained_under_the_strict_policy(
    write_config: WriteConfig,
) -> None:
    """The shipped strict policy (namespace backend): exit 0, all nine contained."""
    config = write_config({"tools": a_server()})
    done = self_test(config, "--json")

    assert done.returncode == 0, done.stdout + done.stderr
    rows = rows_of(done)
    assert [row["probe"] for row in rows] == list(PROBES)
    assert {(row["server"], row["backend"]) for row in rows} == {("tools", "namespace")}
    assert [row for row in rows if row["status"] != "contained"] == []
    assert "self-test: server 'tools': 9 contained" in done.stderr


@pytest.mark.bwrap
def test_the_process_backend_lets_the_probes_escape_and_exits_1(
    write_config: WriteConfig, unconfined: Path
) -> None:
    """Without a sandbox the probes get out; the table names each escape."""
    config = write_config(
        {"dev": a_server(policy="unconfined")}, policyPaths=[str(unconfined)]
    )
    done = self_test(config)

    assert done.returncode == 1, done.stdout + done.stderr
    escaped = {
        line.split()[2] for line in done.stdout.splitlines() if " ESCAPED " in line
    }
    expected = set(PROBES) if os.geteuid() == 0 else set(PROBES) - ROOT_ONLY_ESCAPES
    assert expected <= escaped
    assert "process backend, which isolates nothing" in done.stdout


@pytest.mark.bwrap
def test_the_bait_is_gone_afterwards(
    write_config: WriteConfig, unconfined: Path
) -> None:
    """No canary stays in the home folder, even after escapes wrote and read."""
    before = set(Path.home().glob(CANARY_GLOB))
    config = write_config(
        {"dev": a_server(policy="unconfined")}, policyPaths=[str(unconfined)]
    )
    done = self_test(config)

    assert done.returncode == 1, done.stdout + done.stderr
    assert set(Path.home().glob(CANARY_GLOB)) == before


@pytest.mark.bwrap
def test_a_folder_the_policy_grants_is_reported_as_granted(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """A policy that grants the home folder: the canary probe is not an escape."""
    folder = tmp_path / "policies"
    folder.mkdir()
    policy = {"extends": "strict", "isolation": {"filesystem": {"read": ["~"]}}}
    (folder / "home-reader.yaml").write_text(yaml.safe_dump(policy))
    config = write_config(
        {"reader": a_server(policy="home-reader")}, policyPaths=[str(folder)]
    )
    done = self_test(config, "--json")

    assert done.returncode == 0, done.stdout + done.stderr
    statuses = {row["probe"]: row["status"] for row in rows_of(done)}
    assert statuses.pop("home-file-read") == "granted"
    assert set(statuses.values()) == {"contained"}


def test_an_unknown_server_is_an_error_that_lists_the_known_ones(
    write_config: WriteConfig,
) -> None:
    """``--server`` naming no server: exit 2, and the servers there are."""
    config = write_config({"tools": a_server(), "files": a_server()})
    done = self_test(config, "--server", "nope")

    assert done.returncode == 2
    assert "--server 'nope'" in done.stderr
    assert "(there are: files, tools)" in done.stderr


def test_the_self_test_needs_a_configuration() -> None:
    """Without ``--config`` the error says what to give."""
    done = subprocess.run(
        SELF_TEST,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )

    assert done.returncode == 2
    assert "--self-test needs --config FILE" in done.stderr


@pytest.mark.docker
def test_every_probe_is_contained_in_a_container(
    write_config: WriteConfig, docker_engine: Any
) -> None:
    """A server on the docker backend: the probes run in its image, contained."""
    config = write_config(
        {"boxed": a_server(command="python3", backend="docker", image=PYTHON_IMAGE)}
    )
    done = self_test(config, "--json")

    assert done.returncode == 0, done.stdout + done.stderr
    rows = rows_of(done)
    assert {row["backend"] for row in rows} == {"docker"}
    assert [row for row in rows if row["status"] != "contained"] == []
