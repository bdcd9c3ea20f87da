"""Planning ``wrap`` and ``unwrap`` of a Claude Desktop configuration.

``wrap`` moves the servers of Claude Desktop's ``claude_desktop_config.json`` into
a proxy configuration, each under a named policy, and leaves Claude Desktop one
server entry that starts the proxy. Two files beside the Claude file make this
reversible and idempotent:

    claude_desktop_config.json                         rewritten: one proxy entry
    claude_desktop_config.json.mcp-sandbox-proxy.bak   the original bytes
    claude_desktop_config.json.mcp-sandbox-proxy.json  the record of the wrap

The record holds the text written to the Claude file and the digests of the
original and of the proxy configuration, so that ``unwrap`` can tell whether
anyone edited them since. Everything here is pure: the files as they are go in,
the changes to make come out; the command line reads and writes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcp_sandbox_proxy.claude_desktop import (
    PROXY_SERVER_NAME,
    decode,
    parse_claude,
    proxy_entry,
    replace_servers,
    server_entries,
    user_config_dir,
)
from mcp_sandbox_proxy.config import parse_config_text
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.install.launchers import LaunchError, parse_launch
from mcp_sandbox_proxy.policy.loader import POLICY_NAME

BACKUP_SUFFIX = ".mcp-sandbox-proxy.bak"
RECORD_SUFFIX = ".mcp-sandbox-proxy.json"
RECORD_VERSION = 1
DEFAULT_POLICY = "strict"

# The proxy configuration receives the servers' env values, often API keys, so
# a new one is readable by its owner only.
NEW_PROXY_CONFIG_MODE = 0o600

# Long commands stay on one line, so the YAML reads like the JSON it came from.
YAML_LINE_WIDTH = 1 << 16


@dataclass(frozen=True)
class Existing:
    """A file as it is on disk: its bytes and its permission bits."""

    data: bytes
    mode: int


@dataclass(frozen=True)
class Change:
    """One file to write (``after``) or to remove (``after`` is None)."""

    path: Path
    before: bytes | None
    after: bytes | None
    mode: int


@dataclass(frozen=True)
class WrapRecord:
    """What ``wrap`` wrote, kept beside the Claude file for ``unwrap``."""

    proxy_config: Path
    original_sha256: str
    proxy_config_sha256: str
    wrapped: str

    def to_bytes(self) -> bytes:
        data = {
            "version": RECORD_VERSION,
            "proxyConfig": str(self.proxy_config),
            "originalSha256": self.original_sha256,
            "proxyConfigSha256": self.proxy_config_sha256,
            "wrapped": self.wrapped,
        }
        return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()

    @classmethod
    def parse(cls, raw: bytes, source: Path) -> WrapRecord:
        try:
            data = json.loads(raw)
            return cls(
                Path(data["proxyConfig"]),
                str(data["originalSha256"]),
                str(data["proxyConfigSha256"]),
                str(data["wrapped"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                "not a record of a wrap: it is damaged", source=str(source)
            ) from exc


@dataclass(frozen=True)
class WrapRequest:
    """What the user asked of ``wrap``."""

    claude_path: Path
    proxy_config_path: Path
    python: str
    default_policy: str = DEFAULT_POLICY
    server_policies: Mapping[str, str] = field(default_factory=dict[str, str])
    force: bool = False


@dataclass(frozen=True)
class Files:
    """The files ``wrap`` and ``unwrap`` look at, as they are now (None: missing)."""

    claude: Existing | None
    backup: Existing | None
    record: Existing | None
    proxy_config: Existing | None


@dataclass(frozen=True)
class WrapPlan:
    """The changes ``wrap`` makes; none when the file is already wrapped."""

    changes: tuple[Change, ...]
    policies: dict[str, str]
    proxy_config: Path
    beside_proxy: tuple[str, ...] = ()
    # Servers started by npx, uvx or pipx run: installed before their first start.
    installed_first: tuple[str, ...] = ()

    @property
    def already_wrapped(self) -> bool:
        return not self.changes


@dataclass(frozen=True)
class UnwrapPlan:
    """The changes ``unwrap`` makes; ``kept`` is a proxy config edited since wrap."""

    changes: tuple[Change, ...]
    kept: Path | None


def plan_wrap(request: WrapRequest, files: Files) -> WrapPlan:
    """The changes that put every server of the Claude file behind the proxy."""
    path = request.claude_path
    claude = _required(files.claude, path)
    text = decode(claude.data, path)
    data = parse_claude(text, path)
    if PROXY_SERVER_NAME in data["mcpServers"]:
        return _already_wrapped(data, files.record, path)

    servers = server_entries(data, path)
    policies = choose_policies(servers, request)
    proxy_text = proxy_config_text(servers, policies, request).encode()
    _refuse_overwrite(request, files, proxy_text)
    entry = proxy_entry(request.python, request.proxy_config_path)
    wrapped = replace_servers(text, {PROXY_SERVER_NAME: entry}).encode()
    changes = _wrap_changes(request, claude, files, proxy_text, wrapped)
    runners = tuple(n for n, entry in servers.items() if _runner_launched(entry))
    return WrapPlan(changes, policies, request.proxy_config_path, (), runners)


def _runner_launched(entry: Mapping[str, Any]) -> bool:
    try:
        return parse_launch(str(entry["command"]), entry.get("args") or []) is not None
    except LaunchError:
        # The proxy names the option it cannot honour when it starts.
        return True


def _wrap_changes(
    request: WrapRequest,
    claude: Existing,
    files: Files,
    proxy_text: bytes,
    wrapped: bytes,
) -> tuple[Change, ...]:
    # The Claude file goes last: a crash before it leaves the original in use,
    # and a rerun finds the backup and proxy config it would write anyway.
    path = request.claude_path
    proxy_path = request.proxy_config_path
    record = WrapRecord(
        proxy_path, sha256(claude.data), sha256(proxy_text), wrapped.decode()
    )
    proxy = files.proxy_config
    proxy_mode = proxy.mode if proxy else NEW_PROXY_CONFIG_MODE
    return (
        Change(backup_path(path), _data(files.backup), claude.data, claude.mode),
        Change(proxy_path, _data(proxy), proxy_text, proxy_mode),
        Change(record_path(path), _data(files.record), record.to_bytes(), claude.mode),
        Change(path, claude.data, wrapped, claude.mode),
    )


def _required(existing: Existing | None, path: Path) -> Existing:
    if existing is None:
        raise ConfigError(
            "no such file; name Claude Desktop's configuration with --claude-config",
            source=str(path),
        )

    return existing


def _data(existing: Existing | None) -> bytes | None:
    return existing.data if existing else None


def _already_wrapped(
    data: Mapping[str, Any], record: Existing | None, path: Path
) -> WrapPlan:
    if record is None:
        raise ConfigError(
            f"mcpServers.{PROXY_SERVER_NAME} is already there, but there is no record"
            f" of a wrap ({record_path(path)}): rename that server to wrap this file",
            source=str(path),
        )

    proxy_config = WrapRecord.parse(record.data, record_path(path)).proxy_config
    others = tuple(n for n in data["mcpServers"] if n != PROXY_SERVER_NAME)
    return WrapPlan((), {}, proxy_config, others)


def _refuse_overwrite(request: WrapRequest, files: Files, proxy_text: bytes) -> None:
    if request.force:
        return

    path = request.claude_path
    if files.backup and files.claude and files.backup.data != files.claude.data:
        raise ConfigError(
            f"the backup {backup_path(path)} already exists and differs from this"
            " file (left by an earlier wrap?): move it away, or --force overwrites it",
            source=str(path),
        )

    if files.proxy_config and files.proxy_config.data != proxy_text:
        raise ConfigError(
            f"the proxy configuration {request.proxy_config_path} already exists and"
            " differs: choose another with --proxy-config, or --force overwrites it",
            source=str(path),
        )


def load_record(
    path: Path, record: Existing | None, *, force: bool
) -> WrapRecord | None:
    """The record of the wrap of Claude file ``path``; with ``force``, None if bad."""
    if record is None:
        return None

    try:
        return WrapRecord.parse(record.data, record_path(path))
    except ConfigError as exc:
        if force:
            return None

        raise ConfigError(f"{exc}; --force restores the backup anyway") from exc


def plan_unwrap(
    path: Path, record: WrapRecord | None, files: Files, *, force: bool
) -> UnwrapPlan:
    """The changes that restore the original Claude file and drop the wrap's files."""
    backup = files.backup
    if backup is None:
        raise ConfigError(
            f"no backup at {backup_path(path)}: this file was not wrapped, or its"
            " backup was removed; nothing was changed",
            source=str(path),
        )

    if not force:
        _refuse_lost_edits(path, record, files, backup)

    # The Claude file comes back first; the wrap's own files go after it.
    mode = files.claude.mode if files.claude else backup.mode
    changes = [Change(path, _data(files.claude), backup.data, mode)]
    kept = None
    proxy = files.proxy_config
    if record and proxy and sha256(proxy.data) == record.proxy_config_sha256:
        changes.append(Change(record.proxy_config, proxy.data, None, proxy.mode))
    elif record and proxy:
        kept = record.proxy_config

    changes.append(Change(backup_path(path), backup.data, None, backup.mode))
    if files.record:
        changes.append(
            Change(record_path(path), files.record.data, None, files.record.mode)
        )

    return UnwrapPlan(tuple(changes), kept)


def _refuse_lost_edits(
    path: Path, record: WrapRecord | None, files: Files, backup: Existing
) -> None:
    if record is None:
        raise ConfigError(
            f"no record of the wrap at {record_path(path)}, so edits made since"
            " cannot be ruled out; --force restores the backup anyway",
            source=str(path),
        )

    if sha256(backup.data) != record.original_sha256:
        raise ConfigError(
            f"the backup {backup_path(path)} changed since wrap;"
            " --force restores it anyway",
            source=str(path),
        )

    wrapped = record.wrapped.encode()
    if _data(files.claude) != wrapped:
        changes = unified_diff(path, wrapped, _data(files.claude))
        raise ConfigError(
            "changed since wrap; restoring the backup would drop these changes"
            f" (--force restores it anyway):\n{changes}",
            source=str(path),
        )


def unified_diff(path: Path, before: bytes | None, after: bytes | None) -> str:
    """A unified diff of one file's text; None stands for a missing file."""
    old = _lines(before)
    new = _lines(after)
    old_name = str(path) if before is not None else "/dev/null"
    new_name = str(path) if after is not None else "/dev/null"
    return "".join(difflib.unified_diff(old, new, old_name, new_name))


def _lines(data: bytes | None) -> list[str]:
    if data is None:
        return []

    lines = data.decode("utf-8", errors="replace").splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n\\ No newline at end of file\n"

    return lines


def default_proxy_config_path(
    platform: str, environ: Mapping[str, str], home: Path
) -> Path:
    """Where ``wrap`` writes the proxy configuration unless told otherwise."""
    return user_config_dir(platform, environ, home) / "mcp-sandbox-proxy" / "proxy.yaml"


def backup_path(claude_path: Path) -> Path:
    return claude_path.with_name(claude_path.name + BACKUP_SUFFIX)


def record_path(claude_path: Path) -> Path:
    return claude_path.with_name(claude_path.name + RECORD_SUFFIX)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def choose_policies(
    servers: Mapping[str, object], request: WrapRequest
) -> dict[str, str]:
    """The policy of each server: its own choice, else the default."""
    source = str(request.claude_path)
    unknown = sorted(set(request.server_policies) - set(servers))
    if unknown:
        raise ConfigError(
            f"--server-policy names {', '.join(unknown)}, not a server of this file"
            f" (servers: {', '.join(servers)})",
            source=source,
        )

    policies = {
        n: request.server_policies.get(n, request.default_policy) for n in servers
    }
    for name, policy in policies.items():
        if not POLICY_NAME.fullmatch(policy):
            raise ConfigError(
                f"{policy!r} (policy of server {name!r}) is not a valid policy name:"
                " use letters, digits, '_', '-' and '.'",
                source=source,
            )

    return policies


def proxy_config_text(
    servers: Mapping[str, Mapping[str, Any]],
    policies: Mapping[str, str],
    request: WrapRequest,
) -> str:
    """The proxy configuration: every server with its policy; loads as written."""
    body = {"mcpServers": {n: {**s, "policy": policies[n]} for n, s in servers.items()}}
    if request.proxy_config_path.suffix == ".json":
        text = json.dumps(body, indent=2, ensure_ascii=False) + "\n"
    else:
        # The stubs leave one parameter of safe_dump untyped; the call returns str.
        document: str = yaml.safe_dump(  # pyright: ignore[reportUnknownMemberType]
            body, sort_keys=False, allow_unicode=True, width=YAML_LINE_WIDTH
        )
        text = _yaml_header(request.claude_path) + document

    parse_config_text(text, request.proxy_config_path)
    return text


def _yaml_header(claude_path: Path) -> str:
    return (
        f"# Written by `mcp-sandbox-proxy wrap` from {claude_path}.\n"
        "# Each server runs sandboxed under the named policy; edit the policies here.\n"
        "# `mcp-sandbox-proxy unwrap` restores Claude Desktop's own configuration.\n"
    )
