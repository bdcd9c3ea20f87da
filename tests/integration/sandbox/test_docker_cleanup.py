"""No container outlives its proxy: removal at close, and after a crash at restart."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from typing import Any

import anyio
import docker.errors
import pytest

from mcp_sandbox_proxy.sandbox._docker_owner import (
    HOST_LABEL,
    STARTED_LABEL,
    current_owner,
)
from mcp_sandbox_proxy.sandbox.docker import DockerBackend
from tests.integration.sandbox.test_docker_engine import (
    PYTHON_IMAGE,
    REPO,
    docker_backend_fixture,  # noqa: F401
    docker_engine_fixture,  # noqa: F401
    instance_containers,
    python_spec,
)

pytestmark = [pytest.mark.docker, pytest.mark.anyio]

# A stand-in proxy starts its container well within this.
OWNER_START_TIMEOUT_S = 60.0

# A server that outlives its stdin and ignores SIGTERM: the worst orphan.
STUBBORN = """
import signal, threading
signal.signal(signal.SIGTERM, signal.SIG_IGN)
threading.Event().wait()
"""

READ_STDIN = "import sys; sys.stdin.read()"

# A proxy stand-in: starts the stubborn server, says which container, then idles
# until it is killed.
OWNER = f"""
import anyio
from mcp_sandbox_proxy.sandbox.docker import DockerBackend
from tests.integration.sandbox.test_docker_engine import python_spec

async def main():
    process = await DockerBackend().start(python_spec("python3", "-c", {STUBBORN!r}))
    print("container", process.container_id, flush=True)
    await anyio.sleep_forever()

anyio.run(main)
"""


def exists(engine: Any, container_id: str) -> bool:
    try:
        engine.inspect_container(container_id)
    except docker.errors.NotFound:
        return False

    return True


async def container_of_killed_owner() -> str:
    """Run a stand-in proxy, read its container's id, then SIGKILL it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = await anyio.open_process(
        [sys.executable, "-c", OWNER], env=env, stderr=subprocess.DEVNULL
    )
    assert owner.stdout is not None
    output = b""
    with anyio.fail_after(OWNER_START_TIMEOUT_S):
        while not (found := re.search(rb"container ([0-9a-f]{64})\n", output)):
            output += await owner.stdout.receive()

    owner.send_signal(signal.SIGKILL)
    with anyio.fail_after(OWNER_START_TIMEOUT_S):
        await owner.wait()

    await owner.aclose()
    return found.group(1).decode()


async def test_after_the_owner_is_sigkilled_a_new_start_leaves_no_container(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """The killed proxy's container survives it; the next proxy's first start
    removes it, and leaves the containers of a live proxy alone."""
    live = await docker_backend.start(python_spec("python3", "-c", STUBBORN))
    orphan = await container_of_killed_owner()
    assert docker_engine.inspect_container(orphan)["State"]["Running"]

    restarted = DockerBackend()
    process = await restarted.start(python_spec("python3", "-c", STUBBORN))
    orphan_left = exists(docker_engine, orphan)
    await restarted.aclose()

    assert not orphan_left
    assert exists(docker_engine, live.container_id)
    assert not exists(docker_engine, process.container_id)


async def test_close_removes_every_container_of_the_instance(
    docker_engine: Any,
) -> None:
    """Running or exited, each container the backend made is gone after aclose."""
    backend = DockerBackend()
    running = await backend.start(python_spec("python3", "-c", STUBBORN))
    quitter = await backend.start(python_spec("python3", "-c", READ_STDIN))
    await quitter.close_stdin()
    with anyio.fail_after(OWNER_START_TIMEOUT_S):
        while await quitter.receive():
            pass

    made = {running.container_id, quitter.container_id}
    assert set(instance_containers(docker_engine, backend)) == made
    await backend.aclose()

    assert instance_containers(docker_engine, backend) == []
    assert not any(exists(docker_engine, container) for container in made)


def labelled_container(engine: Any, labels: dict[str, str]) -> str:
    """A created (not started) container carrying ``labels``."""
    created = engine.create_container(
        PYTHON_IMAGE,
        ["python3"],
        labels={"io.mcp-sandbox-proxy.instance": "planted", **labels},
        host_config=engine.create_host_config(network_mode="none"),
    )
    return created["Id"]


async def test_stale_removal_takes_dead_owners_only(
    docker_backend: DockerBackend, docker_engine: Any
) -> None:
    """A container of a dead owner on this host goes; one owned by a process on
    another host, and one of this very process, stay."""
    await docker_backend.remove_stale()
    me = current_owner().labels()
    planted = {
        "dead": labelled_container(docker_engine, {**me, STARTED_LABEL: "1"}),
        "foreign": labelled_container(docker_engine, {**me, HOST_LABEL: "far"}),
        "mine": labelled_container(docker_engine, me),
    }
    try:
        removed = await docker_backend.remove_stale()
        left = {name: exists(docker_engine, c) for name, c in planted.items()}
    finally:
        for container in planted.values():
            with contextlib.suppress(docker.errors.NotFound):
                docker_engine.remove_container(container, force=True)

    assert removed >= 1
    assert left == {"dead": False, "foreign": True, "mine": True}
