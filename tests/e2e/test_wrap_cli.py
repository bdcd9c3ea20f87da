"""``mcp-sandbox-proxy wrap`` and ``unwrap`` run as a user runs them, on real files."""

from __future__ import annotations

import json
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from mcp_sandbox_proxy.config import load_config

# Starting Python and reading a few files takes well under this.
COMMAND_TIMEOUT_S = 60
# Starting the proxy and one sandboxed server, then listing and calling a tool.
SESSION_TIMEOUT_S = 60
BACKUP_SUFFIX = ".mcp-sandbox-proxy.bak"
RECORD_SUFFIX = ".mcp-sandbox-proxy.json"

SAMPLE = r"""{
  "globalShortcut": "Ctrl+Space",
  "mcpServers": {
    "filesystem": {
      "command": "npx",
      "args": ["-y", "@modelcontextprotocol/server-filesystem", "C:\\Users\\me"]
    },
    "github": {
      "command": "docker",
      "args": ["run", "-i", "--rm", "-e", "GITHUB_TOKEN", "ghcr.io/github/mcp"],
      "env": {"GITHUB_TOKEN": "ghp_example", "DEBUG": "true"}
    },
    "time": {
      "command": "C:\\Program Files\\uv\\uvx.exe",
      "args": ["mcp-server-time"],
      "cwd": "C:\\Users\\me"
    }
  },
  "preferences": {"menuBarEnabled": false}
}
"""


@dataclass(frozen=True)
class Result:
    """How one command line ended."""

    returncode: int
    stdout: str
    stderr: str


@dataclass
class User:
    """A user's home with a Claude Desktop configuration in its default place."""

    home: Path
    env: dict[str, str]

    @property
    def config_home(self) -> Path:
        return self.home / ".config"

    @property
    def claude(self) -> Path:
        return self.config_home / "Claude" / "claude_desktop_config.json"

    @property
    def proxy_config(self) -> Path:
        return self.config_home / "mcp-sandbox-proxy" / "proxy.yaml"

    def run(self, *args: str) -> Result:
        command = [sys.executable, "-m", "mcp_sandbox_proxy", *args]

        async def bounded() -> Result:
            with anyio.fail_after(COMMAND_TIMEOUT_S):
                done = await anyio.run_process(
                    command, cwd=self.home, env=self.env, check=False
                )

            return Result(done.returncode, done.stdout.decode(), done.stderr.decode())

        return anyio.run(bounded)

    def files(self) -> dict[Path, tuple[bytes, int, int]]:
        """Every file under the home: its bytes, mode and modification time."""
        found: dict[Path, tuple[bytes, int, int]] = {}
        for path in sorted(self.home.rglob("*")):
            if path.is_file():
                info = path.stat()
                found[path] = (path.read_bytes(), info.st_mode, info.st_mtime_ns)

        return found


@pytest.fixture
def user(tmp_path: Path) -> User:
    home = tmp_path / "home"
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    person = User(home, env)
    person.claude.parent.mkdir(parents=True)
    person.claude.write_text(SAMPLE)
    person.claude.chmod(0o640)
    return person


def test_wrap_rewrites_claude_file_and_writes_a_loadable_proxy_config(
    user: User,
) -> None:
    """Default places; one proxy entry; every server, env value and path kept."""
    result = user.run("wrap", "--server-policy", "time=compute-only")
    assert result.returncode == 0, result.stderr
    assert "Wrapped 3 server(s)" in result.stdout
    assert "filesystem, time start(s) with npx, uvx or pipx run" in result.stdout
    claude = json.loads(user.claude.read_text())
    args = ["-m", "mcp_sandbox_proxy", "run", "--config", str(user.proxy_config)]
    assert claude["mcpServers"] == {
        "mcp-sandbox-proxy": {"command": sys.executable, "args": args}
    }
    assert claude["globalShortcut"] == "Ctrl+Space"
    assert claude["preferences"] == {"menuBarEnabled": False}
    config = load_config(user.proxy_config)
    assert {n: s.policy for n, s in config.mcp_servers.items()} == {
        "filesystem": "strict",
        "github": "strict",
        "time": "compute-only",
    }
    assert config.mcp_servers["github"].env["GITHUB_TOKEN"] == "ghp_example"
    assert config.mcp_servers["time"].command == "C:\\Program Files\\uv\\uvx.exe"


def test_wrap_keeps_a_backup_and_the_original_permissions(user: User) -> None:
    """The backup is the original byte for byte; modes are kept or made private."""
    assert user.run("wrap").returncode == 0
    backup = user.claude.with_name(user.claude.name + BACKUP_SUFFIX)
    assert backup.read_text() == SAMPLE
    assert stat.S_IMODE(user.claude.stat().st_mode) == 0o640
    assert stat.S_IMODE(backup.stat().st_mode) == 0o640
    assert stat.S_IMODE(user.proxy_config.stat().st_mode) == 0o600
    leftovers = [p.name for p in user.claude.parent.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_second_wrap_changes_nothing_and_says_so(user: User) -> None:
    """Running wrap twice leaves every file as the first run wrote it."""
    assert user.run("wrap").returncode == 0
    before = user.files()
    result = user.run("wrap", "--policy", "compute-only")
    assert result.returncode == 0, result.stderr
    assert "already wrapped" in result.stdout
    assert "nothing changed" in result.stdout
    assert user.files() == before


def test_dry_run_prints_both_diffs_and_writes_nothing(user: User) -> None:
    """--dry-run shows the Claude file's and the proxy config's diff, then stops."""
    before = user.files()
    result = user.run("wrap", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert user.files() == before
    assert f"--- {user.claude}\n+++ {user.claude}\n" in result.stdout
    assert '-    "filesystem": {\n' in result.stdout
    assert '+    "mcp-sandbox-proxy": {\n' in result.stdout
    assert f"--- /dev/null\n+++ {user.proxy_config}\n" in result.stdout
    assert "+    - C:\\Users\\me\n" in result.stdout
    assert "nothing was written" in result.stderr


def test_unwrap_restores_the_exact_original_bytes(user: User) -> None:
    """After wrap then unwrap, only the original file is left, as it was."""
    before = {p: (data, mode) for p, (data, mode, _) in user.files().items()}
    assert user.run("wrap").returncode == 0
    result = user.run("unwrap")
    assert result.returncode == 0, result.stderr
    assert "Restored" in result.stdout
    after = {p: (data, mode) for p, (data, mode, _) in user.files().items()}
    assert after == before


def test_unwrap_dry_run_prints_the_restoring_diff_and_writes_nothing(
    user: User,
) -> None:
    """unwrap --dry-run shows what would come back, and changes no file."""
    assert user.run("wrap").returncode == 0
    before = user.files()
    result = user.run("unwrap", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert '+    "filesystem": {\n' in result.stdout
    assert f"--- {user.proxy_config}\n+++ /dev/null\n" in result.stdout
    assert user.files() == before


def test_unwrap_after_an_edit_refuses_showing_it_and_force_restores(
    user: User,
) -> None:
    """An edit made after wrap is shown and kept unless --force is given."""
    assert user.run("wrap").returncode == 0
    edited = user.claude.read_text().replace("Ctrl+Space", "Alt+Space")
    user.claude.write_text(edited)
    refused = user.run("unwrap")
    assert refused.returncode == 2
    assert f"error: {user.claude}: changed since wrap" in refused.stderr
    assert '+  "globalShortcut": "Alt+Space",' in refused.stderr
    assert user.claude.read_text() == edited
    forced = user.run("unwrap", "--force")
    assert forced.returncode == 0, forced.stderr
    assert user.claude.read_text() == SAMPLE


def test_unwrap_of_a_file_never_wrapped_is_refused(user: User) -> None:
    """No backup, nothing to restore: exit 2 and the file untouched."""
    result = user.run("unwrap")
    assert result.returncode == 2
    assert "no backup at" in result.stderr
    assert user.claude.read_text() == SAMPLE


def test_paths_given_on_the_command_line_are_used(user: User, tmp_path: Path) -> None:
    """--claude-config and --proxy-config replace the default places."""
    claude = tmp_path / "elsewhere" / "claude.json"
    claude.parent.mkdir()
    claude.write_text(SAMPLE)
    proxy = tmp_path / "proxy" / "gateway.json"
    result = user.run(
        "wrap", "--claude-config", str(claude), "--proxy-config", str(proxy)
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(claude.read_text())["mcpServers"]["mcp-sandbox-proxy"]["args"][
        -1
    ] == str(proxy)
    assert list(load_config(proxy).mcp_servers) == ["filesystem", "github", "time"]
    assert user.claude.read_text() == SAMPLE
    assert not user.proxy_config.exists()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{\n  "mcpServers": {\n    "a": {,\n', "line 3, column 11: invalid JSON"),
        ('{"preferences": {}}', "no 'mcpServers' key"),
        ('{"mcpServers": {"my server": {"command": "x"}}}', "server name 'my server'"),
    ],
)
def test_bad_claude_file_exits_2_naming_the_file_and_the_problem(
    user: User, text: str, expected: str
) -> None:
    """The message names the file and the problem; nothing is written."""
    user.claude.write_text(text)
    result = user.run("wrap")
    assert result.returncode == 2
    assert f"mcp-sandbox-proxy: error: {user.claude}: " in result.stderr
    assert expected in result.stderr
    assert [p.name for p in user.claude.parent.iterdir()] == [user.claude.name]


def test_missing_claude_file_exits_2_naming_where_it_looked(user: User) -> None:
    """Without Claude Desktop's file the default path is named."""
    user.claude.unlink()
    result = user.run("wrap")
    assert result.returncode == 2
    assert f"{user.claude}: no such file" in result.stderr


@pytest.mark.bwrap
def test_wrapped_entry_starts_the_proxy_serving_the_servers_tools(
    user: User, time_server: Path
) -> None:
    """Started as Claude Desktop would start it, the entry serves the real server."""
    servers = {"time": {"command": str(time_server), "args": ["--local-timezone=UTC"]}}
    user.claude.write_text(json.dumps({"mcpServers": servers}, indent=2))
    result = user.run("wrap", "--policy", "compute-only")
    assert result.returncode == 0, result.stderr
    entry = json.loads(user.claude.read_text())["mcpServers"]["mcp-sandbox-proxy"]
    params = StdioServerParameters(
        command=entry["command"], args=entry["args"], env=user.env
    )

    async def list_and_call() -> tuple[list[str], str]:
        with anyio.fail_after(SESSION_TIMEOUT_S):
            async with (
                stdio_client(params) as (read, write),
                ClientSession(read, write) as session,
            ):
                await session.initialize()
                tools = [tool.name for tool in (await session.list_tools()).tools]
                called = await session.call_tool(
                    "time__get_current_time", {"timezone": "UTC"}
                )
                return tools, str(called.content)

    tools, content = anyio.run(list_and_call)
    assert "time__get_current_time" in tools
    assert '"timezone": "UTC"' in content
