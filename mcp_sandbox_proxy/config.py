"""Loading and validating the proxy's configuration file.

The file is YAML or JSON. Its ``mcpServers`` map has Claude Desktop's own shape
(``command``, ``args``, ``env``, ``cwd``), so an existing configuration can be
pasted in, extended with the proxy's keys (``policy``, ``backend``, ``tools``...).
Every error names the file, the key path and what was expected.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mcp_sandbox_proxy.exceptions import ConfigError

BackendName = Literal["namespace", "docker", "process"]

# Server names become tool-name prefixes, so they must fit MCP's tool-name
# alphabet; keeping them short leaves room for the tool's own name.
SERVER_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
DEFAULT_PREFIX_SEPARATOR = "__"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class ToolMapping(_Strict):
    """The policy of the tools whose names match one glob."""

    policy: str


class ServerConfig(_Strict):
    """One downstream tool server, in Claude Desktop's shape plus proxy keys."""

    command: str = Field(min_length=1)
    args: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)
    cwd: Path | None = None
    policy: str = "strict"
    backend: BackendName | None = None
    tools: dict[str, ToolMapping] = Field(default_factory=dict)
    prefix: str | None = None
    image: str | None = None
    disabled: bool = False
    vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("tools", mode="before")
    @classmethod
    def _policy_shorthand(cls, value: Any) -> Any:
        # ``tools: {"write_*": read-write-folder}`` is shorthand for
        # ``tools: {"write_*": {policy: read-write-folder}}``.
        if isinstance(value, dict):
            return {
                glob: {"policy": v} if isinstance(v, str) else v
                for glob, v in value.items()  # type: ignore[misc]
            }

        return value


class AuditConfig(_Strict):
    """Where and how audit records are written."""

    path: Path | None = None
    durability: Literal["fsync", "batch", "off"] = "fsync"
    hmac_key_file: Path | None = Field(default=None, alias="hmacKeyFile")
    fail_closed: bool = Field(default=True, alias="failClosed")
    rotate_bytes: int | None = Field(default=None, alias="rotateBytes", gt=0)
    rotate_seconds: int | None = Field(default=None, alias="rotateSeconds", gt=0)


class InstallConfig(_Strict):
    """How servers started by ``npx``, ``uvx`` or ``pipx run`` are installed.

    ``allowPrivate`` lets the install reach registry hosts that resolve to private
    addresses, as company mirrors do; only the registry's own names are allowed.
    """

    cache_dir: Path | None = Field(default=None, alias="cacheDir")
    timeout: float = Field(default=600.0, gt=0)
    extra_hosts: tuple[str, ...] = Field(default=(), alias="extraHosts")
    allow_private: bool = Field(default=True, alias="allowPrivate")


class ProxySettings(_Strict):
    """Settings of the proxy itself, under the ``proxy`` key.

    ``egressHosts`` maps names to addresses for the egress filters, consulted
    before DNS as a hosts file is: for names only a private network knows.
    ``pollMicroseconds`` is how long the proxy polls for the next message after
    activity before it sleeps (``fdio.RelaySelector``); 0 turns polling off.
    """

    policy_paths: tuple[Path, ...] = Field(default=(), alias="policyPaths")
    pin_file: Path | None = Field(default=None, alias="pinFile")
    audit: AuditConfig = AuditConfig()
    install: InstallConfig = InstallConfig()
    egress_hosts: dict[str, tuple[str, ...]] = Field(
        default_factory=dict, alias="egressHosts"
    )
    poll_microseconds: int = Field(
        default=200, ge=0, le=10_000, alias="pollMicroseconds"
    )
    log_format: Literal["console", "json"] = Field(default="console", alias="logFormat")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", alias="logLevel"
    )


class ProxyConfig(_Strict):
    """The whole configuration file."""

    mcp_servers: dict[str, ServerConfig] = Field(alias="mcpServers")
    proxy: ProxySettings = ProxySettings()
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("mcp_servers")
    @classmethod
    def _server_names(cls, servers: dict[str, ServerConfig]) -> dict[str, ServerConfig]:
        for name in servers:
            if not SERVER_NAME_PATTERN.fullmatch(name):
                raise ValueError(
                    f"server name {name!r} must be 1-48 letters, digits, '_', '-' or"
                    " '.', starting with a letter or digit"
                )

        return servers

    def enabled_servers(self) -> dict[str, ServerConfig]:
        """The servers to run, in a stable order (sorted by name)."""
        return {n: s for n, s in sorted(self.mcp_servers.items()) if not s.disabled}

    def prefix_of(self, server: str) -> str:
        """The prefix put before the names of ``server``'s tools and prompts."""
        configured = self.mcp_servers[server].prefix
        if configured is not None:
            return configured

        return server + DEFAULT_PREFIX_SEPARATOR


def parse_config_text(text: str, source: Path) -> ProxyConfig:
    """Parse and validate configuration text; ``source`` names it in errors."""
    data = _parse_document(text, source)
    if not isinstance(data, dict):
        raise ConfigError(
            "expected a mapping at the top level with a 'mcpServers' key",
            source=str(source),
        )

    try:
        config = ProxyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc), source=str(source)) from exc

    return config.model_copy(update={"source": source})


def load_config(path: Path) -> ProxyConfig:
    """Read, parse and validate the configuration file at ``path``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file: {exc.strerror}", source=str(path)
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("the file is not valid UTF-8", source=str(path)) from exc

    return parse_config_text(text, path)


def _parse_document(text: str, source: Path) -> Any:
    if source.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}",
                source=str(source),
            ) from exc

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(
            f"{where}invalid YAML: {problem}", source=str(source)
        ) from exc


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: the key path, then what was expected."""
    lines: list[str] = []
    for error in exc.errors():
        path = ".".join(str(part) for part in error["loc"]) or "(top level)"
        if error["type"] == "extra_forbidden":
            lines.append(f"{path}: unknown key")
        elif error["type"] == "missing":
            lines.append(f"{path}: required key is missing")
        else:
            lines.append(f"{path}: {error['msg']}")

    return "; ".join(lines)
