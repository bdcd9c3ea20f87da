"""What this host offers the namespace backend: bubblewrap, user namespaces, limits.

``usable_bwrap`` answers once per process whether a sandbox can be made at all (a
trial sandbox is run); ``host_checks`` gives the rows ``doctor`` prints.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess

from mcp_sandbox_proxy.exceptions import SandboxUnavailable
from mcp_sandbox_proxy.sandbox import seccomp
from mcp_sandbox_proxy.sandbox._staging import drop_to
from mcp_sandbox_proxy.sandbox.backend import BackendCheck
from mcp_sandbox_proxy.sandbox.limits import CgroupHost, detect_cgroups
from mcp_sandbox_proxy.sandbox.spec import NOBODY_GID, NOBODY_UID

# --disable-userns and --size appeared by bubblewrap 0.8.0.
BWRAP_MIN_VERSION = (0, 8, 0)
BWRAP_INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: apt install bubblewrap)"
USERNS_HINT = (
    "enable unprivileged user namespaces (sysctl user.max_user_namespaces=15000;"
    " on Debian before 11 also kernel.unprivileged_userns_clone=1; on Ubuntu 24.04"
    " and later allow bwrap through AppArmor or set"
    " kernel.apparmor_restrict_unprivileged_userns=0)"
)
# The one-off trial sandbox that proves bubblewrap works here ends well within this.
PROBE_TIMEOUT_S = 10.0
# The namespaces of every sandbox; the trial sandbox asks for the same.
NAMESPACE_OPTIONS = (
    "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
    "--unshare-uts", "--unshare-cgroup", "--disable-userns",
)  # fmt: skip


@functools.cache
def usable_bwrap(uid: int, gid: int) -> str:
    """bubblewrap's path once a trial sandbox ran, or ``SandboxUnavailable``."""
    bwrap = find_bwrap()
    version = bwrap_version(bwrap)
    if version < BWRAP_MIN_VERSION:
        raise SandboxUnavailable(
            f"bubblewrap {_dotted(version)} is too old;"
            f" {_dotted(BWRAP_MIN_VERSION)} or later is needed: {BWRAP_INSTALL_HINT}"
        )

    error = trial_sandbox(bwrap, uid, gid)
    if error:
        raise SandboxUnavailable(
            f"bubblewrap cannot create a sandbox ({error}): {USERNS_HINT}"
        )

    return bwrap


def find_bwrap() -> str:
    """The bubblewrap executable, or ``SandboxUnavailable`` naming how to get it."""
    found = shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin")
    if found is None:
        raise SandboxUnavailable(
            f"bubblewrap (bwrap) was not found: {BWRAP_INSTALL_HINT}"
        )

    return found


def bwrap_version(bwrap: str) -> tuple[int, ...]:
    """bubblewrap's version, as numbers; ``(0,)`` when it does not say."""
    try:
        result = subprocess.run(
            [bwrap, "--version"],
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxUnavailable(f"cannot run {bwrap}: {exc}") from exc

    match = re.search(rb"(\d+)\.(\d+)(?:\.(\d+))?", result.stdout)
    return tuple(int(n) for n in match.groups("0")) if match else (0,)


def trial_sandbox(bwrap: str, uid: int, gid: int) -> str:
    """Run ``true`` in the namespaces a server gets; bubblewrap's error, or ``""``."""
    argv = [bwrap, *NAMESPACE_OPTIONS, "--uid", str(uid), "--gid", str(gid)]
    argv += ["--ro-bind", "/usr", "/usr", "--symlink", "usr/lib64", "/lib64"]
    argv += ["--symlink", "usr/lib", "/lib", "--", "/usr/bin/true"]
    as_root = os.geteuid() == 0
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            preexec_fn=(lambda: drop_to(uid, gid)) if as_root else None,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)

    if result.returncode == 0:
        return ""

    return result.stderr.decode(errors="replace").strip()


def sandbox_host_uid(uid: int) -> int:
    """The host uid a sandbox asking for ``uid`` runs as (see ``namespace``)."""
    return uid if os.geteuid() == 0 else os.getuid()


def host_checks() -> list[BackendCheck]:
    """The rows ``doctor`` prints for the namespace backend."""
    try:
        bwrap = find_bwrap()
    except SandboxUnavailable as exc:
        return [BackendCheck("bubblewrap", False, str(exc))]

    return [
        _bwrap_check(bwrap),
        _userns_check(bwrap),
        _seccomp_check(),
        *_limit_checks(detect_cgroups()),
        _identity_check(),
    ]


def _bwrap_check(bwrap: str) -> BackendCheck:
    version = bwrap_version(bwrap)
    ok = version >= BWRAP_MIN_VERSION
    hint = "" if ok else f"; too old, {BWRAP_INSTALL_HINT}"
    return BackendCheck("bubblewrap", ok, f"{_dotted(version)} at {bwrap}{hint}")


def _userns_check(bwrap: str) -> BackendCheck:
    error = trial_sandbox(bwrap, NOBODY_UID, NOBODY_GID)
    detail = "a trial sandbox ran" if not error else f"{error}: {USERNS_HINT}"
    return BackendCheck("user namespaces", not error, detail)


def _seccomp_check() -> BackendCheck:
    if not seccomp.kernel_supports_seccomp():
        return BackendCheck("seccomp", False, "this kernel has no seccomp filters")

    try:
        program = seccomp.bpf_program()
    except SandboxUnavailable as exc:
        return BackendCheck("seccomp", False, str(exc))

    allowed, refused = len(seccomp.allowed_names()), len(seccomp.refused_names())
    detail = f"allow-list of {allowed} syscalls, {refused} refused outright"
    return BackendCheck("seccomp", True, f"{detail} ({len(program) // 8} BPF steps)")


def _limit_checks(cgroups: tuple[CgroupHost | None, str]) -> list[BackendCheck]:
    host, detail = cgroups
    rows = [BackendCheck("cgroups", host is not None, detail, required=False)]
    for controller, fallback in (
        ("memory", "RLIMIT_AS (weaker)"),
        ("pids", "RLIMIT_NPROC (weaker)"),
        ("cpu", None),
    ):
        offered = host is not None and host.offers(controller)
        how = f"cgroup v{host.version}" if offered and host else fallback
        shown = how or "cannot be enforced: servers with a CPU quota will not start"
        rows.append(
            BackendCheck(f"limit: {controller}", how is not None, shown, not fallback)
        )

    return rows


def _identity_check() -> BackendCheck:
    uid = sandbox_host_uid(NOBODY_UID)
    why = "the proxy runs as root and drops to it" if uid == NOBODY_UID else "your uid"
    return BackendCheck("sandbox host uid", True, f"{uid} ({why})", required=False)


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))
