"""Servers written as ``npx -y``, ``uvx`` and ``pipx run`` in a Claude Desktop
configuration: installed from the real registries in a sandbox of their own,
then run from the installed files with no network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_sandbox_proxy.config import InstallConfig
from mcp_sandbox_proxy.exceptions import SandboxStartFailed
from mcp_sandbox_proxy.install.installer import Installer
from mcp_sandbox_proxy.install.launchers import Ecosystem, Launch, Requirement
from mcp_sandbox_proxy.install.registries import find_registry
from mcp_sandbox_proxy.sandbox.namespace import NamespaceBackend
from tests.conftest import WriteConfig
from tests.support.proxy_client import proxy_session

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[3]
EVERYTHING = "@modelcontextprotocol/server-everything"
# uv and uvx come with the test tools, beside this interpreter.
TOOLS_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
CLI = [sys.executable, "-m", "mcp_sandbox_proxy"]


def records(path: Path, event: str | None = None) -> list[dict[str, Any]]:
    lines = path.read_text().splitlines()
    found = [json.loads(line) for line in lines]
    return [r for r in found if event is None or r["event"] == event]


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


def registry_hosts(ecosystem: Ecosystem) -> set[str]:
    environ = {**os.environ, "PATH": TOOLS_PATH}
    return {e.host for e in find_registry(ecosystem, environ).endpoints}


async def test_npx_and_uvx_servers_install_sandboxed_then_run_offline(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """Written exactly as a Claude Desktop user does; each install reaches only
    its registry; the servers then run with network none; a second start reuses
    the recorded versions and reaches nothing."""
    cache = tmp_path / "packages"
    config = write_config(
        {
            "everything": {"command": "npx", "args": ["-y", EVERYTHING]},
            "time": {"command": "uvx", "args": ["mcp-server-time"]},
        },
        install={"cacheDir": str(cache)},
    )
    audit = tmp_path / "audit.jsonl"
    env = {"PATH": TOOLS_PATH}
    async with proxy_session(config, env=env) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        echo = await session.call_tool("everything__echo", {"message": "hello"})
        now = await session.call_tool("time__get_current_time", {"timezone": "UTC"})

    assert {"everything__echo", "time__get_current_time"} <= names
    assert text_of(echo) == "Echo: hello"
    assert '"timezone": "UTC"' in text_of(now) and not now.is_error

    installed = {r["server"]: r for r in records(audit, "package_installed")}
    assert set(installed) == {"everything", "time"}
    assert installed["everything"]["package"] == EVERYTHING
    assert installed["everything"]["program"].startswith(str(cache))
    assert installed["time"]["program"].endswith("/venv/bin/mcp-server-time")

    attempts = records(audit, "egress_attempt")
    hosts = {"everything": registry_hosts("npm"), "time": registry_hosts("pypi")}
    assert {a["server"] for a in attempts} == {"everything", "time"}
    for attempt in attempts:
        assert attempt["profile"] == "install"
        assert attempt["decision"] == "allow", attempt
        assert attempt["host"] in hosts[attempt["server"]]

    started = records(audit, "sandbox_started")
    assert {s["server"] for s in started} == {"everything", "time"}
    assert {s["network"] for s in started} == {"none"}

    first = len(records(audit))
    async with proxy_session(config, env=env) as session:
        again = await session.call_tool("everything__echo", {"message": "again"})

    assert text_of(again) == "Echo: again"
    later = records(audit)[first:]
    events = [r["event"] for r in later]
    assert "package_install_started" not in events
    assert "egress_attempt" not in events
    ready = {r["server"]: r["version"] for r in later if r["event"] == "package_ready"}
    assert ready == {s: r["version"] for s, r in installed.items()}


async def test_pipx_run_server_installs_with_pip_in_its_sandbox(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """``pipx run`` needs no pipx: the interpreter's venv and pip install it."""
    config = write_config(
        {"time": {"command": "pipx", "args": ["run", "mcp-server-time"]}},
        install={"cacheDir": str(tmp_path / "packages")},
    )
    async with proxy_session(config, env={"PATH": TOOLS_PATH}) as session:
        now = await session.call_tool("time__get_current_time", {"timezone": "UTC"})

    assert not now.is_error
    (installed,) = records(tmp_path / "audit.jsonl", "package_installed")
    assert installed["runner"] == "pipx" and installed["version"]


def install_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "install", "--config", str(config), *args],
        env={**os.environ, "PATH": TOOLS_PATH, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_install_command_installs_lists_and_upgrades(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    cache = tmp_path / "packages"
    config = write_config(
        {"time": {"command": "uvx", "args": ["mcp-server-time"]}},
        install={"cacheDir": str(cache)},
    )
    before = install_cli(config, "--list")
    assert before.returncode == 0, before.stderr
    assert "not yet" in before.stdout

    first = install_cli(config)
    assert first.returncode == 0, first.stderr
    record = json.loads((cache / "installed.json").read_text())["packages"]
    entry = record["pypi:mcp-server-time"]
    assert first.stdout == f"time: mcp-server-time {entry['version']} installed\n"
    assert "package_installing" in first.stderr  # progress, on stderr

    listed = install_cli(config, "--list")
    assert entry["version"] in listed.stdout and "not yet" not in listed.stdout

    again = install_cli(config)
    assert again.stdout.endswith("already installed\n")

    upgraded = install_cli(config, "--upgrade", "time")
    assert upgraded.returncode == 0, upgraded.stderr
    after = json.loads((cache / "installed.json").read_text())["packages"]
    new = after["pypi:mcp-server-time"]
    assert new["directory"] != entry["directory"]
    assert not Path(entry["directory"]).exists()
    assert Path(new["program"]).exists()


async def test_an_upgrade_keeps_the_version_a_running_proxy_uses(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """The running server keeps its files through an upgrade; the next install
    removes them once no proxy holds them any more."""
    cache = tmp_path / "packages"
    config = write_config(
        {"time": {"command": "uvx", "args": ["mcp-server-time"]}},
        install={"cacheDir": str(cache)},
    )

    def folder() -> str:
        packages = json.loads((cache / "installed.json").read_text())["packages"]
        return str(packages["pypi:mcp-server-time"]["directory"])

    assert install_cli(config).returncode == 0
    first = folder()
    async with proxy_session(config, env={"PATH": TOOLS_PATH}) as session:
        before = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
        upgraded = await anyio.to_thread.run_sync(
            install_cli, config, "--upgrade", "time"
        )
        after = await session.call_tool("time__get_current_time", {"timezone": "UTC"})

    assert upgraded.returncode == 0, upgraded.stderr
    second = folder()
    assert second != first
    assert "package_version_kept" in upgraded.stderr
    assert await anyio.Path(first).is_dir()  # held by the proxy while it ran
    assert not before.is_error and not after.is_error

    again = install_cli(config, "--upgrade", "time")
    assert again.returncode == 0, again.stderr
    assert sorted(str(p) for p in (cache / "pypi").iterdir()) == [folder()]
    assert "package_folder_removed" in again.stderr


@pytest.fixture
def bait_server() -> Iterator[tuple[int, list[str]]]:
    """An HTTP server on the host's loopback that records every request."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_error(404)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], hits
    server.shutdown()
    server.server_close()


async def test_an_install_cannot_reach_anything_but_the_registry(
    tmp_path: Path, bait_server: tuple[int, list[str]]
) -> None:
    """A package that points npm at another host fails to install: the filter
    refuses the name before resolving it, and the host never sees a request."""
    port, hits = bait_server
    written: list[tuple[str, dict[str, Any]]] = []

    async def record(event: str, fields: dict[str, Any]) -> None:
        written.append((event, fields))

    cache = tmp_path / "packages"
    installer = Installer(
        InstallConfig(cacheDir=cache),
        backend=NamespaceBackend(),
        record=record,
        # The name leads to the bait server, were it ever allowed.
        egress_hosts={"bait.example.test": ["127.0.0.1"]},
    )
    tarball = f"http://bait.example.test:{port}/evil-1.0.0.tgz"
    launch = Launch("npx", "npm", Requirement(tarball))
    with pytest.raises(SandboxStartFailed, match="failed"):
        await installer.ensure("evil", launch)

    refused = [f for e, f in written if e == "egress_attempt"]
    assert refused and all(f["decision"] == "deny" for f in refused)
    assert {f["host"] for f in refused} == {"bait.example.test"}
    assert hits == []
    assert [e for e, _ in written][-1] == "package_install_failed"
    assert not list((cache / "npm").iterdir())  # the failed install left nothing
    assert not (cache / "installed.json").exists()


@pytest.mark.parametrize(
    ("server", "problem"),
    [
        (
            {"command": "npx", "args": ["--registry", "x", "pkg"]},
            "mcpServers.bad.args: npx option '--registry' is not supported",
        ),
        (
            {"command": "npx", "args": ["-y", "pkg"], "backend": "docker"},
            "mcpServers.bad.command: npx servers are installed on the host",
        ),
    ],
)
def test_a_runner_line_the_install_cannot_honour_stops_the_proxy(
    write_config: WriteConfig, server: dict[str, Any], problem: str
) -> None:
    config = write_config({"bad": server})
    done = subprocess.run(
        [*CLI, "run", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        input="",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert problem in done.stderr
    assert done.stdout == ""
