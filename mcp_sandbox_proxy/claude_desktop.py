"""Claude Desktop's configuration file: where it lives, what its servers are,
and how one value in it is replaced with every other byte kept.

``wrap`` reads the servers out of this file and leaves it one entry that starts
the proxy; the file is JSON that people edit by hand, so it is spliced rather
than rewritten.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from mcp_sandbox_proxy.config import SERVER_NAME_PATTERN
from mcp_sandbox_proxy.exceptions import ConfigError

CLAUDE_FILE_NAME = "claude_desktop_config.json"
# The name of the one entry that ``wrap`` leaves in the file.
PROXY_SERVER_NAME = "mcp-sandbox-proxy"
SERVER_KEYS = ("command", "args", "env", "cwd")


def user_config_dir(platform: str, environ: Mapping[str, str], home: Path) -> Path:
    """The per-user configuration folder of ``platform`` (``sys.platform``)."""
    if platform == "darwin":
        return home / "Library" / "Application Support"

    if platform == "win32":
        appdata = environ.get("APPDATA")
        return Path(appdata) if appdata else home / "AppData" / "Roaming"

    xdg = environ.get("XDG_CONFIG_HOME", "")
    return Path(xdg) if Path(xdg).is_absolute() else home / ".config"


def default_claude_path(platform: str, environ: Mapping[str, str], home: Path) -> Path:
    """Where Claude Desktop keeps its configuration on ``platform``."""
    return user_config_dir(platform, environ, home) / "Claude" / CLAUDE_FILE_NAME


def decode(raw: bytes, source: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError("the file is not valid UTF-8", source=str(source)) from exc


def parse_claude(text: str, source: Path) -> dict[str, Any]:
    """The Claude Desktop document, with a ``mcpServers`` object checked present."""
    body = text.removeprefix("\ufeff")
    try:
        data = json.loads(body)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}",
            source=str(source),
        ) from exc

    if not isinstance(data, dict):
        raise ConfigError("expected a JSON object at the top level", source=str(source))

    if "mcpServers" not in data:
        raise ConfigError("no 'mcpServers' key: no servers to wrap", source=str(source))

    if not isinstance(data["mcpServers"], dict):
        raise ConfigError("mcpServers: expected an object", source=str(source))

    return cast(dict[str, Any], data)


def server_entries(data: Mapping[str, Any], source: Path) -> dict[str, dict[str, Any]]:
    """The servers of a Claude document, each checked to fit the proxy config."""
    servers = cast(dict[str, Any], data["mcpServers"])
    if not servers:
        raise ConfigError("mcpServers is empty: no servers to wrap", source=str(source))

    return {
        name: _checked_entry(name, entry, source) for name, entry in servers.items()
    }


def _checked_entry(name: str, entry: Any, source: Path) -> dict[str, Any]:
    where = f"mcpServers.{name}"
    if not SERVER_NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"mcpServers: the proxy cannot use the server name {name!r}: it becomes"
            " the prefix of the server's tool names, so it must be 1-48 letters,"
            " digits, '_', '-' or '.', starting with a letter or digit; rename the"
            " server in this file first",
            source=str(source),
        )

    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object", source=str(source))

    entry = cast(dict[str, Any], entry)
    for key in entry:
        if key not in SERVER_KEYS:
            known = ", ".join(SERVER_KEYS)
            raise ConfigError(
                f"{where}.{key}: unknown key (known: {known})", source=str(source)
            )

    _expect_strings(entry, where, source)
    return entry


def _expect_strings(entry: Mapping[str, Any], where: str, source: Path) -> None:
    values: dict[str, Any] = {"command": entry.get("command")}
    if "cwd" in entry:
        values["cwd"] = entry["cwd"]

    args = entry.get("args", [])
    if not isinstance(args, list):
        raise ConfigError(f"{where}.args: expected a list", source=str(source))

    values.update({f"args[{i}]": arg for i, arg in enumerate(cast(list[Any], args))})
    env = entry.get("env", {})
    if not isinstance(env, dict):
        raise ConfigError(f"{where}.env: expected an object", source=str(source))

    values.update({f"env.{k}": v for k, v in cast(dict[str, Any], env).items()})
    for key, value in values.items():
        if not isinstance(value, str) or (key == "command" and not value):
            expected = "a non-empty string" if key == "command" else "a string"
            raise ConfigError(
                f"{where}.{key}: expected {expected}, found {value!r}",
                source=str(source),
            )


def proxy_entry(python: str, proxy_config: Path) -> dict[str, Any]:
    """The one server entry Claude Desktop is left with: it starts the proxy."""
    args = ["-m", "mcp_sandbox_proxy", "run", "--config", str(proxy_config)]
    return {"command": python, "args": args}


def replace_servers(text: str, servers: Mapping[str, Any]) -> str:
    """``text`` with the value of ``mcpServers`` replaced, every other byte kept.

    The new value follows the old one's layout: on one line if it was, else
    indented like the key, with the file's own line ending.
    """
    start, end = _value_span(text, "mcpServers")
    newline = "\r\n" if "\r\n" in text else "\n"
    if "\n" not in text[start:end]:
        return text[:start] + json.dumps(servers, ensure_ascii=False) + text[end:]

    line_start = text.rfind("\n", 0, start) + 1
    base = re.match(r"[ \t]*", text[line_start:start])
    indent = base.group() if base else ""
    rendered = json.dumps(servers, indent=indent or "  ", ensure_ascii=False)
    return text[:start] + rendered.replace("\n", newline + indent) + text[end:]


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def _value_span(text: str, key: str) -> tuple[int, int]:
    """Where the last value of top-level ``key`` sits in valid JSON ``text``."""
    span = (0, 0)
    index = _skip(text, 0) + 1
    while text[_skip(text, index)] != "}":
        name, index = _DECODER.raw_decode(text, _skip(text, index))
        value_start = _skip(text, _skip(text, index) + 1)
        _, index = _DECODER.raw_decode(text, value_start)
        if name == key:
            span = (value_start, index)

        index = _skip(text, index)
        if text[index] == ",":
            index += 1

    return span


def _skip(text: str, index: int) -> int:
    if text.startswith("\ufeff", index):
        index += 1

    match = _WHITESPACE.match(text, index)
    return match.end() if match else index
