"""The container configuration the docker backend builds from a sandbox spec."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import pytest

from mcp_sandbox_proxy.exceptions import SandboxStartFailed
from mcp_sandbox_proxy.sandbox._docker_options import (
    DEFAULT_MEMORY_BYTES,
    DEFAULT_PIDS,
    container_config,
    container_name,
)
from mcp_sandbox_proxy.sandbox.egress_bridge import SANDBOX_EGRESS_SOCKET
from mcp_sandbox_proxy.sandbox.seccomp import docker_seccomp_profile
from mcp_sandbox_proxy.sandbox.spec import (
    MIB,
    Limits,
    Mount,
    NetworkSpec,
    SandboxSpec,
)

IMAGE = "example/server:1"


def spec(**changes: Any) -> SandboxSpec:
    fields: dict[str, Any] = {
        "name": "time",
        "command": "mcp-server-time",
        "args": ("--local-timezone", "UTC"),
        "env": {"PATH": "/usr/bin", "TZ": "UTC"},
        "image": IMAGE,
        **changes,
    }
    return SandboxSpec(**fields)


def build(
    sandbox: SandboxSpec, profile: dict[str, Any] | None = None
) -> dict[str, Any]:
    return container_config(
        sandbox,
        labels={"io.mcp-sandbox-proxy.instance": "i-1"},
        seccomp_profile=profile if profile is not None else docker_seccomp_profile(),
    )


def seccomp_of(config: dict[str, Any]) -> dict[str, Any]:
    options: list[str] = config["HostConfig"]["SecurityOpt"]
    (profile,) = [
        o.removeprefix("seccomp=") for o in options if o.startswith("seccomp=")
    ]
    return json.loads(profile)


def test_the_command_replaces_the_image_entrypoint_with_the_spec_args() -> None:
    """The image's own entrypoint never runs: the spec's command and args do."""
    config = build(spec())

    assert config["Image"] == IMAGE
    assert config["Entrypoint"] == ["mcp-server-time"]
    assert config["Cmd"] == ["--local-timezone", "UTC"]


def test_the_server_runs_as_nobody_with_exactly_the_spec_environment() -> None:
    """User 65534:65534, and the environment is the spec's and nothing more."""
    config = build(spec())

    assert config["User"] == "65534:65534"
    assert config["Env"] == ["PATH=/usr/bin", "TZ=UTC"]


def test_every_hardening_option_is_set() -> None:
    """No network, read-only root, no capabilities, no-new-privileges, an init,
    private IPC and cgroup namespaces, nothing logged by the engine."""
    host = build(spec())["HostConfig"]

    assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and host["Privileged"] is False
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Init"] is True
    assert host["IpcMode"] == "private" and host["CgroupnsMode"] == "private"
    assert host["LogConfig"]["Type"] == "none"
    assert host["RestartPolicy"] == {"Name": "no"}


def test_tmp_is_a_bounded_tmpfs_that_cannot_hold_programs() -> None:
    """/tmp is noexec, nosuid, nodev and as large as the spec allows."""
    host = build(spec(limits=Limits(tmpfs_bytes=8 * MIB)))["HostConfig"]

    assert host["Tmpfs"] == {"/tmp": f"rw,noexec,nosuid,nodev,size={8 * MIB}"}


def test_limits_become_memory_without_swap_cpu_pids_and_ulimits() -> None:
    """Memory with swap equal to it, CPU quota, pids, open files, processes,
    file size, CPU seconds, and no core dumps."""
    limits = Limits(
        memory_bytes=256 * MIB,
        pids=64,
        cpu_cores=0.5,
        cpu_seconds=30,
        open_files=100,
        file_size_bytes=MIB,
    )
    host = build(spec(limits=limits))["HostConfig"]
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]}

    assert host["Memory"] == host["MemorySwap"] == 256 * MIB
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 64
    assert ulimits == {
        "nofile": (100, 100),
        "nproc": (64, 64),
        "fsize": (MIB, MIB),
        "cpu": (30, 30),
        "core": (0, 0),
    }


def test_limits_left_to_the_backend_fall_back_to_bounded_defaults() -> None:
    """A ``None`` limit is the backend's default, never unlimited."""
    limits = Limits(memory_bytes=None, pids=None, cpu_cores=None, open_files=None)
    host = build(spec(limits=limits))["HostConfig"]

    assert host["Memory"] == host["MemorySwap"] == DEFAULT_MEMORY_BYTES
    assert host["PidsLimit"] == DEFAULT_PIDS and host["NanoCpus"] == 1_000_000_000


def test_granted_folders_are_the_only_binds_read_only_unless_writable(
    tmp_path: Path,
) -> None:
    """Each spec mount is a private bind with its own mode; nothing else is bound."""
    mounts = (
        Mount(tmp_path / "ro", Path("/data/ro")),
        Mount(tmp_path / "rw", Path("/data/rw"), writable=True),
    )
    host = build(spec(mounts=mounts))["HostConfig"]

    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in host["Mounts"]] == [
        (str(tmp_path / "ro"), "/data/ro", True),
        (str(tmp_path / "rw"), "/data/rw", False),
    ]
    assert {m["BindOptions"]["Propagation"] for m in host["Mounts"]} == {"rprivate"}
    assert "Binds" not in host


def test_egress_mode_binds_only_the_egress_socket(tmp_path: Path) -> None:
    """Under egress the network stays none; the filter's socket is bound read-only
    at the fixed path, and the server starts behind the in-container bridge."""
    socket = tmp_path / "egress.sock"
    network = NetworkSpec(mode="egress", egress_socket=socket)
    config = build(spec(network=network))
    host = config["HostConfig"]

    assert host["NetworkMode"] == "none"
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in host["Mounts"]] == [
        (str(socket), SANDBOX_EGRESS_SOCKET, True)
    ]
    assert f"MCP_EGRESS_SOCKET={SANDBOX_EGRESS_SOCKET}" in config["Env"]
    assert any(
        item.startswith("HTTPS_PROXY=http://127.0.0.1:") for item in config["Env"]
    )
    assert config["Entrypoint"] != [spec().command]


def test_the_runtime_is_set_only_when_the_spec_names_one() -> None:
    """No runtime means the engine's default; a named one is passed as named."""
    assert "Runtime" not in build(spec())["HostConfig"]
    assert build(spec(runtime="runsc"))["HostConfig"]["Runtime"] == "runsc"


def test_the_seccomp_profile_is_the_shared_allow_list() -> None:
    """The profile in the config is the seccomp module's, rule for rule."""
    shared = docker_seccomp_profile()
    profile = seccomp_of(build(spec(), shared))

    assert profile["defaultAction"] == shared["defaultAction"]
    assert profile["syscalls"][: len(shared["syscalls"])] == shared["syscalls"]


def test_clone3_keeps_enosys_where_the_engine_drops_the_default_errno() -> None:
    """clone3 gets an ENOSYS rule of its own, so glibc falls back to clone."""
    profile = seccomp_of(build(spec()))

    assert {
        "names": ["clone3"],
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": errno.ENOSYS,
    } in profile["syscalls"]


def test_a_profile_that_names_clone3_is_left_alone() -> None:
    """A profile with its own clone3 rule gets no second one."""
    own = {"names": ["clone3"], "action": "SCMP_ACT_ALLOW"}
    base = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.ENOSYS}

    profile = seccomp_of(build(spec(), {**base, "syscalls": [own]}))

    assert profile["syscalls"] == [own]


def test_stdin_is_attached_open_and_closed_with_the_proxy() -> None:
    """The proxy holds stdin; when it lets go, the server's stdin closes."""
    config = build(spec())

    assert config["OpenStdin"] and config["StdinOnce"] and config["AttachStdin"]
    assert config["AttachStdout"] and config["AttachStderr"] and not config["Tty"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"image": None}, "needs an image"),
        ({"network": NetworkSpec(mode="host")}, "process backend only"),
        ({"network": NetworkSpec(mode="egress")}, "needs its socket"),
        ({"mounts": (Mount(Path("data"), Path("/data")),)}, "'data' is relative"),
        ({"env": {"A=B": "c"}}, "invalid environment name 'A=B'"),
    ],
)
def test_a_spec_the_backend_cannot_honour_is_refused_by_name(
    changes: dict[str, Any], message: str
) -> None:
    """The error names the server and what is wrong with its spec."""
    with pytest.raises(SandboxStartFailed, match=f"server 'time': .*{message}"):
        build(spec(**changes))


def test_container_names_are_safe_for_the_engine_and_name_the_server() -> None:
    """Characters Docker refuses are replaced; the server stays recognisable."""
    assert container_name("git/read only", "ab12") == "mcp-sandbox-git-read-only-ab12"
    assert container_name("...", "ab12") == "mcp-sandbox-server-ab12"
