"""The Docker engine the docker backend runs on, and the locally built test images.

The fixtures here are shared by every ``test_docker_*`` module, which imports them
by their function names (``docker_engine_fixture``...). Once per session
they make the engine answer (``scripts/docker-up.sh``: installs Debian's engine if
missing, starts ``dockerd`` with ``crun`` registered) and build the test images
without pulling anything (``scripts/build-test-images.sh``). Without an engine
these tests fail; ``MCP_SANDBOX_PROXY_ALLOW_SKIP_DOCKER=1`` turns that into skips.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import docker
import pytest

from mcp_sandbox_proxy.sandbox.docker import DockerBackend
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

REPO = Path(__file__).resolve().parents[3]
PYTHON_IMAGE = "mcp-sandbox-proxy-test/python:latest"
NODE_IMAGE = "mcp-sandbox-proxy-test/node:latest"
CONTENT_HASH_LABEL = "io.mcp-sandbox-proxy.test-image.content-hash"
# Where the test images find programs: their /usr/local holds the servers.
IMAGE_PATH = "/usr/local/bin:/usr/bin:/bin"
# Where the repository's test servers appear inside a container.
SERVERS_IN_CONTAINER = Path("/srv/test-servers")
ALLOW_SKIP_ENV = "MCP_SANDBOX_PROXY_ALLOW_SKIP_DOCKER"
# Starting the engine takes seconds (installing it, a minute or two); building both
# images from nothing takes under a minute on two cores.
SETUP_TIMEOUT_S = {"docker-up.sh": 300, "build-test-images.sh": 600}


def engine_unavailable(reason: str) -> None:
    """Fail, or skip where the environment explicitly allows it."""
    if os.environ.get(ALLOW_SKIP_ENV) == "1":
        pytest.skip(reason)

    pytest.fail(f"{reason}\n(set {ALLOW_SKIP_ENV}=1 to skip the Docker tests)")


@pytest.fixture(scope="session", name="docker_engine")
def docker_engine_fixture() -> Iterator[Any]:
    """A client of the running engine, once the test images are built."""
    for script, timeout_s in SETUP_TIMEOUT_S.items():
        done = subprocess.run(
            ["bash", str(REPO / "scripts" / script)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if done.returncode != 0:
            engine_unavailable(f"scripts/{script} failed:\n{done.stderr[-3000:]}")

    client = docker.APIClient(version="auto")
    yield client
    client.close()


@pytest.fixture(name="docker_backend")
async def docker_backend_fixture(docker_engine: Any) -> AsyncIterator[DockerBackend]:
    """A backend of its own per test; its containers are removed afterwards."""
    backend = DockerBackend()
    yield backend
    await backend.aclose()


def python_spec(command: str, *args: str, **changes: Any) -> SandboxSpec:
    """A server in the python test image (mcp SDK and mcp-server-time inside)."""
    spec = SandboxSpec(
        name="py",
        command=command,
        args=args,
        env={"PATH": IMAGE_PATH},
        image=PYTHON_IMAGE,
    )
    return replace(spec, **changes)


def instance_containers(engine: Any, backend: DockerBackend) -> list[str]:
    """Ids of every container, running or not, labelled with ``backend``'s instance."""
    selector = f"io.mcp-sandbox-proxy.instance={backend.instance}"
    found = engine.containers(all=True, quiet=True, filters={"label": selector})
    return [c["Id"] for c in found]


def test_the_engine_runs_with_crun_registered(docker_engine: Any) -> None:
    """The test engine answers and knows crun besides its default runtime."""
    info = docker_engine.info()

    assert "crun" in info["Runtimes"]
    assert any("name=seccomp" in option for option in info["SecurityOptions"])


@pytest.mark.parametrize("image", [PYTHON_IMAGE, NODE_IMAGE])
def test_the_test_images_were_built_here_not_pulled(
    docker_engine: Any, image: str
) -> None:
    """Each image carries its content hash and no registry digest."""
    inspected = docker_engine.inspect_image(image)

    assert inspected["Config"]["Labels"][CONTENT_HASH_LABEL]
    assert inspected["RepoDigests"] == []


def test_doctor_checks_report_the_engine_seccomp_and_runtimes(
    docker_engine: Any,
) -> None:
    """The backend's checks see the engine, its seccomp support and crun."""
    checks = {check.name: check for check in DockerBackend().checks()}

    assert checks["docker engine"].ok and "API" in checks["docker engine"].detail
    assert checks["docker seccomp"].ok
    assert "crun" in checks["docker runtimes"].detail
    assert not checks["docker runtime runsc (gVisor)"].required


def test_doctor_checks_fail_closed_when_no_engine_answers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With the engine's socket missing, the one check says so and fails."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-engine.sock'}")

    (check,) = DockerBackend().checks()

    assert not check.ok and check.required
    assert "not reachable" in check.detail and "no-engine.sock" in check.detail


def test_the_python_image_has_the_mcp_sdk_and_the_time_server(
    docker_engine: Any,
) -> None:
    """The image's python imports the SDK the test servers use, and the time server."""
    probe = "import mcp.server.mcpserver, mcp_server_time; print('ok')"
    container = docker_engine.create_container(
        PYTHON_IMAGE,
        ["python3", "-c", probe],
        host_config=docker_engine.create_host_config(network_mode="none"),
    )
    try:
        docker_engine.start(container)
        status = docker_engine.wait(container, timeout=60)["StatusCode"]
        output = docker_engine.logs(container).decode()
    finally:
        docker_engine.remove_container(container, force=True)

    assert (status, output.strip()) == (0, "ok"), output
