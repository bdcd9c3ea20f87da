"""Resource limits of one sandbox: a cgroup where the host offers one, rlimits if not.

Memory (with swap held to the same bound), processes and CPU quota go into a cgroup
of the sandbox's own, created under the proxy's cgroup, on cgroup v2 or on the v1
controllers a host mounts separately. Where no cgroup can be made, memory and
processes fall back to rlimits, which are weaker: ``RLIMIT_AS`` bounds address
space rather than memory in use (runtimes that reserve large address ranges, like
Node, may not start under it), and ``RLIMIT_NPROC`` counts every process of the
sandbox's host uid, other sandboxes' included. A CPU quota has no rlimit
equivalent, so asking for one where no cgroup can be made fails closed. CPU time,
open files and file size are rlimits everywhere.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import anyio
import structlog

from mcp_sandbox_proxy.exceptions import SandboxUnavailable
from mcp_sandbox_proxy.sandbox.spec import Limits

log = structlog.get_logger(__name__)

CONTROLLERS = ("memory", "pids", "cpu")
# Sandbox cgroups live in one folder of this name under the proxy's own cgroup.
GROUP_FOLDER = "mcp-sandbox-proxy"
# A killed sandbox leaves its cgroup within milliseconds; past this bound the
# folder is left behind (and logged) rather than holding up the proxy.
EMPTY_TIMEOUT_S = 2.0
EMPTY_POLL_S = 0.005
# The control files that bound swap, absent where swap accounting is off.
SWAP_FILES = frozenset({"memory.memsw.limit_in_bytes", "memory.swap.max"})
# The CFS period a CPU quota is expressed in: the kernel's default.
CPU_PERIOD_US = 100_000

FIX_HINT = (
    "run the proxy as root, or inside a cgroup delegated to its user (for example"
    " `systemd-run --user --scope -p Delegate=yes mcp-sandbox-proxy ...`)"
)


@dataclass(frozen=True)
class CgroupHost:
    """Where this process can make sandbox cgroups: one folder per controller."""

    version: Literal[1, 2]
    folders: Mapping[str, Path]

    def offers(self, controller: str) -> bool:
        return controller in self.folders


@dataclass
class SandboxCgroup:
    """The cgroup folders of one sandbox (one per v1 controller, one on v2)."""

    version: Literal[1, 2]
    dirs: dict[str, Path]
    peak_memory_bytes: int | None = None
    oom_kills: int | None = None

    def attach_self(self) -> None:
        """Move the calling process into the cgroup; runs in the forked child.

        On cgroup v1 the child writes "0" to ``tasks``: moving only the calling
        thread (the whole child, which has one thread) spares the kernel's global
        lock on thread groups, whose taking costs an RCU grace period (about 10 ms).
        """
        control = "tasks" if self.version == 1 else "cgroup.procs"
        for folder in set(self.dirs.values()):
            fd = os.open(folder / control, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    async def remove_when_empty(self) -> None:
        """Record memory use, end stragglers, wait until empty, delete the folders.

        bubblewrap's monitor can exit while the sandbox's init is still being torn
        down, so the cgroup empties shortly after the monitor is reaped.
        """
        self._record_memory()
        self._kill_stragglers()
        with anyio.move_on_after(EMPTY_TIMEOUT_S):
            # cgroup v1 has no event for "empty" to wait on: poll, briefly.
            while self._populated():  # noqa: ASYNC110
                await anyio.sleep(EMPTY_POLL_S)

        self._delete()

    def remove(self) -> None:
        """Delete the folders at once: for a cgroup no process ever entered."""
        self._kill_stragglers()
        self._delete()

    def _kill_stragglers(self) -> None:
        for folder in set(self.dirs.values()):
            for pid in _read_ints(folder / "cgroup.procs"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def _populated(self) -> bool:
        return any(_read_ints(d / "cgroup.procs") for d in set(self.dirs.values()))

    def _delete(self) -> None:
        for folder in set(self.dirs.values()):
            try:
                folder.rmdir()
            except OSError as exc:
                log.warning("cgroup_not_removed", path=str(folder), error=exc.strerror)

    def _record_memory(self) -> None:
        """Keep the peak memory use and OOM kill count before the folder goes."""
        folder = self.dirs.get("memory")
        if folder is None:
            return

        peak_file = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        peak = _read_ints(folder / peak_file)
        events = "memory.oom_control" if self.version == 1 else "memory.events"
        self.peak_memory_bytes = peak[0] if peak else None
        self.oom_kills = _read_key(folder / events, "oom_kill")


@dataclass(frozen=True)
class LimitPlan:
    """How each limit of one sandbox is enforced, and what to do in its child."""

    cgroup: SandboxCgroup | None
    rlimits: tuple[tuple[int, int], ...]
    mechanisms: Mapping[str, str] = field(default_factory=lambda: {})

    def apply_cgroup(self) -> None:
        """Enter the sandbox's cgroup; runs in the forked child, before any drop."""
        if self.cgroup is not None:
            self.cgroup.attach_self()

    def apply_rlimits(self) -> None:
        """Set the rlimits; runs in the forked child, as the sandbox's host uid."""
        for which, value in self.rlimits:
            resource.setrlimit(which, (value, value))


def plan_limits(limits: Limits, sandbox_id: str, host: CgroupHost | None) -> LimitPlan:
    """How to enforce ``limits``; ``SandboxUnavailable`` if one cannot be."""
    wanted = {
        "memory": limits.memory_bytes,
        "pids": limits.pids,
        "cpu": limits.cpu_cores,
    }
    in_cgroup = [c for c, v in wanted.items() if v is not None and _offers(host, c)]
    if limits.cpu_cores is not None and "cpu" not in in_cgroup:
        raise SandboxUnavailable(
            f"a CPU quota of {limits.cpu_cores} cores was asked for, but no cpu cgroup"
            f" controller is available to this process: {FIX_HINT}; or remove the"
            " CPU quota from the policy"
        )

    rlimits, mechanisms = _rlimits(limits, in_cgroup)
    cgroup = None
    if in_cgroup and host is not None:
        cgroup = _create_cgroup(host, sandbox_id, limits, in_cgroup)
        version = f"cgroup v{host.version}"
        mechanisms |= {c: version for c in in_cgroup}

    return LimitPlan(cgroup, tuple(rlimits), mechanisms)


def _offers(host: CgroupHost | None, controller: str) -> bool:
    return host is not None and host.offers(controller)


def _rlimits(
    limits: Limits, in_cgroup: list[str]
) -> tuple[list[tuple[int, int]], dict[str, str]]:
    rlimits = [(resource.RLIMIT_CORE, 0)]
    mechanisms: dict[str, str] = {}
    fallbacks = (
        ("memory", limits.memory_bytes, resource.RLIMIT_AS, "RLIMIT_AS"),
        ("pids", limits.pids, resource.RLIMIT_NPROC, "RLIMIT_NPROC"),
    )
    for name, value, which, label in fallbacks:
        if value is not None and name not in in_cgroup:
            rlimits.append((which, value))
            mechanisms[name] = f"{label} (weaker: no cgroup)"
            log.warning("limit_weakened", limit=name, mechanism=label, hint=FIX_HINT)

    always = (
        ("cpu_seconds", limits.cpu_seconds, resource.RLIMIT_CPU, "RLIMIT_CPU"),
        ("open_files", limits.open_files, resource.RLIMIT_NOFILE, "RLIMIT_NOFILE"),
        ("file_size", limits.file_size_bytes, resource.RLIMIT_FSIZE, "RLIMIT_FSIZE"),
    )
    for name, value, which, label in always:
        if value is not None:
            rlimits.append((which, value))
            mechanisms[name] = label

    return rlimits, mechanisms


def _create_cgroup(
    host: CgroupHost, sandbox_id: str, limits: Limits, controllers: list[str]
) -> SandboxCgroup:
    dirs = {c: host.folders[c] / sandbox_id for c in controllers}
    cgroup = SandboxCgroup(host.version, dirs)
    try:
        for folder in set(host.folders.values()):
            if host.version == 2:
                _enable_v2_controllers(folder)
            else:
                folder.mkdir(exist_ok=True)

        for folder in set(dirs.values()):
            folder.mkdir()

        for name, value in _settings(host.version, limits, controllers):
            _write(dirs[name.split(".")[0]] / name, value)
    except OSError as exc:
        cgroup.remove()
        raise SandboxUnavailable(
            f"cannot set up the sandbox cgroup ({exc.filename}: {exc.strerror}):"
            f" {FIX_HINT}"
        ) from exc

    return cgroup


def _settings(
    version: int, limits: Limits, controllers: list[str]
) -> list[tuple[str, str]]:
    """The control files to write, in order, as (file name, value)."""
    settings: list[tuple[str, str]] = []
    if "memory" in controllers and limits.memory_bytes is not None:
        memory = str(limits.memory_bytes)
        if version == 1:
            settings += [("memory.limit_in_bytes", memory)]
            settings += [("memory.memsw.limit_in_bytes", memory)]
        else:
            settings += [("memory.max", memory), ("memory.swap.max", "0")]

    if "pids" in controllers and limits.pids is not None:
        settings.append(("pids.max", str(limits.pids)))

    if "cpu" in controllers and limits.cpu_cores is not None:
        quota = max(1000, round(limits.cpu_cores * CPU_PERIOD_US))
        if version == 1:
            settings += [("cpu.cfs_period_us", str(CPU_PERIOD_US))]
            settings += [("cpu.cfs_quota_us", str(quota))]
        else:
            settings.append(("cpu.max", f"{quota} {CPU_PERIOD_US}"))

    return settings


def detect_cgroups() -> tuple[CgroupHost | None, str]:
    """Where this process can make sandbox cgroups, or why it cannot."""
    own = _own_cgroups()
    mounts = _cgroup_mounts()
    unified = mounts.get("cgroup2")
    if unified is not None and "" in own:
        folder = _mounted_path(unified, own[""])
        available = _read_words(folder / "cgroup.controllers")
        offered = [c for c in CONTROLLERS if c in available]
        if offered and os.access(folder, os.W_OK):
            folders = dict.fromkeys(offered, folder / GROUP_FOLDER)
            return CgroupHost(2, folders), f"cgroup v2: {', '.join(offered)}"

    folders: dict[str, Path] = {}
    for controller in CONTROLLERS:
        mount = mounts.get(controller)
        if mount is not None and controller in own:
            folder = _mounted_path(mount, own[controller])
            if os.access(folder, os.W_OK):
                folders[controller] = folder / GROUP_FOLDER

    if folders:
        return CgroupHost(1, folders), f"cgroup v1: {', '.join(folders)}"

    return None, "no cgroup this process may write to"


def _own_cgroups() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under "" on v2."""
    own: dict[str, str] = {}
    for line in _lines(Path("/proc/self/cgroup")):
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            own[controller] = path

    return own


def _cgroup_mounts() -> dict[str, tuple[Path, str]]:
    """Mount point and mount root per v1 controller, and the v2 mount as "cgroup2"."""
    mounts: dict[str, tuple[Path, str]] = {}
    for line in _lines(Path("/proc/self/mountinfo")):
        fields, _, tail = line.partition(" - ")
        parts, extra = fields.split(), tail.split()
        if len(parts) < 5 or len(extra) < 3:
            continue

        if extra[0] == "cgroup2":
            mounts.setdefault("cgroup2", (Path(parts[4]), parts[3]))
        elif extra[0] == "cgroup":
            for option in extra[2].split(","):
                mounts.setdefault(option, (Path(parts[4]), parts[3]))

    return mounts


def _mounted_path(mount: tuple[Path, str], cgroup_path: str) -> Path:
    mount_point, mount_root = mount
    relative = os.path.relpath(cgroup_path, mount_root)
    return mount_point if relative == "." else mount_point / relative


def _enable_v2_controllers(folder: Path) -> None:
    """Let the sandbox folder's children use the controllers (v2 only).

    cgroup v2 hands controllers only to the children of a cgroup without processes
    of its own; when the proxy's cgroup has some, the proxy first moves itself into
    a leaf beside the sandbox folder.
    """
    parent = folder.parent
    available = _read_words(parent / "cgroup.controllers")
    wanted = " ".join(f"+{c}" for c in CONTROLLERS if c in available)
    try:
        _write(parent / "cgroup.subtree_control", wanted)
    except OSError:
        leaf = parent / "proxy"
        leaf.mkdir(exist_ok=True)
        _write(leaf / "cgroup.procs", str(os.getpid()))
        _write(parent / "cgroup.subtree_control", wanted)

    folder.mkdir(exist_ok=True)
    _write(folder / "cgroup.subtree_control", wanted)


def _write(path: Path, value: str) -> None:
    # Swap accounting may be off (no memsw file, no swap.max): there is then no
    # swap to bound, so a missing swap file is not an error.
    if path.name in SWAP_FILES and not path.exists():
        return

    path.write_text(value, encoding="ascii")


def _read_ints(path: Path) -> list[int]:
    try:
        return [int(word) for word in path.read_text(encoding="ascii").split()]
    except (OSError, ValueError):
        return []


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").split()
    except OSError:
        return []


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []


def _read_key(path: Path, key: str) -> int | None:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except OSError:
        return None

    for line in lines:
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)

    return None
