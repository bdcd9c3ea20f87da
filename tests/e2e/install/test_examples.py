"""The configurations in ``examples/``: each one checks, and those whose servers
need no outside site run through the proxy, installed from the real registries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import MCPError

from tests.conftest import REPO
from tests.e2e.sandbox.test_real_servers_in_namespace import (
    NOBODY,
    nobody_folder,
    text_of,
)
from tests.support.proxy_client import proxy_session
from tests.support.repositories import one_commit_repository

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio, pytest.mark.timeout(600)]

EXAMPLES = REPO / "examples"
CLI = [sys.executable, "-m", "mcp_sandbox_proxy"]
# uv and uvx come with the test tools, beside this interpreter.
TOOLS_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
# The variables each example's comment block asks for.
EXAMPLE_VARIABLES: dict[str, tuple[str, ...]] = {
    "quickstart.yaml": ("MCP_SANDBOX_PROXY_DEMO_DIR",),
    "time.yaml": (),
    "git-uvx.yaml": ("GIT_REPOSITORY",),
    "fetch-uvx.yaml": (),
    "filesystem-npx.yaml": ("NOTES_DIR",),
    "per-tool-policies.yaml": ("NOTES_DIR",),
}
FETCH_SITES = {
    "docs.python.org:443",
    "*.wikipedia.org:443",
    "modelcontextprotocol.io:443",
}


@pytest.fixture(scope="module")
def package_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``XDG_CACHE_HOME`` for the whole module: each package installs once."""
    return tmp_path_factory.mktemp("cache")


def proxy_env(cache: Path, state: Path, **variables: str) -> dict[str, str]:
    """What the proxy is started with: the example's variables, uvx on the PATH,
    the shared package cache, and this test's own audit log and pin file."""
    return {
        "PATH": TOOLS_PATH,
        "XDG_CACHE_HOME": str(cache),
        "XDG_STATE_HOME": str(state),
        **variables,
    }


def audit_records(state: Path, event: str) -> list[dict[str, Any]]:
    lines = (state / "mcp-sandbox-proxy" / "audit.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_every_example_configuration_is_listed_here() -> None:
    """A new example must say here which variables it needs, so it is checked."""
    assert {p.name for p in EXAMPLES.glob("*.yaml")} == set(EXAMPLE_VARIABLES)


@pytest.mark.parametrize("example", sorted(EXAMPLE_VARIABLES))
def test_example_passes_check_with_its_variables_set(
    example: str, tmp_path: Path
) -> None:
    """``check`` validates the file, its policies and the folders they grant."""
    variables = {name: str(tmp_path) for name in EXAMPLE_VARIABLES[example]}
    done = run_cli("check", "--config", str(EXAMPLES / example), env=variables)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "sandbox profile" in done.stdout


async def test_time_example_tells_the_time(package_cache: Path, tmp_path: Path) -> None:
    """``uvx mcp-server-time`` installs, then answers under compute-only."""
    env = proxy_env(package_cache, tmp_path / "state")
    async with proxy_session(EXAMPLES / "time.yaml", env=env) as session:
        now = await session.call_tool("time__get_current_time", {"timezone": "UTC"})

    assert not now.is_error
    assert json.loads(text_of(now))["timezone"] == "UTC"
    (started,) = audit_records(tmp_path / "state", "sandbox_started")
    assert started["server"] == "time" and started["network"] == "none"


async def test_git_example_logs_a_repository(
    package_cache: Path, tmp_path: Path
) -> None:
    """``uvx mcp-server-git`` reads the repository named by GIT_REPOSITORY."""
    message = "Write the first note"
    repo = one_commit_repository(tmp_path / "repo", message, owner=NOBODY)
    env = proxy_env(package_cache, tmp_path / "state", GIT_REPOSITORY=str(repo))
    async with proxy_session(EXAMPLES / "git-uvx.yaml", env=env) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        log = await session.call_tool("git__git_log", {"repo_path": str(repo)})

    assert not log.is_error and "Write the first note" in text_of(log)
    assert "git__git_log" in names and "git__git_commit" not in names


async def test_filesystem_example_writes_then_reads_a_note(
    package_cache: Path, tmp_path: Path
) -> None:
    """``npx -y`` server-filesystem writes into NOTES_DIR and reads it back."""
    notes = nobody_folder(tmp_path / "notes")
    env = proxy_env(package_cache, tmp_path / "state", NOTES_DIR=str(notes))
    note = str(notes / "todo.txt")
    async with proxy_session(EXAMPLES / "filesystem-npx.yaml", env=env) as session:
        wrote = await session.call_tool(
            "files__write_file", {"path": note, "content": "buy milk\n"}
        )
        read = await session.call_tool("files__read_text_file", {"path": note})

    assert not wrote.is_error, text_of(wrote)
    assert (notes / "todo.txt").read_text() == "buy milk\n"
    assert text_of(read) == "buy milk\n"


async def test_per_tool_example_runs_read_and_write_tools_apart(
    package_cache: Path, tmp_path: Path
) -> None:
    """Two instances of server-filesystem: the write tool writes the folder, the
    read tools read it from another sandbox, and a path outside is refused."""
    notes = nobody_folder(tmp_path / "notes")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the server\n")
    state = tmp_path / "state"
    env = proxy_env(package_cache, state, NOTES_DIR=str(notes))
    note = str(notes / "todo.txt")
    config = EXAMPLES / "per-tool-policies.yaml"
    async with proxy_session(config, env=env) as session:
        wrote = await session.call_tool(
            "files__write_file", {"path": note, "content": "buy tea\n"}
        )
        read = await session.call_tool("files__read_text_file", {"path": note})
        with pytest.raises(MCPError) as refused:
            await session.call_tool("files__read_text_file", {"path": str(secret)})

    assert not wrote.is_error and (notes / "todo.txt").read_text() == "buy tea\n"
    assert text_of(read) == "buy tea\n"
    assert "arguments.path" in str(refused.value)
    started = audit_records(state, "sandbox_started")
    assert {r["server"] for r in started} == {"files"}
    assert len({r["profile"] for r in started}) == 2
    intents = {r["tool"]: r["policy"] for r in audit_records(state, "call_intent")}
    assert intents == {
        "write_file": "read-write-folder",
        "read_text_file": "read-only-folder",
    }


def test_fetch_example_allows_only_https_to_the_listed_sites() -> None:
    """Checked, not run: its sites are beyond this machine's reach. ``explain``
    shows the egress allow-list (port 443 only) and the https-only URL rule."""
    done = run_cli(
        "explain",
        "--config",
        str(EXAMPLES / "fetch-uvx.yaml"),
        "fetch",
        "fetch",
        env={},
    )
    assert done.returncode == 0, done.stderr
    header, effective = done.stdout.split("effective policy:\n")
    policy = yaml.safe_load(effective)

    assert "web-fetch-allow-list" in header and "allowed" in header
    assert set(policy["isolation"]["network"]["allow"]) == FETCH_SITES
    assert policy["isolation"]["network"]["allowPrivate"] is False
    assert policy["arguments"]["fetch"]["url"]["pattern"] == "https://.+"
    assert policy["tools"] == {"allow": ["fetch"], "deny": [], "default": "deny"}


def test_claude_desktop_snippet_starts_the_proxy_once() -> None:
    """One entry, running the proxy on a configuration file."""
    snippet = json.loads((EXAMPLES / "claude_desktop_config.json").read_text())
    (entry,) = snippet["mcpServers"].values()

    assert "run" in entry["args"] and "--config" in entry["args"]
    assert entry["args"][entry["args"].index("--config") + 1].endswith(".yaml")


def test_the_quickstart_tour_runs_as_the_demo_runs_it(
    package_cache: Path, tmp_path: Path
) -> None:
    """What ``scripts/demo.sh`` shows a new user: the example's servers installed
    from their registries, listed, then the tour through the proxy, whose audit
    trail verifies."""
    env = {
        **os.environ,
        **proxy_env(package_cache, tmp_path / "state"),
        "MCP_SANDBOX_PROXY_DEMO_DIR": str(nobody_folder(tmp_path / "notes")),
        "PYTHONPATH": str(REPO),
    }
    config = str(EXAMPLES / "quickstart.yaml")
    steps = [
        [*CLI, "install", "--config", config],
        [*CLI, "install", "--config", config, "--list"],
        [sys.executable, str(EXAMPLES / "try_it.py"), config],
    ]
    outputs = []
    for step in steps:
        done = subprocess.run(
            step, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout)

    installed, listed, tour = outputs
    assert installed.count(" installed\n") == 2
    assert "not yet" not in listed
    assert "notes__write_file" in tour and "time__get_current_time" in tour
    assert tour.count(": refused\nDenied: argument 'path'") == 2
    assert "ok: " in tour.split("== audit-log verify")[1]
