"""The ``namespace`` backend: each server in a bubblewrap sandbox of its own.

``bwrap_argv`` builds the sandbox as one ordered checklist: new namespaces, an
unprivileged identity without capabilities, a read-only filesystem of the server's
runtime only, a fresh ``/proc``, four devices, a bounded ``/tmp``, the mounts the
policy grants, an emptied environment and a syscall filter. Resource limits come
from ``limits`` and are entered before bubblewrap starts.

Which host uid the sandbox runs as. An unprivileged user's bubblewrap can map the
sandbox uid only onto that user, so the server runs as the caller on the host, as
any of the caller's programs would. A root caller is different: bubblewrap would
map the sandbox onto host uid 0, and a server that escaped its namespaces would
own every root file. So under root the proxy drops to the spec's uid and gid
(65534, ``nobody``, by default) before starting bubblewrap, and the server is that
unprivileged uid on the host as well as inside. Host paths the sandbox needs that
this uid cannot reach (a runtime under ``/root``, say) are exposed through a
private mount namespace of the child: a traversable tmpfs covers the unreachable
directory and binds back just the needed paths. Folders granted read-write (and
the egress proxy's socket) must then be writable by that uid; starting refuses a
folder that is not, naming it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import anyio
import structlog

from mcp_sandbox_proxy.exceptions import SandboxStartFailed, SandboxUnavailable
from mcp_sandbox_proxy.sandbox import seccomp
from mcp_sandbox_proxy.sandbox._bwrap_host import (
    NAMESPACE_OPTIONS,
    host_checks,
    usable_bwrap,
)
from mcp_sandbox_proxy.sandbox._pipes import PipedProcess, spawn_piped
from mcp_sandbox_proxy.sandbox._staging import (
    Staging,
    drop_to,
    plan_staging,
    writable_by,
)
from mcp_sandbox_proxy.sandbox.backend import Backend, BackendCheck, ResourceUsage
from mcp_sandbox_proxy.sandbox.egress_bridge import (
    BRIDGE_PORT,
    EGRESS_SOCKET_ENV,
    SANDBOX_EGRESS_SOCKET,
    egress_launch,
    proxy_env,
)
from mcp_sandbox_proxy.sandbox.limits import (
    CgroupHost,
    LimitPlan,
    SandboxCgroup,
    detect_cgroups,
    plan_limits,
)
from mcp_sandbox_proxy.sandbox.process import die_with_parent
from mcp_sandbox_proxy.sandbox.runtime import SYSTEM_DIRS, Runtime, find_runtime
from mcp_sandbox_proxy.sandbox.spec import NOBODY_GID, NOBODY_UID, SandboxSpec

log = structlog.get_logger(__name__)

SANDBOX_HOME = "/tmp"
SANDBOX_HOSTNAME = "sandbox"
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
# Symlinks programs expect in /dev; none of them is a device.
DEV_LINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("/tmp", "/dev/shm"),
)

_ids = itertools.count(1)


@dataclass(frozen=True)
class LaunchFds:
    """Descriptors bubblewrap reads at start: the filter and generated /etc files."""

    seccomp: int
    passwd: int
    group: int
    hosts: int


def bwrap_argv(spec: SandboxSpec, runtime: Runtime, fds: LaunchFds) -> list[str]:
    """bubblewrap's options for ``spec``: every confinement, in order.

    They reach bubblewrap through a descriptor (``--args``), so that the values of
    the server's environment never show in the host's process list.
    """
    return [
        *_namespaces(),
        *_identity(spec),
        *_lifetime(),
        # /proc, /dev and the private /tmp come first: a runtime or a grant that
        # lives under /tmp (a checkout there, say) is then bound on top of it.
        *_kernel_files(spec),
        *_runtime_files(runtime),
        *_etc_files(runtime, fds),
        *_granted_mounts(spec),
        *_network(spec),
        *_working_directory(spec, runtime),
        "--remount-ro", "/",
        *_environment(spec, runtime),
        "--seccomp", str(fds.seccomp),
    ]  # fmt: skip


def _namespaces() -> list[str]:
    """New user, PID, network, IPC, UTS, mount and cgroup namespaces; no more."""
    return [*NAMESPACE_OPTIONS, "--hostname", SANDBOX_HOSTNAME]


def _identity(spec: SandboxSpec) -> list[str]:
    """An unprivileged uid and gid, no capabilities (bwrap sets no_new_privs)."""
    return ["--uid", str(spec.uid), "--gid", str(spec.gid), "--cap-drop", "ALL"]


def _lifetime() -> list[str]:
    """Killed with the proxy; a session of its own, so no terminal to type into."""
    return ["--die-with-parent", "--new-session"]


def _runtime_files(runtime: Runtime) -> list[str]:
    """System directories and the server's runtime, read-only at their host paths."""
    argv: list[str] = []
    for path in SYSTEM_DIRS:
        if path.is_symlink():
            argv += ["--symlink", str(path.readlink()), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]

    for path in runtime.paths:
        argv += ["--ro-bind", str(path), str(path)]

    return argv


def _etc_files(runtime: Runtime, fds: LaunchFds) -> list[str]:
    """Generated user, group and host names; the host's /etc only where needed."""
    argv = [
        "--ro-bind-data", str(fds.passwd), "/etc/passwd",
        "--ro-bind-data", str(fds.group), "/etc/group",
        "--ro-bind-data", str(fds.hosts), "/etc/hosts",
    ]  # fmt: skip
    for path in runtime.etc_files:
        argv += ["--ro-bind", str(path), str(path)]

    return argv


def _kernel_files(spec: SandboxSpec) -> list[str]:
    """A fresh /proc, four devices and a size-limited /tmp."""
    argv = ["--proc", "/proc"]
    for device in DEVICES:
        argv += ["--dev-bind", device, device]

    for target, link in DEV_LINKS:
        argv += ["--symlink", target, link]

    return [*argv, "--size", str(spec.limits.tmpfs_bytes), "--tmpfs", "/tmp"]


def _granted_mounts(spec: SandboxSpec) -> list[str]:
    """The paths the policy grants, read-only unless granted writable."""
    argv: list[str] = []
    for mount in spec.mounts:
        option = "--bind" if mount.writable else "--ro-bind"
        argv += [option, str(mount.host_path), str(mount.sandbox_path)]

    return argv


def _network(spec: SandboxSpec) -> list[str]:
    """Loopback only; with egress, also the egress proxy's socket."""
    socket = spec.network.egress_socket
    if spec.network.mode != "egress" or socket is None:
        return []

    return ["--ro-bind", str(socket), SANDBOX_EGRESS_SOCKET]


def _working_directory(spec: SandboxSpec, runtime: Runtime) -> list[str]:
    """The spec's cwd (an empty folder unless bound), or the sandbox home."""
    if spec.cwd is None:
        return ["--chdir", SANDBOX_HOME]

    visible = [*SYSTEM_DIRS, *runtime.paths, *(m.sandbox_path for m in spec.mounts)]
    inside = any(spec.cwd == p or spec.cwd.is_relative_to(p) for p in visible)
    created = [] if inside else ["--dir", str(spec.cwd)]
    return [*created, "--chdir", str(spec.cwd)]


def _environment(spec: SandboxSpec, runtime: Runtime) -> list[str]:
    """Nothing of the host's: only the spec's variables, with sandbox HOME and PATH."""
    env = {**spec.env, "HOME": SANDBOX_HOME, "PATH": ":".join(runtime.search_path)}
    if spec.network.mode == "egress" and spec.network.egress_socket is not None:
        env.update(proxy_env(BRIDGE_PORT))
        env[EGRESS_SOCKET_ENV] = SANDBOX_EGRESS_SOCKET

    argv = ["--clearenv"]
    for name, value in env.items():
        argv += ["--setenv", name, value]

    return argv


class SandboxedProcess(PipedProcess):
    """A bubblewrap sandbox, whose cgroup goes once the sandbox has exited."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        *,
        sandbox_id: str,
        cgroup: SandboxCgroup | None,
    ) -> None:
        super().__init__(popen, backend="namespace", sandbox_id=sandbox_id)
        self.cgroup = cgroup
        self._cgroup_to_remove = cgroup

    async def wait(self) -> int:
        status = await super().wait()
        cgroup, self._cgroup_to_remove = self._cgroup_to_remove, None
        if cgroup is not None:
            with anyio.CancelScope(shield=True):
                await cgroup.remove_when_empty()

        return status

    def resource_usage(self) -> ResourceUsage:
        usage = super().resource_usage()
        peak = self.cgroup.peak_memory_bytes if self.cgroup is not None else None
        if peak is None:
            return usage

        return replace(usage, peak_memory_bytes=peak)


class NamespaceBackend(Backend):
    """Runs each server in a bubblewrap sandbox: the default, and the strict one."""

    name = "namespace"

    def __init__(self) -> None:
        self._cgroups: CgroupHost | None = None
        self._cgroups_known = False

    async def start(self, spec: SandboxSpec) -> SandboxedProcess:
        # The trial sandbox behind ``usable_bwrap`` takes milliseconds: off the loop.
        bwrap = await anyio.to_thread.run_sync(usable_bwrap, spec.uid, spec.gid)
        return self._start_with(bwrap, spec)

    def start_now(self, spec: SandboxSpec) -> SandboxedProcess:
        return self._start_with(usable_bwrap(spec.uid, spec.gid), spec)

    def _start_with(self, bwrap: str, spec: SandboxSpec) -> SandboxedProcess:
        _check_spec(spec)
        runtime = find_runtime(spec, network=spec.network.mode == "egress")
        sandbox_id = f"ns-{uuid.uuid4().hex[:12]}-{next(_ids)}"
        limits = plan_limits(spec.limits, sandbox_id, self._cgroup_host())
        try:
            popen = _spawn(bwrap, spec, runtime, limits)
        except BaseException:
            if limits.cgroup is not None:
                limits.cgroup.remove()

            raise

        log.info(
            "sandbox_started",
            server=spec.name,
            sandbox_id=sandbox_id,
            pid=popen.pid,
            limits=dict(limits.mechanisms),
        )
        return SandboxedProcess(popen, sandbox_id=sandbox_id, cgroup=limits.cgroup)

    def _cgroup_host(self) -> CgroupHost | None:
        if not self._cgroups_known:
            self._cgroups, self._cgroups_known = detect_cgroups()[0], True

        return self._cgroups

    def checks(self) -> list[BackendCheck]:
        return host_checks()


def _check_spec(spec: SandboxSpec) -> None:
    """Refuse, naming the reason, a spec this backend cannot run as asked."""
    if spec.network.mode == "host":
        raise SandboxUnavailable(
            f"server {spec.name!r} asks for the host's network, which only the"
            " process backend gives; use network 'none' or 'egress'"
        )

    for mount in spec.mounts:
        if not mount.host_path.exists():
            raise SandboxStartFailed(
                f"mount {mount.host_path} of server {spec.name!r} does not exist"
            )

    if os.geteuid() == 0:
        _check_root_identity(spec)


def _check_root_identity(spec: SandboxSpec) -> None:
    """Under root, the spec's uid is the host uid: it must not be root's, and it
    must be able to write what it is granted to write."""
    if spec.uid == 0 or spec.gid == 0:
        raise SandboxUnavailable(
            f"server {spec.name!r} would run as host root (uid/gid 0) in the sandbox;"
            " give it an unprivileged uid and gid"
        )

    for mount in spec.mounts:
        if mount.writable and not writable_by(mount.host_path, spec.uid, spec.gid):
            raise SandboxStartFailed(
                f"mount {mount.host_path} of server {spec.name!r} is granted"
                f" read-write, but the sandbox runs as host uid {spec.uid} (the proxy"
                " runs as root) and may not write it; chown or chmod it for that uid"
            )


def _spawn(
    bwrap: str, spec: SandboxSpec, runtime: Runtime, limits: LimitPlan
) -> subprocess.Popen[bytes]:
    opened: list[int] = []
    try:
        fds = LaunchFds(
            seccomp=_data_fd(seccomp.bpf_program(), opened),
            passwd=_data_fd(_passwd(spec), opened),
            group=_data_fd(_group(spec), opened),
            hosts=_data_fd(_hosts(), opened),
        )
        options = b"\0".join(a.encode() for a in bwrap_argv(spec, runtime, fds))
        args_fd = _data_fd(options + b"\0", opened)
        staging = plan_staging(_bind_sources(spec, runtime), spec.uid, spec.gid)
        command = [str(runtime.executable), *spec.args]
        if spec.network.mode == "egress":
            # Wrapped after the runtime was found from the server's own command,
            # so that the launcher does not hide the server's code from it.
            command = egress_launch(command, BRIDGE_PORT)

        return spawn_piped(
            [bwrap, "--args", str(args_fd), "--", *command],
            env={},
            cwd=Path("/"),
            pass_fds=opened,
            preexec=_child_setup(limits, staging, spec.uid, spec.gid),
        )
    except subprocess.SubprocessError as exc:
        raise SandboxStartFailed(
            f"could not prepare the sandbox of server {spec.name!r} (cgroup, mounts"
            " or dropping root)"
        ) from exc
    finally:
        for fd in opened:
            os.close(fd)


def _child_setup(
    limits: LimitPlan, staging: Staging | None, uid: int, gid: int
) -> Callable[[], None]:
    """What the forked child does before it becomes bubblewrap, in this order."""
    as_root = os.geteuid() == 0

    def setup() -> None:
        limits.apply_cgroup()
        if as_root:
            if staging is not None:
                staging.apply()

            drop_to(uid, gid)

        limits.apply_rlimits()
        die_with_parent()

    return setup


def _bind_sources(spec: SandboxSpec, runtime: Runtime) -> list[Path]:
    sources = [*runtime.paths, *runtime.etc_files, *(m.host_path for m in spec.mounts)]
    if spec.network.mode == "egress" and spec.network.egress_socket is not None:
        sources.append(spec.network.egress_socket)

    return sources


def _data_fd(data: bytes, opened: list[int]) -> int:
    fd = os.memfd_create("mcp-sandbox-data", os.MFD_CLOEXEC)
    opened.append(fd)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _passwd(spec: SandboxSpec) -> bytes:
    user = "nobody" if spec.uid == NOBODY_UID else "sandbox"
    shell = "/usr/sbin/nologin"
    entry = f"{user}:x:{spec.uid}:{spec.gid}:{user}:{SANDBOX_HOME}:{shell}\n"
    return (f"root:x:0:0:root:/root:{shell}\n" + entry).encode()


def _group(spec: SandboxSpec) -> bytes:
    group = "nogroup" if spec.gid == NOBODY_GID else "sandbox"
    return f"root:x:0:\n{group}:x:{spec.gid}:\n".encode()


def _hosts() -> bytes:
    return f"127.0.0.1 localhost {SANDBOX_HOSTNAME}\n::1 localhost\n".encode()
