"""Planning wrap and unwrap of Claude Desktop configurations, on files in memory."""

from __future__ import annotations

import json
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_sandbox_proxy.claude_desktop import PROXY_SERVER_NAME, default_claude_path
from mcp_sandbox_proxy.config import load_config
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.wrap import (
    NEW_PROXY_CONFIG_MODE,
    Change,
    Existing,
    Files,
    WrapRecord,
    WrapRequest,
    backup_path,
    default_proxy_config_path,
    load_record,
    plan_unwrap,
    plan_wrap,
    record_path,
)

CLAUDE = Path("/home/me/.config/Claude/claude_desktop_config.json")
PROXY = Path("/home/me/.config/mcp-sandbox-proxy/proxy.yaml")
PYTHON = "/opt/venvs/proxy/bin/python"
CLAUDE_MODE = 0o640

# A configuration as people write it: several servers, env values (one empty),
# Windows paths, and top-level keys the proxy must not touch.
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
      "env": {"GITHUB_TOKEN": "ghp_example", "EMPTY": "", "DEBUG": "true"}
    },
    "time": {
      "command": "C:\\Program Files\\uv\\uvx.exe",
      "args": ["mcp-server-time", "--local-timezone=Europe/Paris"],
      "cwd": "C:\\Users\\me"
    }
  },
  "preferences": {"menuBarEnabled": false, "ratio": 1.50}
}
"""

Disk = dict[Path, Existing]


def request(**overrides: Any) -> WrapRequest:
    fields: dict[str, Any] = {
        "claude_path": CLAUDE,
        "proxy_config_path": PROXY,
        "python": PYTHON,
    }
    fields.update(overrides)
    return WrapRequest(**fields)


def disk_with(text: str | bytes) -> Disk:
    data = text.encode() if isinstance(text, str) else text
    return {CLAUDE: Existing(data, CLAUDE_MODE)}


def files_on(disk: Disk, proxy: Path | None = PROXY) -> Files:
    return Files(
        claude=disk.get(CLAUDE),
        backup=disk.get(backup_path(CLAUDE)),
        record=disk.get(record_path(CLAUDE)),
        proxy_config=disk.get(proxy) if proxy else None,
    )


def apply_to(disk: Disk, changes: Iterable[Change]) -> None:
    for change in changes:
        if change.after is None:
            del disk[change.path]
        else:
            disk[change.path] = Existing(change.after, change.mode)


def wrapped(text: str = SAMPLE, **overrides: Any) -> Disk:
    disk = disk_with(text)
    apply_to(disk, plan_wrap(request(**overrides), files_on(disk)).changes)
    return disk


def unwrap(disk: Disk, *, force: bool = False) -> None:
    record = load_record(CLAUDE, disk.get(record_path(CLAUDE)), force=force)
    proxy = record.proxy_config if record else None
    plan = plan_unwrap(CLAUDE, record, files_on(disk, proxy), force=force)
    apply_to(disk, plan.changes)


def error_of(text: str | bytes, **overrides: Any) -> str:
    disk = disk_with(text)
    with pytest.raises(ConfigError) as caught:
        plan_wrap(request(**overrides), files_on(disk))

    return str(caught.value)


@pytest.mark.parametrize(
    ("platform", "environ", "expected"),
    [
        ("linux", {}, "/home/me/.config/Claude"),
        ("linux", {"XDG_CONFIG_HOME": "/xdg"}, "/xdg/Claude"),
        ("linux", {"XDG_CONFIG_HOME": "relative/dir"}, "/home/me/.config/Claude"),
        ("darwin", {}, "/home/me/Library/Application Support/Claude"),
        ("win32", {"APPDATA": "/roaming"}, "/roaming/Claude"),
        ("win32", {}, "/home/me/AppData/Roaming/Claude"),
    ],
)
def test_claude_file_is_found_where_claude_desktop_keeps_it(
    platform: str, environ: dict[str, str], expected: str
) -> None:
    """Each platform's default folder; XDG_CONFIG_HOME counts only when absolute."""
    path = default_claude_path(platform, environ, Path("/home/me"))
    assert path == Path(expected) / "claude_desktop_config.json"


def test_proxy_config_defaults_to_the_tools_own_config_folder() -> None:
    """proxy.yaml sits in mcp-sandbox-proxy's folder beside Claude's, per platform."""
    home = Path("/home/me")
    linux = default_proxy_config_path("linux", {"XDG_CONFIG_HOME": "/xdg"}, home)
    mac = default_proxy_config_path("darwin", {}, home)
    windows = default_proxy_config_path("win32", {"APPDATA": "/roaming"}, home)
    assert linux == Path("/xdg/mcp-sandbox-proxy/proxy.yaml")
    assert mac == home / "Library/Application Support/mcp-sandbox-proxy/proxy.yaml"
    assert windows == Path("/roaming/mcp-sandbox-proxy/proxy.yaml")


def test_wrapped_claude_file_has_one_entry_that_starts_the_proxy() -> None:
    """The entry runs this interpreter with -m, so no PATH change is needed."""
    data = json.loads(wrapped()[CLAUDE].data)
    assert data["mcpServers"] == {
        PROXY_SERVER_NAME: {
            "command": PYTHON,
            "args": ["-m", "mcp_sandbox_proxy", "run", "--config", str(PROXY)],
        }
    }


def test_other_top_level_keys_keep_their_exact_bytes() -> None:
    """Only the mcpServers value is replaced; 1.50 is not rewritten as 1.5."""
    text = wrapped()[CLAUDE].data.decode()
    assert text.startswith('{\n  "globalShortcut": "Ctrl+Space",\n  "mcpServers": {')
    assert text.endswith(
        '  },\n  "preferences": {"menuBarEnabled": false, "ratio": 1.50}\n}\n'
    )


def test_proxy_config_loads_with_every_server_env_and_windows_path(
    tmp_path: Path,
) -> None:
    """The written file loads with load_config; values are kept verbatim."""
    path = tmp_path / "proxy.yaml"
    path.write_bytes(wrapped(proxy_config_path=path)[path].data)
    config = load_config(path)
    assert list(config.mcp_servers) == ["filesystem", "github", "time"]
    github = config.mcp_servers["github"]
    assert github.env == {"GITHUB_TOKEN": "ghp_example", "EMPTY": "", "DEBUG": "true"}
    assert github.args[-1] == "ghcr.io/github/mcp"
    time = config.mcp_servers["time"]
    assert time.command == "C:\\Program Files\\uv\\uvx.exe"
    assert str(time.cwd) == "C:\\Users\\me"
    assert config.mcp_servers["filesystem"].args[-1] == "C:\\Users\\me"


def test_proxy_config_is_json_when_its_name_ends_in_json(tmp_path: Path) -> None:
    """A .json proxy configuration is written as JSON, which load_config expects."""
    path = tmp_path / "proxy.json"
    path.write_bytes(wrapped(proxy_config_path=path)[path].data)
    assert load_config(path).mcp_servers["time"].args[0] == "mcp-server-time"


def test_each_server_gets_the_default_policy_unless_one_is_named(
    tmp_path: Path,
) -> None:
    """--policy sets every server's policy, --server-policy one server's."""
    path = tmp_path / "proxy.yaml"
    disk = wrapped(
        proxy_config_path=path,
        default_policy="read-only-folder",
        server_policies={"time": "compute-only"},
    )
    path.write_bytes(disk[path].data)
    servers = load_config(path).mcp_servers
    assert {n: s.policy for n, s in servers.items()} == {
        "filesystem": "read-only-folder",
        "github": "read-only-folder",
        "time": "compute-only",
    }


def test_default_policy_is_strict(tmp_path: Path) -> None:
    """Without --policy every server runs under strict."""
    path = tmp_path / "proxy.yaml"
    path.write_bytes(wrapped(proxy_config_path=path)[path].data)
    assert {s.policy for s in load_config(path).mcp_servers.values()} == {"strict"}


def test_policy_for_a_server_not_in_the_file_is_refused() -> None:
    """A misspelt server name in --server-policy is an error listing the servers."""
    message = error_of(SAMPLE, server_policies={"tiem": "compute-only"})
    assert "--server-policy names tiem" in message
    assert "servers: filesystem, github, time" in message


def test_invalid_policy_name_is_refused() -> None:
    """A policy name that cannot be a file name in the library is refused."""
    message = error_of(SAMPLE, server_policies={"time": "../etc/passwd"})
    assert "'../etc/passwd' (policy of server 'time') is not a valid policy name" in (
        message
    )


def test_backup_holds_the_original_bytes_and_keeps_its_mode() -> None:
    """The backup is byte for byte the original, with the original's permissions."""
    disk = wrapped()
    assert disk[backup_path(CLAUDE)] == Existing(SAMPLE.encode(), CLAUDE_MODE)
    assert disk[CLAUDE].mode == CLAUDE_MODE


def test_record_holds_what_unwrap_needs_to_check() -> None:
    """The record names the proxy config and holds the wrapped text."""
    disk = wrapped()
    record = WrapRecord.parse(disk[record_path(CLAUDE)].data, record_path(CLAUDE))
    assert record.proxy_config == PROXY
    assert record.wrapped.encode() == disk[CLAUDE].data


def test_new_proxy_config_is_private_to_its_owner() -> None:
    """It holds the servers' env values, often secrets, so it is mode 0600."""
    assert wrapped()[PROXY].mode == NEW_PROXY_CONFIG_MODE == 0o600


def test_crlf_line_endings_and_tab_indentation_are_kept() -> None:
    """A file written on Windows keeps CRLF; the new entry follows its indent."""
    original = SAMPLE.replace("  ", "\t").replace("\n", "\r\n")
    text = wrapped(original)[CLAUDE].data.decode()
    assert "\n" not in text.replace("\r\n", "")
    assert f'\r\n\t"mcpServers": {{\r\n\t\t"{PROXY_SERVER_NAME}": {{\r\n' in text


def test_one_line_claude_file_stays_on_one_line() -> None:
    """A minified file is not reformatted."""
    original = json.dumps(json.loads(SAMPLE)) + "\n"
    text = wrapped(original)[CLAUDE].data.decode()
    assert text.count("\n") == 1
    assert text.startswith('{"globalShortcut": "Ctrl+Space", "mcpServers": {"mcp-')


def test_byte_order_mark_is_kept() -> None:
    """A file starting with a UTF-8 byte order mark still wraps and keeps it."""
    text = wrapped("\ufeff" + SAMPLE)[CLAUDE].data.decode()
    assert text.startswith("\ufeff{")
    assert PROXY_SERVER_NAME in json.loads(text.removeprefix("\ufeff"))["mcpServers"]


def test_last_of_repeated_mcp_servers_keys_is_the_one_replaced() -> None:
    """As in JSON parsers, the last mcpServers key is the one that counts."""
    original = (
        '{"mcpServers": {"old": {"command": "x"}}, "mcpServers": {"new":'
        ' {"command": "y"}}}'
    )
    disk = wrapped(original)
    assert disk[CLAUDE].data.decode().startswith('{"mcpServers": {"old":')
    assert b"new" in disk[PROXY].data
    assert b"old" not in disk[PROXY].data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{\n  "mcpServers": {\n    "a": {,\n', "line 3, column 11: invalid JSON"),
        ("[]", "expected a JSON object at the top level"),
        ('{"globalShortcut": ""}', "no 'mcpServers' key"),
        ('{"mcpServers": []}', "mcpServers: expected an object"),
        ('{"mcpServers": {}}', "mcpServers is empty"),
        ('{"mcpServers": {"my server": {"command": "x"}}}', "server name 'my server'"),
        ('{"mcpServers": {"a": "npx"}}', "mcpServers.a: expected an object"),
        (
            '{"mcpServers": {"a": {"command": "x", "type": "stdio"}}}',
            "a.type: unknown key",
        ),
        (
            '{"mcpServers": {"a": {"args": []}}}',
            "a.command: expected a non-empty string",
        ),
        ('{"mcpServers": {"a": {"command": ""}}}', "a.command: expected a non-empty"),
        (
            '{"mcpServers": {"a": {"command": "x", "args": "-y"}}}',
            "a.args: expected a list",
        ),
        (
            '{"mcpServers": {"a": {"command": "x", "args": [1]}}}',
            "a.args[0]: expected a string",
        ),
        (
            '{"mcpServers": {"a": {"command": "x", "env": []}}}',
            "a.env: expected an object",
        ),
        (
            '{"mcpServers": {"a": {"command": "x", "env": {"PORT": 80}}}}',
            "env.PORT: expected a string, found 80",
        ),
        (
            '{"mcpServers": {"a": {"command": "x", "cwd": null}}}',
            "a.cwd: expected a string",
        ),
    ],
)
def test_bad_claude_file_is_refused_naming_the_file_and_the_problem(
    text: str, expected: str
) -> None:
    """Every error starts with the file's path and says what is wrong where."""
    message = error_of(text)
    assert message.startswith(f"{CLAUDE}: ")
    assert expected in message


def test_server_name_too_long_for_the_proxy_is_refused_saying_why() -> None:
    """Names become tool-name prefixes: at most 48 characters."""
    name = "s" * 49
    message = error_of(json.dumps({"mcpServers": {name: {"command": "x"}}}))
    assert f"server name {name!r}" in message
    assert "1-48 letters" in message


def test_file_that_is_not_utf8_is_refused() -> None:
    """Bytes that are not UTF-8 are named as such."""
    assert "not valid UTF-8" in error_of(b'{"mcpServers": {"\xff": {}}}')


def test_missing_claude_file_is_refused_naming_it() -> None:
    """Without the file there is nothing to wrap; the message says where it looked."""
    with pytest.raises(ConfigError, match="no such file") as caught:
        plan_wrap(request(), files_on({}))

    assert str(caught.value).startswith(str(CLAUDE))


def test_second_wrap_plans_no_change() -> None:
    """Wrapping a wrapped file changes nothing and finds the proxy config."""
    disk = wrapped()
    plan = plan_wrap(request(proxy_config_path=Path("/elsewhere.yaml")), files_on(disk))
    assert plan.already_wrapped
    assert plan.changes == ()
    assert plan.proxy_config == PROXY
    assert plan.beside_proxy == ()


def test_servers_added_beside_the_proxy_later_are_reported() -> None:
    """A server the user added after wrapping runs unsandboxed: it is named."""
    disk = wrapped()
    data = json.loads(disk[CLAUDE].data)
    data["mcpServers"]["notes"] = {"command": "notes-server"}
    disk[CLAUDE] = Existing(json.dumps(data).encode(), CLAUDE_MODE)
    assert plan_wrap(request(), files_on(disk)).beside_proxy == ("notes",)


def test_proxy_entry_without_a_record_is_refused() -> None:
    """A server already named mcp-sandbox-proxy, with no record, is not wrapped."""
    text = json.dumps({"mcpServers": {PROXY_SERVER_NAME: {"command": "x"}}})
    message = error_of(text)
    assert f"mcpServers.{PROXY_SERVER_NAME} is already there" in message
    assert str(record_path(CLAUDE)) in message


def test_stale_backup_that_differs_is_kept_unless_forced() -> None:
    """A backup left by an earlier wrap may hold the only copy of something."""
    disk = disk_with(SAMPLE)
    disk[backup_path(CLAUDE)] = Existing(b"{}", CLAUDE_MODE)
    with pytest.raises(ConfigError, match="already exists and differs from this file"):
        plan_wrap(request(), files_on(disk))

    apply_to(disk, plan_wrap(request(force=True), files_on(disk)).changes)
    assert disk[backup_path(CLAUDE)].data == SAMPLE.encode()


def test_different_proxy_config_is_kept_unless_forced() -> None:
    """An existing proxy config that differs is not overwritten silently."""
    disk = disk_with(SAMPLE)
    disk[PROXY] = Existing(b"mcpServers: {}\n", 0o644)
    with pytest.raises(ConfigError, match="--proxy-config, or --force overwrites"):
        plan_wrap(request(), files_on(disk))

    apply_to(disk, plan_wrap(request(force=True), files_on(disk)).changes)
    assert disk[PROXY].mode == 0o644
    assert b"filesystem" in disk[PROXY].data


def test_wrap_finishes_after_a_crash_left_backup_and_proxy_config() -> None:
    """Backup and proxy config equal to what wrap writes are no conflict."""
    disk = wrapped()
    disk[CLAUDE] = disk[backup_path(CLAUDE)]
    del disk[record_path(CLAUDE)]
    apply_to(disk, plan_wrap(request(), files_on(disk)).changes)
    assert disk == wrapped()


def test_unwrap_restores_the_original_and_removes_the_wraps_files() -> None:
    """After unwrap only the original Claude file is left, byte for byte."""
    disk = wrapped()
    unwrap(disk)
    assert disk == disk_with(SAMPLE)


def test_unwrap_keeps_a_proxy_config_edited_since_wrap() -> None:
    """A proxy config the user changed is left in place and named."""
    disk = wrapped()
    disk[PROXY] = Existing(disk[PROXY].data + b"# tuned\n", 0o600)
    record = load_record(CLAUDE, disk[record_path(CLAUDE)], force=False)
    plan = plan_unwrap(CLAUDE, record, files_on(disk), force=False)
    assert plan.kept == PROXY
    apply_to(disk, plan.changes)
    assert set(disk) == {CLAUDE, PROXY}


def test_unwrap_without_a_backup_is_refused() -> None:
    """A file that was never wrapped cannot be unwrapped."""
    disk = disk_with(SAMPLE)
    with pytest.raises(ConfigError, match=r"no backup at .*nothing was changed"):
        unwrap(disk)


def test_unwrap_after_the_claude_file_changed_shows_the_change() -> None:
    """Edits made after wrap would be lost: refused with a diff; --force restores."""
    disk = wrapped()
    edited = disk[CLAUDE].data.replace(b"Ctrl+Space", b"Alt+Space")
    disk[CLAUDE] = Existing(edited, CLAUDE_MODE)
    with pytest.raises(ConfigError, match="changed since wrap") as caught:
        unwrap(disk)

    assert '-  "globalShortcut": "Ctrl+Space",' in str(caught.value)
    assert '+  "globalShortcut": "Alt+Space",' in str(caught.value)
    unwrap(disk, force=True)
    assert disk == disk_with(SAMPLE)


def test_unwrap_after_the_backup_changed_is_refused() -> None:
    """A backup that no longer matches the original's digest is not restored."""
    disk = wrapped()
    disk[backup_path(CLAUDE)] = Existing(b"{}", CLAUDE_MODE)
    with pytest.raises(ConfigError, match="changed since wrap; --force"):
        unwrap(disk)


def test_unwrap_without_a_record_needs_force() -> None:
    """Without the record edits cannot be ruled out; --force restores anyway."""
    disk = wrapped()
    del disk[record_path(CLAUDE)]
    with pytest.raises(ConfigError, match="no record of the wrap"):
        unwrap(disk)

    unwrap(disk, force=True)
    assert disk == {CLAUDE: Existing(SAMPLE.encode(), CLAUDE_MODE), PROXY: disk[PROXY]}


def test_damaged_record_is_refused_unless_forced() -> None:
    """A record that does not parse is named; --force goes on without it."""
    damaged = Existing(b"{not json", CLAUDE_MODE)
    with pytest.raises(ConfigError, match="damaged; --force restores"):
        load_record(CLAUDE, damaged, force=False)

    assert load_record(CLAUDE, damaged, force=True) is None


_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True).filter(
    lambda name: name != PROXY_SERVER_NAME
)
_TEXT = st.text(alphabet=string.printable + "é\\😀", max_size=20)
_REQUIRED_KEYS: dict[str, st.SearchStrategy[Any]] = {"command": _TEXT.filter(bool)}
_OPTIONAL_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "args": st.lists(_TEXT, max_size=4),
    "env": st.dictionaries(_TEXT, _TEXT, max_size=3),
    "cwd": _TEXT,
}
_SERVERS = st.dictionaries(
    _NAMES,
    st.fixed_dictionaries(_REQUIRED_KEYS, optional=_OPTIONAL_KEYS),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    servers=_SERVERS,
    others=st.dictionaries(_TEXT, st.integers() | _TEXT, max_size=3),
    indent=st.sampled_from([None, 2, 4, "\t"]),
)
def test_wrap_then_unwrap_gives_back_the_original_bytes(
    servers: dict[str, Any], others: dict[str, Any], indent: int | str | None
) -> None:
    """Any valid file round-trips; its other keys survive wrapping unchanged."""
    document = {**{k: v for k, v in others.items() if k != "mcpServers"}}
    document["mcpServers"] = servers
    original = json.dumps(document, indent=indent, ensure_ascii=False)
    disk = wrapped(original)
    data = json.loads(disk[CLAUDE].data)
    assert {k: v for k, v in data.items() if k != "mcpServers"} == {
        k: v for k, v in document.items() if k != "mcpServers"
    }
    assert plan_wrap(request(), files_on(disk)).already_wrapped
    unwrap(disk)
    assert disk == disk_with(original)
