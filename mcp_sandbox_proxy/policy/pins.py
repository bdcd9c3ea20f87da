"""Pins of tool definitions, against a tool changed after it was trusted.

A server may change a tool after people came to trust it (a "rug pull"). The first
time a server's tools are seen, each definition (name, title, description, input
and output schema, annotations) is recorded in the pin file. A later definition
that differs is held back: the tool is hidden from the client and the new
definition kept as pending until a person looks at it (``pins diff``) and accepts
it (``pins accept``). A tool with a new name but a pinned definition is a rename;
a tool never seen before is pinned on first sight.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import structlog

from mcp_sandbox_proxy.config import ProxyConfig
from mcp_sandbox_proxy.exceptions import ConfigError

log = structlog.get_logger(__name__)

PIN_FILE_VERSION = 1
PINNED_FIELDS = (
    "name",
    "title",
    "description",
    "inputSchema",
    "outputSchema",
    "annotations",
)
PIN_FILE_NAME = "pins.json"


def default_pin_path(config: ProxyConfig, environ: Mapping[str, str]) -> Path:
    """``proxy.pinFile`` (relative to the configuration file), else the per-user
    state folder: ``$XDG_STATE_HOME/mcp-sandbox-proxy/pins.json``."""
    if config.proxy.pin_file is not None:
        base = config.source.parent if config.source else Path.cwd()
        return base / config.proxy.pin_file.expanduser()

    state = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mcp-sandbox-proxy" / PIN_FILE_NAME


def definition_of(tool: Mapping[str, Any]) -> dict[str, Any]:
    """The pinned part of a tool as ``tools/list`` gives it."""
    return {k: tool[k] for k in PINNED_FIELDS if tool.get(k) is not None}


def definition_digest(definition: Mapping[str, Any], *, with_name: bool = True) -> str:
    """sha256 of the canonical JSON of a definition, with or without its name."""
    body = {k: v for k, v in definition.items() if with_name or k != "name"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class PinReport:
    """What ``check`` found: the tools to show, and those held back and why."""

    visible: list[dict[str, Any]] = field(default_factory=lambda: [])
    hidden: list[tuple[str, str]] = field(default_factory=lambda: [])
    renamed: list[tuple[str, str]] = field(default_factory=lambda: [])
    new: list[str] = field(default_factory=lambda: [])


@dataclass(frozen=True)
class PendingChange:
    """A tool whose offered definition differs from the pinned one."""

    server: str
    tool: str
    pinned: dict[str, Any]
    offered: dict[str, Any]

    def changed_fields(self) -> list[str]:
        """The names of the fields that differ, in pinned order."""
        return [k for k in PINNED_FIELDS if self.pinned.get(k) != self.offered.get(k)]

    def diff(self) -> str:
        """A unified diff of the two definitions as indented JSON."""
        name = f"{self.server}/{self.tool}"
        return "".join(
            difflib.unified_diff(
                _pretty(self.pinned),
                _pretty(self.offered),
                fromfile=f"{name} (pinned)",
                tofile=f"{name} (offered now)",
            )
        )


def _pretty(definition: dict[str, Any]) -> list[str]:
    text = json.dumps(definition, indent=2, sort_keys=True, ensure_ascii=False)
    return [line + "\n" for line in text.splitlines()]


def _is_pin_data(data: Any) -> bool:
    if not _is_mapping_of(data, ("servers",)):
        return False

    fields = cast("dict[str, Any]", data)
    servers = cast("dict[str, Any]", fields["servers"])
    if fields.get("version") != PIN_FILE_VERSION:
        return False

    entries = servers.values()
    return all(_is_mapping_of(e, ("tools", "pending")) for e in entries)


def _is_mapping_of(value: Any, keys: tuple[str, ...]) -> bool:
    if not isinstance(value, dict):
        return False

    fields = cast("dict[str, Any]", value)
    return all(isinstance(fields.get(key), dict) for key in keys)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        status = path.stat()
    except OSError:
        return None

    return status.st_mtime_ns, status.st_ino


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ToolPins:
    """The pin file: pinned and pending definitions per server."""

    def __init__(self, path: Path, data: dict[str, Any] | None = None) -> None:
        self.path = path
        self._servers: dict[str, Any] = data["servers"] if data else {}
        self._seen_stamp = _stamp(path)

    def refresh(self) -> None:
        """Read the file again if another process (``pins accept``) changed it
        since this one last read or wrote it."""
        stamp = _stamp(self.path)
        if stamp != self._seen_stamp:
            self._servers = ToolPins.load(self.path)._servers
            self._seen_stamp = stamp

    @classmethod
    def load(cls, path: Path) -> ToolPins:
        """Read the pin file; a missing file is an empty one."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(path)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"cannot read the pin file: {exc}", source=str(path)
            ) from exc

        if not _is_pin_data(data):
            raise ConfigError(
                f"expected a pin file of version {PIN_FILE_VERSION} with a 'servers'"
                " map of {'tools': {...}, 'pending': {...}} entries",
                source=str(path),
            )

        return cls(path, cast("dict[str, Any]", data))

    @classmethod
    def for_config(
        cls, config: ProxyConfig, environ: Mapping[str, str] | None = None
    ) -> ToolPins:
        """The pin file the configuration names, or the per-user default."""
        environ = os.environ if environ is None else environ
        return cls.load(default_pin_path(config, environ))

    def save(self) -> None:
        """Write the file atomically, readable by its owner only."""
        data = {"version": PIN_FILE_VERSION, "servers": self._servers}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=2, sort_keys=True, ensure_ascii=False)
                file.flush()
                os.fsync(file.fileno())

            temporary.replace(self.path)
            self._seen_stamp = _stamp(self.path)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the pin file: {exc}", source=str(self.path)
            ) from exc

    def servers(self) -> list[str]:
        """Servers with pinned tools, sorted."""
        return sorted(self._servers)

    def tools(self, server: str) -> list[str]:
        """Names of the pinned tools of ``server``, sorted."""
        return sorted(self._entry(server)["tools"])

    def pending(self, server: str | None = None) -> list[PendingChange]:
        """Changed definitions awaiting review, of one server or of all."""
        servers = [server] if server is not None else self.servers()
        return [
            PendingChange(
                s,
                tool,
                self._entry(s)["tools"][tool]["definition"],
                offer["definition"],
            )
            for s in servers
            for tool, offer in sorted(self._entry(s)["pending"].items())
        ]

    def is_hidden(self, server: str, tool: str) -> bool:
        """Whether the tool is held back: its offered definition awaits review."""
        return tool in self._servers.get(server, {}).get("pending", {})

    def accept(self, server: str, tool: str | None = None) -> list[str]:
        """Pin the pending definitions of ``server`` (or of one tool); their names."""
        pending: dict[str, Any] = self._entry(server)["pending"]
        names = [tool] if tool is not None else sorted(pending)
        accepted = [name for name in names if name in pending]
        for name in accepted:
            self._pin(server, pending.pop(name)["definition"])
            log.info("tool_pin_accepted", server=server, tool=name)

        return accepted

    def check(self, server: str, tools: list[dict[str, Any]]) -> PinReport:
        """Sort ``tools`` (a ``tools/list`` result) into visible and hidden, pinning
        what is new. Call ``save`` afterwards to keep what changed."""
        entry = self._entry(server)
        pinned: dict[str, Any] = entry["tools"]
        first_sight = not pinned
        names = {tool.get("name") for tool in tools}
        gone = {
            definition_digest(pin["definition"], with_name=False): name
            for name, pin in pinned.items()
            if name not in names
        }
        report = PinReport()
        for tool in tools:
            self._check_one(server, tool, gone, report)

        if first_sight:
            log.info("tools_pinned", server=server, count=len(report.new))

        return report

    def _check_one(
        self, server: str, tool: dict[str, Any], gone: dict[str, str], report: PinReport
    ) -> None:
        definition = definition_of(tool)
        name = definition.get("name")
        if not isinstance(name, str):
            report.hidden.append((str(name), "the tool has no name"))
            return

        pin = self._entry(server)["tools"].get(name)
        if pin is None:
            self._first_sight(server, definition, gone, report)
            report.visible.append(tool)
        elif pin["digest"] == definition_digest(definition):
            self._entry(server)["pending"].pop(name, None)
            report.visible.append(tool)
        else:
            change = PendingChange(server, name, pin["definition"], definition)
            self._hold_back(change, report)

    def _first_sight(
        self,
        server: str,
        definition: dict[str, Any],
        gone: dict[str, str],
        report: PinReport,
    ) -> None:
        name = definition["name"]
        old = gone.pop(definition_digest(definition, with_name=False), None)
        if old is None:
            report.new.append(name)
        else:
            del self._entry(server)["tools"][old]
            report.renamed.append((old, name))
            log.warning("tool_renamed", server=server, tool=name, was=old)

        self._pin(server, definition)

    def _hold_back(self, change: PendingChange, report: PinReport) -> None:
        pending = {"definition": change.offered, "seenAt": _now()}
        self._entry(change.server)["pending"][change.tool] = pending
        report.hidden.append((change.tool, _hidden_reason(change)))
        log.warning(
            "tool_definition_changed",
            server=change.server,
            tool=change.tool,
            fields=change.changed_fields(),
        )

    def _pin(self, server: str, definition: dict[str, Any]) -> None:
        self._entry(server)["tools"][definition["name"]] = {
            "digest": definition_digest(definition),
            "definition": definition,
            "pinnedAt": _now(),
        }

    def _entry(self, server: str) -> dict[str, Any]:
        return self._servers.setdefault(server, {"tools": {}, "pending": {}})


def _hidden_reason(change: PendingChange) -> str:
    fields = ", ".join(change.changed_fields())
    return (
        f"its definition changed since it was pinned ({fields}); review it with"
        f" 'mcp-sandbox-proxy pins diff {change.server}' and accept it with"
        f" 'mcp-sandbox-proxy pins accept {change.server} {change.tool}'"
    )
