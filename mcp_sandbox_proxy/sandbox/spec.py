"""The backend-neutral description of one sandboxed server instance.

A policy is resolved into a ``SandboxSpec`` before any backend sees it; backends
know nothing of MCP, configuration files or policies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

NOBODY_UID = 65534
NOBODY_GID = 65534
MIB = 1024 * 1024


@dataclass(frozen=True)
class Mount:
    """A host path made visible inside the sandbox."""

    host_path: Path
    sandbox_path: Path
    writable: bool = False


@dataclass(frozen=True)
class Limits:
    """Resource bounds; ``None`` means the backend's own default applies."""

    memory_bytes: int | None = 512 * MIB
    pids: int | None = 128
    cpu_cores: float | None = 1.0
    cpu_seconds: int | None = None
    open_files: int | None = 256
    file_size_bytes: int | None = 64 * MIB
    tmpfs_bytes: int = 64 * MIB


@dataclass(frozen=True)
class NetworkSpec:
    """How the sandbox reaches the network.

    ``none``: loopback inside the sandbox only. ``egress``: only through the
    proxy's egress filter, reached over the Unix socket ``egress_socket``.
    ``host``: the host's network, an opt-out for the ``process`` backend only.
    """

    mode: Literal["none", "egress", "host"] = "none"
    egress_socket: Path | None = None


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a backend needs to start one sandboxed server instance.

    ``env`` is the complete environment of the server: backends add nothing of
    the host's. ``runtime_paths`` are host paths the command needs to run (its
    interpreter, libraries, installed package), bound read-only by backends that
    build their own filesystem.
    """

    name: str
    command: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=lambda: {})
    cwd: Path | None = None
    mounts: tuple[Mount, ...] = ()
    runtime_paths: tuple[Path, ...] = ()
    network: NetworkSpec = NetworkSpec()
    limits: Limits = Limits()
    uid: int = NOBODY_UID
    gid: int = NOBODY_GID
    image: str | None = None
    runtime: str | None = None
    labels: Mapping[str, str] = field(default_factory=lambda: {})
