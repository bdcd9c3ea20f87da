"""Choosing the OCI runtime by spec, proven with crun as the alternative to runc.

The test engine has crun registered as a runtime named ``crun``
(scripts/docker-up.sh). gVisor's ``runsc`` is chosen the same way once it is
registered with the engine; no test here needs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from mcp_sandbox_proxy.sandbox._docker_process import DockerProcess
from mcp_sandbox_proxy.sandbox.docker import DockerBackend
from tests.integration.sandbox.test_docker_engine import (
    docker_backend_fixture,  # noqa: F401
    docker_engine_fixture,  # noqa: F401
    python_spec,
)
from tests.support.sandbox_client import sandbox_session

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

# The engine's default exec root, where containerd keeps each task's shim options
# (which runtime binary it runs) under this namespace.
TASKS = Path("/run/docker/containerd/daemon/io.containerd.runtime.v2.task/moby")


def shim_options(container_id: str) -> dict[str, Any]:
    """What containerd's shim was told for this container: runtime binary, root."""
    return json.loads((TASKS / container_id / "options.json").read_text())


def runtime_state(binary: str, root: str, container_id: str) -> dict[str, Any] | None:
    """The container as ``binary`` itself reports it; ``None`` if it knows none."""
    program = shutil.which(binary)
    assert program is not None, f"{binary} is not installed"
    done = subprocess.run(
        [program, "--root", f"{root}/moby", "state", container_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return json.loads(done.stdout) if done.returncode == 0 else None


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


async def start_time_server(backend: DockerBackend, **changes: Any) -> DockerProcess:
    spec = python_spec("mcp-server-time", name="time", **changes)
    return await backend.start(spec)


async def test_a_spec_naming_crun_runs_its_server_under_crun(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """The engine records crun, the shim runs the crun binary, crun itself knows
    the running container (and runc does not), and the server answers calls."""
    process = await start_time_server(docker_backend, runtime="crun")
    async with sandbox_session(process) as session:
        result = await session.call_tool("get_current_time", {"timezone": "UTC"})
        inspected = docker_engine.inspect_container(process.container_id)
        options = shim_options(process.container_id)
        by_crun = runtime_state("crun", options["root"], process.container_id)
        by_runc = runtime_state("runc", options["root"], process.container_id)
        init = cmdline(by_crun["pid"]) if by_crun else ""

    assert not result.is_error
    assert inspected["HostConfig"]["Runtime"] == "crun"
    assert Path(options["binary_name"]).name == "crun"
    assert by_crun is not None and by_crun["status"] == "running"
    assert by_crun["pid"] == inspected["State"]["Pid"]
    assert "docker-init" in init and "mcp-server-time" in init
    assert by_runc is None


async def test_without_a_runtime_the_engine_default_runc_is_used(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """The control: no runtime in the spec, and runc (not crun) runs the server."""
    process = await start_time_server(docker_backend)
    async with sandbox_session(process) as session:
        await session.call_tool("get_current_time", {"timezone": "UTC"})
        options = shim_options(process.container_id)
        by_crun = runtime_state("crun", options["root"], process.container_id)
        by_runc = runtime_state("runc", options["root"], process.container_id)

    assert Path(options["binary_name"]).name == "runc"
    assert by_runc is not None and by_runc["status"] == "running"
    assert by_crun is None
