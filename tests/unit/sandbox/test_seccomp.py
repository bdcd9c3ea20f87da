"""The syscall filter: what it refuses, what it lets through, and its two outputs.

The behaviour tests load a filter into a child Python process and make the calls
there, with arguments the kernel itself would reject, so that an allowed call fails
with the kernel's own error (EBADF, EFAULT, EINVAL...) and a filtered one with the
filter's (EPERM or ENOSYS).
"""

from __future__ import annotations

import errno
import json
import platform
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mcp_sandbox_proxy.sandbox import seccomp

REPO = Path(__file__).resolve().parents[3]

# Which filter the child loads: the libseccomp filter (as bubblewrap gets it), or
# the Docker profile turned into libseccomp rules the way runc does.
FILTER_FROM = {
    "bpf": "from mcp_sandbox_proxy.sandbox.seccomp import build_filter as make",
    "docker": "from tests.support.seccomp_profile import make",
}
# The control: the same probes with no filter at all.
NO_FILTER = "make = None"

PROBE = r"""
import ctypes, errno, json, os, sys
import pyseccomp
{import_filter}

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
numbers = {{n: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n) for n in {names}}}
null = os.open("/dev/null", os.O_RDWR)
read_end, write_end = os.pipe()
if make is not None:
    make().load()

def call(name, *args):
    result = libc.syscall(ctypes.c_long(numbers[name]), *map(ctypes.c_long, args))
    if result == 0 and name == "clone":
        os._exit(0)
    return "ok" if result >= 0 else errno.errorcode[ctypes.get_errno()]

results = {{label: call(name, *args) for label, (name, args) in {probes}.items()}}
pid = os.fork()
if pid == 0:
    os._exit(7)
results["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(results))
"""

TIOCSTI, TIOCLINUX, FIONREAD = 0x5412, 0x541C, 0x541B
HIGH_BIT = 1 << 32
INVALID = 0xFFFF_FFFF

# Each refused call, with arguments the kernel would reject if it ran the call.
REFUSED_PROBES = {
    "mount": ("mount", [0, 0, 0, 0, 0]),
    "umount2": ("umount2", [0, 0]),
    "pivot_root": ("pivot_root", [0, 0]),
    "chroot": ("chroot", [0]),
    "setns": ("setns", [-1, 0]),
    "clone into a user namespace": ("clone", [seccomp.CLONE_NEWUSER | 17, 0, 0, 0, 0]),
    "clone into a network namespace": (
        "clone",
        [seccomp.CLONE_NEWNET | 17, 0, 0, 0, 0],
    ),
    "ptrace": ("ptrace", [-1, 0, 0, 0]),
    "process_vm_readv": ("process_vm_readv", [0, 0, 0, 0, 0, 0]),
    "process_vm_writev": ("process_vm_writev", [0, 0, 0, 0, 0, 0]),
    "keyctl": ("keyctl", [-1, 0, 0, 0, 0]),
    "add_key": ("add_key", [0, 0, 0, 0, 0]),
    "request_key": ("request_key", [0, 0, 0, 0]),
    "bpf": ("bpf", [-1, 0, 0]),
    "perf_event_open": ("perf_event_open", [0, 0, 0, 0, 0]),
    "userfaultfd": ("userfaultfd", [INVALID]),
    "io_uring_setup": ("io_uring_setup", [0, 0]),
    "io_uring_enter": ("io_uring_enter", [-1, 0, 0, 0, 0, 0]),
    "kexec_load": ("kexec_load", [0, 0, 0, INVALID]),
    "init_module": ("init_module", [0, 0, 0]),
    "finit_module": ("finit_module", [-1, 0, 0]),
    "delete_module": ("delete_module", [0, 0]),
    "open_by_handle_at": ("open_by_handle_at", [-1, 0, 0]),
    "pidfd_getfd": ("pidfd_getfd", [-1, -1, 0]),
    # Last: where it is allowed, the probing process moves into a new namespace.
    "unshare a user namespace": ("unshare", [seccomp.CLONE_NEWUSER]),
}
TERMINAL_PROBES = {
    "TIOCSTI": ("ioctl", ["null", TIOCSTI, 0]),
    "TIOCSTI with high bits set": ("ioctl", ["null", TIOCSTI | HIGH_BIT, 0]),
    "TIOCLINUX": ("ioctl", ["null", TIOCLINUX, 0]),
}
ALLOWED_PROBES = {
    "other ioctls": ("ioctl", ["read_end", FIONREAD, "buffer"]),
    "setns is refused but close is not": ("close", [-1]),
    "clone3 falls back": ("clone3", [0, 0]),
}


def run_probes(import_filter: str) -> dict[str, object]:
    probes = {**TERMINAL_PROBES, **ALLOWED_PROBES, **REFUSED_PROBES}
    names = sorted({name for name, _ in probes.values()})
    text = repr(probes).replace("'null'", "null").replace("'read_end'", "read_end")
    text = text.replace("'buffer'", "ctypes.addressof(ctypes.c_int())")
    code = PROBE.format(import_filter=import_filter, names=names, probes=text)
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        timeout=60,
        check=True,
        env={"PYTHONPATH": str(REPO)},
    )
    return json.loads(done.stdout)


@pytest.fixture(scope="module", params=sorted(FILTER_FROM))
def results(request: pytest.FixtureRequest) -> dict[str, object]:
    return run_probes(FILTER_FROM[request.param])


def test_without_a_filter_the_kernel_answers_every_probe_itself() -> None:
    """Unfiltered, no probe gets EPERM: so an EPERM below comes from the filter."""
    unfiltered = run_probes(NO_FILTER)
    answers = {p: unfiltered[p] for p in (*REFUSED_PROBES, *TERMINAL_PROBES)}
    assert "EPERM" not in answers.values(), answers


@pytest.mark.parametrize("probe", sorted(REFUSED_PROBES))
def test_dangerous_syscalls_are_refused_with_eperm(
    results: dict[str, object], probe: str
) -> None:
    """Mount, namespace, tracing, keyring, BPF, io_uring and module calls: EPERM."""
    assert results[probe] == "EPERM"


@pytest.mark.parametrize("probe", sorted(TERMINAL_PROBES))
def test_terminal_injection_ioctls_are_refused(
    results: dict[str, object], probe: str
) -> None:
    """TIOCSTI and TIOCLINUX are refused, whatever the request's upper 32 bits."""
    assert results[probe] == "EPERM"


def test_other_calls_reach_the_kernel(results: dict[str, object]) -> None:
    """Other ioctls and ordinary calls run; clone3 says ENOSYS, so libc falls back
    to clone, and fork (a clone without namespace flags) works."""
    assert results["other ioctls"] == "ok"
    assert results["setns is refused but close is not"] == "EBADF"
    assert results["clone3 falls back"] == "ENOSYS"
    assert results["fork"] == 7


def test_every_named_syscall_is_known_to_libseccomp() -> None:
    """A misspelt name in the tables would silently stay refused: there is none."""
    import pyseccomp

    names = [*seccomp.allowed_names(), *seccomp.refused_names()]
    unknown = [n for n in names if pyseccomp.resolve_syscall(0, n) == -1]
    assert unknown == []


def test_no_syscall_is_both_allowed_and_refused() -> None:
    """The allow-list and the refusals do not overlap."""
    assert set(seccomp.allowed_names()).isdisjoint(seccomp.refused_names())
    conditional = {rule.syscall for rule in seccomp.ARGUMENT_RULES}
    assert conditional.isdisjoint(seccomp.refused_names())


def test_the_docker_profile_defaults_to_enosys_and_names_every_call() -> None:
    """The Docker profile refuses unknown calls with ENOSYS and lists every name."""
    profile = seccomp.docker_seccomp_profile()
    json.dumps(profile)
    listed = {name for rule in profile["syscalls"] for name in rule["names"]}
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == errno.ENOSYS
    assert listed == {*seccomp.allowed_names(), *seccomp.refused_names(), "clone"}


def test_the_bpf_program_is_whole_instructions() -> None:
    """The program bubblewrap reads is a non-empty array of 8-byte BPF steps."""
    program = seccomp.bpf_program()
    assert program and len(program) % 8 == 0


X32_PROBE = """
import ctypes
from mcp_sandbox_proxy.sandbox.seccomp import build_filter

build_filter().load()
ctypes.CDLL(None).syscall(ctypes.c_long(0x40000000 | 165), 0, 0, 0, 0, 0)
print("the x32 call returned")
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x32 exists on x86_64 only")
def test_calls_through_the_x32_abi_kill_the_process() -> None:
    """mount by its x32 number (a way around filters keyed on x86_64 numbers) is
    not refused but fatal: the filter kills the process."""
    done = subprocess.run(
        [sys.executable, "-c", X32_PROBE],
        capture_output=True,
        timeout=60,
        check=False,
        env={"PYTHONPATH": str(REPO)},
    )
    assert done.returncode == -signal.SIGSYS and b"returned" not in done.stdout
