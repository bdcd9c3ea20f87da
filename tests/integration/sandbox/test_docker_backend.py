"""Real servers in real containers: stdio over the attach sockets, hardening, errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import docker.errors
import pytest
from mcp.types import TextContent

from mcp_sandbox_proxy.exceptions import SandboxStartFailed, SandboxUnavailable
from mcp_sandbox_proxy.sandbox.docker import DockerBackend
from mcp_sandbox_proxy.sandbox.seccomp import docker_seccomp_profile
from mcp_sandbox_proxy.sandbox.spec import MIB, Limits, Mount, SandboxSpec
from tests.integration.sandbox.test_docker_engine import (
    IMAGE_PATH,
    NODE_IMAGE,
    docker_backend_fixture,  # noqa: F401
    docker_engine_fixture,  # noqa: F401
    instance_containers,
    python_spec,
)
from tests.support.sandbox_client import sandbox_session

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

# Every wait on a container in these tests ends well within this.
CONTAINER_TIMEOUT_S = 30.0

ECHO_LINES = """
import sys
for line in sys.stdin:
    sys.stdout.write("out " + line)
    sys.stdout.flush()
    sys.stderr.write("err " + line)
    sys.stderr.flush()
sys.stderr.write("stdin closed\\n")
"""


def text_of(result: Any) -> str:
    return "".join(c.text for c in result.content if isinstance(c, TextContent))


async def read_until(receive: Any, needle: bytes) -> bytes:
    """Read a stream until ``needle`` appears (or it ends), bounded in time."""
    seen = b""
    with anyio.fail_after(CONTAINER_TIMEOUT_S):
        while needle not in seen and (chunk := await receive()):
            seen += chunk

    return seen


async def test_the_time_server_answers_from_its_container(
    docker_backend: DockerBackend,
) -> None:
    """mcp-server-time, installed from PyPI into the image, answers a real call."""
    spec = python_spec("mcp-server-time", "--local-timezone", "UTC", name="time")
    process = await docker_backend.start(spec)

    async with sandbox_session(process) as session:
        tools = {tool.name for tool in (await session.list_tools()).tools}
        result = await session.call_tool("get_current_time", {"timezone": "UTC"})

    assert {"get_current_time", "convert_time"} <= tools
    assert json.loads(text_of(result))["timezone"] == "UTC"


async def test_the_everything_server_answers_from_its_container(
    docker_backend: DockerBackend,
) -> None:
    """@modelcontextprotocol/server-everything runs on node inside the node image."""
    spec = python_spec(
        "mcp-server-everything", "stdio", name="everything", image=NODE_IMAGE
    )
    process = await docker_backend.start(spec)

    async with sandbox_session(process) as session:
        echoed = await session.call_tool("echo", {"message": "from the container"})
        summed = await session.call_tool("get-sum", {"a": 2, "b": 40})
        environment = json.loads(text_of(await session.call_tool("get-env", {})))

    assert text_of(echoed) == "Echo: from the container"
    assert "42" in text_of(summed)
    assert environment["PATH"] == IMAGE_PATH
    assert set(environment) <= {"PATH", "HOSTNAME", "HOME"}


async def test_stdout_and_stderr_arrive_apart_and_closing_stdin_ends_the_server(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """Each stream has its own socket; closing stdin is seen as end of input, the
    exit status comes back, and the exited container is removed."""
    process = await docker_backend.start(python_spec("python3", "-c", ECHO_LINES))

    await process.send(b"one\ntwo\n")
    out = await read_until(process.receive, b"out two\n")
    err = await read_until(process.receive_stderr, b"err two\n")
    await process.close_stdin()
    err += await read_until(process.receive_stderr, b"stdin closed\n")
    with anyio.fail_after(CONTAINER_TIMEOUT_S):
        status = await process.wait()

    process.close()
    assert out == b"out one\nout two\n"
    assert err == b"err one\nerr two\nstdin closed\n"
    assert status == 0 and process.returncode == 0
    assert instance_containers(docker_engine, docker_backend) == []


async def test_stop_ends_a_server_that_ignores_stdin_and_sigterm(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """stdin closed, SIGTERM, then SIGKILL: the server is gone, its container too."""
    stubborn = (
        "import signal, sys, threading\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "threading.Event().wait()\n"
    )
    process = await docker_backend.start(python_spec("python3", "-c", stubborn))
    await read_until(process.receive, b"ready\n")

    with anyio.fail_after(CONTAINER_TIMEOUT_S):
        status = await process.stop()

    process.close()
    assert status == 137
    assert instance_containers(docker_engine, docker_backend) == []


async def test_the_created_container_carries_every_hardening_option(
    docker_backend: DockerBackend, docker_engine: Any, tmp_path: Path
) -> None:
    """The engine's own view of the container holds each option of the issue."""
    limits = Limits(memory_bytes=200 * MIB, pids=50, cpu_cores=0.5, open_files=77)
    spec = python_spec(
        "python3",
        "-c",
        "import sys; sys.stdin.read()",
        env={"PATH": IMAGE_PATH, "ONLY_THIS": "1"},
        limits=limits,
        mounts=(Mount(tmp_path, Path("/granted")),),
    )
    process = await docker_backend.start(spec)
    inspected = docker_engine.inspect_container(process.container_id)
    await process.stop()
    process.close()

    config, host = inspected["Config"], inspected["HostConfig"]
    ulimits = {u["Name"]: u["Hard"] for u in host["Ulimits"]}
    seccomp = [o for o in host["SecurityOpt"] if o.startswith("seccomp=")]
    rules = json.loads(seccomp[0].removeprefix("seccomp="))["syscalls"]

    assert host["NetworkMode"] == "none" and config["NetworkDisabled"] is True
    assert config["User"] == "65534:65534"
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"] and not host["Privileged"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert (
        rules[: len(docker_seccomp_profile()["syscalls"])]
        == (docker_seccomp_profile()["syscalls"])
    )
    assert host["Memory"] == host["MemorySwap"] == 200 * MIB
    assert host["NanoCpus"] == 500_000_000 and host["PidsLimit"] == 50
    assert ulimits["nofile"] == 77 and ulimits["nproc"] == 50
    assert host["Tmpfs"] == {"/tmp": f"rw,noexec,nosuid,nodev,size={64 * MIB}"}
    assert host["Init"] is True
    assert config["Env"] == [f"PATH={IMAGE_PATH}", "ONLY_THIS=1"]
    assert [(m["Source"], m["Destination"], m["RW"]) for m in inspected["Mounts"]] == [
        (str(tmp_path), "/granted", False)
    ]
    assert host["Binds"] is None and host["LogConfig"]["Type"] == "none"
    assert config["Labels"]["io.mcp-sandbox-proxy.instance"] == docker_backend.instance


async def test_one_container_serves_every_call_of_an_instance(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """Many calls go to the one long-lived container; none starts another."""
    process = await docker_backend.start(python_spec("mcp-server-time", name="time"))

    async with sandbox_session(process) as session:
        for _ in range(20):
            await session.call_tool("get_current_time", {"timezone": "UTC"})

        running = instance_containers(docker_engine, docker_backend)

    assert running == [process.container_id]


async def test_cpu_time_and_peak_memory_are_measured_at_stop(
    docker_backend: DockerBackend,
) -> None:
    """The engine's stats, taken before the container goes, give usage figures."""
    process = await docker_backend.start(python_spec("mcp-server-time", name="time"))
    async with sandbox_session(process) as session:
        await session.call_tool("get_current_time", {"timezone": "UTC"})

    usage = process.resource_usage()

    assert usage.cpu_seconds is not None and usage.cpu_seconds > 0
    assert usage.peak_memory_bytes is not None and usage.peak_memory_bytes > MIB


async def test_a_missing_image_is_reported_and_nothing_is_pulled(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """An image the engine lacks stops the start with a clear error; no pull."""
    missing = "mcp-sandbox-proxy-test/not-built:never"

    with pytest.raises(SandboxUnavailable, match="is not in the Docker engine"):
        await docker_backend.start(python_spec("python3", image=missing))

    with pytest.raises(docker.errors.ImageNotFound):
        docker_engine.inspect_image(missing)


async def test_an_unknown_runtime_is_refused_with_the_ones_the_engine_knows(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """A runtime the engine does not know: no container, and the known ones listed."""
    spec = python_spec("python3", runtime="no-such-runtime")

    with pytest.raises(SandboxUnavailable) as caught:
        await docker_backend.start(spec)

    assert "'no-such-runtime'" in str(caught.value) and "runc" in str(caught.value)
    assert instance_containers(docker_engine, docker_backend) == []


async def test_an_unreachable_engine_is_reported_as_unavailable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No engine at DOCKER_HOST: the server does not start, and the error says why."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'nothing.sock'}")
    backend = DockerBackend()

    with pytest.raises(SandboxUnavailable, match=r"Docker engine .* is not reachable"):
        await backend.start(python_spec("python3"))

    await backend.aclose()


async def start_failure_report(backend: DockerBackend, spec: SandboxSpec) -> str:
    """How a server that cannot run was reported.

    ``start`` reports a container already gone when it checks; one that dies a
    moment later is reported by its exit status and stderr. Which one a failure
    takes depends on how fast the server dies, so both are accepted, and both
    must carry the status and the stderr.
    """
    try:
        process = await backend.start(spec)
    except SandboxStartFailed as exc:
        return str(exc)

    stderr = b""
    with anyio.fail_after(CONTAINER_TIMEOUT_S):
        while chunk := await process.receive_stderr():
            stderr += chunk

        status = await process.wait()

    process.close()
    return f"exited with status {status} as it started: {stderr.decode()}"


async def test_a_command_missing_from_the_image_is_reported_with_the_reason(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """The init cannot exec the command: its complaint and status are reported,
    and no container is left."""
    spec = python_spec("/usr/bin/no-such-program")

    report = await start_failure_report(docker_backend, spec)

    assert "exited with status 127" in report, report
    assert "/usr/bin/no-such-program" in report and "No such file" in report
    assert instance_containers(docker_engine, docker_backend) == []


async def test_a_server_that_dies_at_start_is_reported_with_its_stderr(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """A server that exits at once is reported with its status and stderr tail."""
    spec = python_spec("python3", "-c", "import sys; sys.exit('no config: giving up')")

    report = await start_failure_report(docker_backend, spec)

    assert "exited with status 1" in report and "no config: giving up" in report
    assert instance_containers(docker_engine, docker_backend) == []
