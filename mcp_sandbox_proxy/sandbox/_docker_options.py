"""The Docker engine's container configuration for one sandbox spec, without I/O.

``container_config`` is the whole confinement of the docker backend, read top to
bottom as a checklist. Its result is the body of the engine's create call, in the
engine's own field names: the same names ``docker inspect`` shows, so that a test
can hold the created container against this file line by line.
"""

from __future__ import annotations

import errno
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mcp_sandbox_proxy.exceptions import SandboxStartFailed
from mcp_sandbox_proxy.sandbox.egress_bridge import (
    BRIDGE_PORT,
    EGRESS_SOCKET_ENV,
    SANDBOX_EGRESS_SOCKET,
    egress_launch,
    proxy_env,
)
from mcp_sandbox_proxy.sandbox.spec import MIB, Limits, Mount, SandboxSpec

# Every label the proxy sets starts with this; it finds its containers by them.
LABEL_PREFIX = "io.mcp-sandbox-proxy."

# What a ``None`` limit means under Docker: the spec's own defaults, never
# "unlimited". A server that needs more asks for it by name in its policy.
DEFAULT_MEMORY_BYTES = 512 * MIB
DEFAULT_PIDS = 128
DEFAULT_CPU_CORES = 1.0
DEFAULT_OPEN_FILES = 256
NANOS_PER_CPU = 1_000_000_000

TMP_PATH = "/tmp"
TMPFS_OPTIONS = "rw,noexec,nosuid,nodev"

# Docker before 23.0 drops a profile's "defaultErrnoRet", so the calls a profile
# does not name fail with EPERM there rather than ENOSYS. glibc starts threads with
# clone3 and falls back to clone only on ENOSYS, so these calls keep their ENOSYS
# through a rule of their own.
ENOSYS_FALLBACK_SYSCALLS = ("clone3",)

# Docker container names: a letter or digit, then letters, digits, "_.-".
_NAME_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]+")


def container_config(
    spec: SandboxSpec, *, labels: Mapping[str, str], seccomp_profile: Mapping[str, Any]
) -> dict[str, Any]:
    """The create-call body that runs ``spec`` confined; raises on a bad spec."""
    _check_spec(spec)
    limits = spec.limits
    memory = limits.memory_bytes or DEFAULT_MEMORY_BYTES
    host_config: dict[str, Any] = {
        # Network: none at all, so not even the host's loopback is reachable.
        "NetworkMode": "none",
        # Files: the image read-only, a small scratch /tmp that cannot hold
        # programs, the folders the spec grants and nothing else of the host.
        "ReadonlyRootfs": True,
        "Tmpfs": {TMP_PATH: f"{TMPFS_OPTIONS},size={limits.tmpfs_bytes}"},
        "Mounts": [_bind(mount) for mount in _mounts_of(spec)],
        "IpcMode": "private",
        "ShmSize": limits.tmpfs_bytes,
        # Privileges: no capability, no gain through setuid or file capabilities,
        # and only the system calls of the shared allow-list.
        "Privileged": False,
        "CapDrop": ["ALL"],
        "SecurityOpt": [
            "no-new-privileges:true",
            "seccomp=" + _profile_json(seccomp_profile),
        ],
        # Resources: memory with no swap beyond it, CPU, processes, open files.
        "Memory": memory,
        "MemorySwap": memory,
        "NanoCpus": round((limits.cpu_cores or DEFAULT_CPU_CORES) * NANOS_PER_CPU),
        "PidsLimit": limits.pids or DEFAULT_PIDS,
        "Ulimits": _ulimits(limits),
        # Processes: an init as PID 1 that reaps zombies and forwards signals, in
        # a cgroup namespace of its own.
        "Init": True,
        "CgroupnsMode": "private",
        # Lifetime and output: never restarted by the engine, nothing logged by
        # it (the proxy reads the attach stream), removed by the proxy.
        "RestartPolicy": {"Name": "no"},
        "LogConfig": {"Type": "none", "Config": {}},
        "AutoRemove": False,
    }
    if spec.runtime:
        # The OCI runtime, e.g. "runsc" (gVisor) or "crun", as the engine names it.
        host_config["Runtime"] = spec.runtime

    return {
        "Image": spec.image,
        # The spec's command replaces whatever the image would run.
        "Entrypoint": _command_of(spec)[:1],
        "Cmd": _command_of(spec)[1:],
        "User": f"{spec.uid}:{spec.gid}",
        # The environment is exactly the spec's; nothing of the host's.
        "Env": [f"{key}={value}" for key, value in _environment_of(spec).items()],
        "WorkingDir": str(spec.cwd) if spec.cwd else "",
        "Labels": dict(labels),
        # Stdio: stdin kept open for the proxy and closed when it lets go.
        "AttachStdin": True,
        "AttachStdout": True,
        "AttachStderr": True,
        "OpenStdin": True,
        "StdinOnce": True,
        "Tty": False,
        "NetworkDisabled": True,
        "HostConfig": host_config,
    }


def container_name(server: str, suffix: str) -> str:
    """A readable, unique container name for one instance of ``server``."""
    safe = _NAME_UNSAFE.sub("-", server).strip("-.") or "server"
    return f"mcp-sandbox-{safe[:40]}-{suffix}"


def _profile_json(profile: Mapping[str, Any]) -> str:
    rules: list[dict[str, Any]] = list(profile.get("syscalls", []))
    named = {name for rule in rules for name in rule.get("names", [])}
    unnamed = [name for name in ENOSYS_FALLBACK_SYSCALLS if name not in named]
    if unnamed and profile.get("defaultErrnoRet") == errno.ENOSYS:
        rules.append(
            {"names": unnamed, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}
        )

    return json.dumps({**profile, "syscalls": rules}, separators=(",", ":"))


def _mounts_of(spec: SandboxSpec) -> list[Mount]:
    mounts = list(spec.mounts)
    socket = spec.network.egress_socket
    if spec.network.mode == "egress" and socket is not None:
        # The egress filter is reached over its Unix socket, at a fixed path.
        mounts.append(Mount(socket, Path(SANDBOX_EGRESS_SOCKET), writable=False))

    return mounts


def _command_of(spec: SandboxSpec) -> list[str]:
    """The server's command; with egress, behind the in-sandbox bridge."""
    command = [spec.command, *spec.args]
    if spec.network.mode == "egress":
        return egress_launch(command, BRIDGE_PORT)

    return command


def _environment_of(spec: SandboxSpec) -> dict[str, str]:
    if spec.network.mode != "egress":
        return dict(spec.env)

    bridge = {**proxy_env(BRIDGE_PORT), EGRESS_SOCKET_ENV: SANDBOX_EGRESS_SOCKET}
    return {**spec.env, **bridge}


def _bind(mount: Mount) -> dict[str, Any]:
    return {
        "Type": "bind",
        "Source": str(mount.host_path),
        "Target": str(mount.sandbox_path),
        "ReadOnly": not mount.writable,
        "BindOptions": {"Propagation": "rprivate"},
    }


def _ulimits(limits: Limits) -> list[dict[str, Any]]:
    # "nproc" counts every process of the user on the host, not only this
    # container's: the pids limit above is the per-container bound, this one
    # stops a fork bomb even under a runtime that ignores cgroup pids limits.
    bounds: dict[str, int | None] = {
        "nofile": limits.open_files or DEFAULT_OPEN_FILES,
        "nproc": limits.pids or DEFAULT_PIDS,
        "fsize": limits.file_size_bytes,
        "cpu": limits.cpu_seconds,
        "core": 0,
    }
    return [
        {"Name": name, "Soft": bound, "Hard": bound}
        for name, bound in bounds.items()
        if bound is not None
    ]


def _check_spec(spec: SandboxSpec) -> None:
    where = f"server {spec.name!r}"
    if not spec.image:
        raise SandboxStartFailed(f"{where}: the docker backend needs an image")

    if spec.network.mode == "host":
        raise SandboxStartFailed(
            f"{where}: network mode 'host' is an opt-out of the process backend only"
        )

    if spec.network.mode == "egress" and spec.network.egress_socket is None:
        raise SandboxStartFailed(f"{where}: network mode 'egress' needs its socket")

    for mount in _mounts_of(spec):
        for path in (mount.host_path, mount.sandbox_path):
            if not path.is_absolute():
                raise SandboxStartFailed(
                    f"{where}: mount path {str(path)!r} is relative"
                )

    for key in spec.env:
        if not key or "=" in key or "\0" in key:
            raise SandboxStartFailed(f"{where}: invalid environment name {key!r}")
