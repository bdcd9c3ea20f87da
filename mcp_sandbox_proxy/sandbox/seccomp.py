"""The syscall filter of every sandbox: one allow-list, two outputs.

The tables below are the only source. From them come the BPF program that
bubblewrap loads (``bpf_program``, built with libseccomp through ``pyseccomp``) and
the seccomp profile that Docker loads (``docker_seccomp_profile``), so that both
backends refuse the same calls.

Anything not allowed fails with ENOSYS, the answer of a kernel that lacks the call,
so that a C library falls back to an older call it can make (glibc goes from
``clone3``, whose flags a filter cannot read, to ``clone``, whose flags it can).
The calls that matter most to an attacker fail with EPERM instead, so that a
refusal reads as one.
"""

from __future__ import annotations

import errno
import functools
import os
import platform
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from mcp_sandbox_proxy.exceptions import SandboxUnavailable

if TYPE_CHECKING:
    import pyseccomp

log = structlog.get_logger(__name__)

# What a server may do, by purpose. Python, Node and git servers run on these.
ALLOWED_SYSCALLS: dict[str, tuple[str, ...]] = {
    "read and write open files": (
        "read", "write", "readv", "writev", "pread64", "pwrite64", "preadv",
        "pwritev", "preadv2", "pwritev2", "lseek", "close", "close_range", "dup",
        "dup2", "dup3", "fcntl", "flock", "fsync", "fdatasync", "sync", "syncfs",
        "sync_file_range", "ftruncate", "fallocate", "fadvise64", "readahead",
        "sendfile", "copy_file_range", "splice", "tee", "ioctl",
    ),
    "open and inspect paths": (
        "open", "openat", "openat2", "creat", "stat", "fstat", "lstat",
        "newfstatat", "statx", "statfs", "fstatfs", "access", "faccessat",
        "faccessat2", "readlink", "readlinkat", "getdents", "getdents64", "getcwd",
        "chdir", "fchdir", "getxattr", "lgetxattr", "fgetxattr", "listxattr",
        "llistxattr", "flistxattr",
    ),
    "change the filesystem (only where mounts allow)": (
        "mkdir", "mkdirat", "rmdir", "rename", "renameat", "renameat2", "link",
        "linkat", "unlink", "unlinkat", "symlink", "symlinkat", "chmod", "fchmod",
        "fchmodat", "fchmodat2", "chown", "fchown", "lchown", "fchownat",
        "truncate", "utime", "utimes", "utimensat", "futimesat", "mknod",
        "mknodat", "umask", "setxattr", "lsetxattr", "fsetxattr", "removexattr",
        "lremovexattr", "fremovexattr",
    ),
    "wait for events": (
        "select", "pselect6", "poll", "ppoll", "epoll_create", "epoll_create1",
        "epoll_ctl", "epoll_wait", "epoll_pwait", "epoll_pwait2", "eventfd",
        "eventfd2", "timerfd_create", "timerfd_settime", "timerfd_gettime",
        "signalfd", "signalfd4", "inotify_init", "inotify_init1",
        "inotify_add_watch", "inotify_rm_watch", "pipe", "pipe2", "memfd_create",
    ),
    "manage memory": (
        "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "msync",
        "mincore", "mlock", "mlock2", "munlock", "get_mempolicy", "set_mempolicy",
        "mbind", "pkey_alloc", "pkey_free", "pkey_mprotect", "membarrier",
    ),
    "run threads and child processes": (
        "fork", "vfork", "execve", "execveat", "exit", "exit_group", "wait4",
        "waitid", "set_tid_address", "set_robust_list", "get_robust_list", "rseq",
        "futex", "futex_waitv", "sched_yield", "sched_getaffinity",
        "sched_setaffinity", "sched_getparam", "sched_getscheduler",
        "sched_get_priority_max", "sched_get_priority_min", "sched_getattr",
        "sched_rr_get_interval", "getpriority", "setpriority", "arch_prctl",
        "prctl", "restart_syscall",
    ),
    "signals (only within the sandbox's own processes)": (
        "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "rt_sigsuspend",
        "rt_sigpending", "rt_sigtimedwait", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
        "sigaltstack", "kill", "tkill", "tgkill", "pause", "pidfd_open",
        "pidfd_send_signal",
    ),
    "time and timers": (
        "clock_gettime", "clock_getres", "clock_nanosleep", "nanosleep",
        "gettimeofday", "time", "times", "getitimer", "setitimer", "alarm",
        "timer_create", "timer_settime", "timer_gettime", "timer_getoverrun",
        "timer_delete",
    ),
    "identity and limits (no capabilities, so nothing to gain)": (
        "getpid", "getppid", "gettid", "getuid", "geteuid", "getgid", "getegid",
        "getgroups", "getresuid", "getresgid", "getpgid", "getpgrp", "getsid",
        "setpgid", "setsid", "setuid", "setgid", "setreuid", "setregid",
        "setresuid", "setresgid", "setfsuid", "setfsgid", "setgroups", "capget",
        "capset", "getrlimit", "setrlimit", "prlimit64", "getrusage", "uname",
        "sysinfo", "getcpu", "getrandom",
    ),
    "sockets (in the sandbox's own network namespace)": (
        "socket", "socketpair", "bind", "listen", "accept", "accept4", "connect",
        "getsockname", "getpeername", "sendto", "recvfrom", "sendmsg", "recvmsg",
        "sendmmsg", "recvmmsg", "setsockopt", "getsockopt", "shutdown",
    ),
    "System V IPC (in the sandbox's own IPC namespace)": (
        "shmget", "shmat", "shmdt", "shmctl", "semget", "semop", "semtimedop",
        "semctl", "msgget", "msgsnd", "msgrcv", "msgctl",
    ),
    "confine itself further": (
        "seccomp", "landlock_create_ruleset", "landlock_add_rule",
        "landlock_restrict_self",
    ),
}  # fmt: skip

# Refused with EPERM, by what they would give an attacker.
REFUSED_SYSCALLS: dict[str, tuple[str, ...]] = {
    "mount or leave the filesystem view": (
        "mount", "umount", "umount2", "pivot_root", "chroot", "open_tree",
        "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
        "open_by_handle_at", "name_to_handle_at",
    ),
    "enter or create namespaces": ("unshare", "setns"),
    "read or control other processes": (
        "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "kcmp",
    ),
    "reach the kernel's keyrings": ("keyctl", "add_key", "request_key"),
    "load code or probes into the kernel": (
        "bpf", "perf_event_open", "init_module", "finit_module", "delete_module",
        "kexec_load", "kexec_file_load",
    ),
    "use attack-prone kernel interfaces": (
        "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    ),
    "change the machine": (
        "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
        "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "iopl",
        "ioperm",
    ),
}  # fmt: skip

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = (
    CLONE_NEWNS,
    CLONE_NEWCGROUP,
    CLONE_NEWUTS,
    CLONE_NEWIPC,
    CLONE_NEWUSER,
    CLONE_NEWPID,
    CLONE_NEWNET,
)
ANY_NAMESPACE_FLAG = functools.reduce(int.__or__, NAMESPACE_FLAGS)

# Terminal ioctls that type into, or take over, the terminal of whoever reads it.
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

# The kernel reads an ioctl's request as 32 bits; a filter that compared all 64
# would let a request with high bits set through.
IOCTL_REQUEST_MASK = 0xFFFF_FFFF


@dataclass(frozen=True)
class ArgumentRule:
    """Allow or refuse ``syscall`` when ``(argument & mask) == value``."""

    syscall: str
    allow: bool
    argument: int
    mask: int
    value: int
    reason: str


ARGUMENT_RULES: tuple[ArgumentRule, ...] = (
    ArgumentRule(
        "clone", True, 0, ANY_NAMESPACE_FLAG, 0, "a thread or process, no namespace"
    ),
    *(
        ArgumentRule("clone", False, 0, flag, flag, "a process in a new namespace")
        for flag in NAMESPACE_FLAGS
    ),
    ArgumentRule(
        "ioctl", False, 1, IOCTL_REQUEST_MASK, TIOCSTI, "typing into a terminal"
    ),
    ArgumentRule(
        "ioctl", False, 1, IOCTL_REQUEST_MASK, TIOCLINUX, "taking over a console"
    ),
)

# libseccomp's CTL_OPTIMIZE level that sorts the filter into a binary tree.
BINARY_TREE = 2

# Docker's names for the architectures a profile applies to.
DOCKER_ARCHITECTURES = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64"}


def allowed_names() -> list[str]:
    """Every syscall allowed without conditions, sorted."""
    return sorted({name for group in ALLOWED_SYSCALLS.values() for name in group})


def refused_names() -> list[str]:
    """Every syscall refused with EPERM, sorted."""
    return sorted({name for group in REFUSED_SYSCALLS.values() for name in group})


def _refused_on_arguments() -> set[str]:
    return {rule.syscall for rule in ARGUMENT_RULES if not rule.allow}


def build_filter() -> pyseccomp.SyscallFilter:
    """The libseccomp filter for this machine's architecture."""
    seccomp = _load_pyseccomp()
    known = _known_syscalls(seccomp)
    syscall_filter = seccomp.SyscallFilter(seccomp.ERRNO(errno.ENOSYS))
    syscall_filter.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    # A binary search over syscall numbers rather than a chain: every syscall the
    # server makes runs the filter, so its depth is per-call latency.
    syscall_filter.set_attr(seccomp.Attr.CTL_OPTIMIZE, BINARY_TREE)
    refused = seccomp.ERRNO(errno.EPERM)
    for rule in ARGUMENT_RULES:
        action = seccomp.ALLOW if rule.allow else refused
        condition = seccomp.Arg(rule.argument, seccomp.MASKED_EQ, rule.mask, rule.value)
        syscall_filter.add_rule(action, rule.syscall, condition)

    # libseccomp lets an unconditional rule override conditional rules on the same
    # syscall, so a syscall that is allowed except for some arguments is allowed
    # under a condition that always holds: its refusals are then checked first.
    always = seccomp.Arg(0, seccomp.GE, 0)
    for name in filter(known.__contains__, allowed_names()):
        conditions = [always] if name in _refused_on_arguments() else []
        syscall_filter.add_rule(seccomp.ALLOW, name, *conditions)

    for name in filter(known.__contains__, refused_names()):
        syscall_filter.add_rule(refused, name)

    return syscall_filter


@functools.cache
def bpf_program() -> bytes:
    """The compiled filter, as bubblewrap's ``--seccomp`` reads it."""
    syscall_filter = build_filter()
    fd = os.memfd_create("mcp-sandbox-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as memfile:
        syscall_filter.export_bpf(memfile)
        memfile.seek(0)
        return memfile.read()


def docker_seccomp_profile() -> dict[str, Any]:
    """The same filter as a Docker seccomp profile (``--security-opt seccomp=``)."""
    machine = platform.machine()
    if machine not in DOCKER_ARCHITECTURES:
        raise SandboxUnavailable(
            f"no seccomp profile for architecture {machine!r}; supported:"
            f" {', '.join(DOCKER_ARCHITECTURES)}"
        )

    conditional = _refused_on_arguments()
    rules: list[dict[str, Any]] = [
        {
            "names": [n for n in allowed_names() if n not in conditional],
            "action": "SCMP_ACT_ALLOW",
        },
        *(
            {"names": [name], "action": "SCMP_ACT_ALLOW", "args": [_ALWAYS_DOCKER]}
            for name in sorted(conditional)
        ),
        *(_docker_argument_rule(rule) for rule in ARGUMENT_RULES),
        {"names": refused_names(), "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM},
    ]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.ENOSYS,
        "architectures": [DOCKER_ARCHITECTURES[machine]],
        "syscalls": rules,
    }


# See ``build_filter``: the condition that always holds, in Docker's terms.
_ALWAYS_DOCKER = {"index": 0, "value": 0, "op": "SCMP_CMP_GE"}


def _docker_argument_rule(rule: ArgumentRule) -> dict[str, Any]:
    action: dict[str, Any] = (
        {"action": "SCMP_ACT_ALLOW"}
        if rule.allow
        else {"action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}
    )
    condition = {
        "index": rule.argument,
        "value": rule.mask,
        "valueTwo": rule.value,
        "op": "SCMP_CMP_MASKED_EQ",
    }
    return {
        "names": [rule.syscall],
        **action,
        "args": [condition],
        "comment": rule.reason,
    }


def _load_pyseccomp() -> Any:
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as exc:
        raise SandboxUnavailable(
            f"libseccomp cannot be loaded ({exc}); install it (Debian: apt install"
            " libseccomp2) and the pyseccomp package"
        ) from exc

    return pyseccomp


def _known_syscalls(seccomp: Any) -> set[str]:
    """The names libseccomp knows; newer syscalls than it knows stay refused."""
    names = {*allowed_names(), *refused_names()}
    unknown = {
        n for n in names if seccomp.resolve_syscall(seccomp.Arch.NATIVE, n) == -1
    }
    if unknown:
        log.debug("seccomp_syscalls_unknown", names=sorted(unknown))

    return names - unknown


def kernel_supports_seccomp() -> bool:
    """Whether this kernel can filter syscalls (``Seccomp:`` in /proc/self/status)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return any(line.startswith("Seccomp:") for line in status)
    except OSError:
        return False
