"""The ``docker`` backend: each server in a hardened, long-lived container.

A server instance is one container, started from the image its spec names and kept
for the life of the proxy (the pool decides how many; never one per call). The
confinement is ``container_config``: no network, an unprivileged user, a read-only
root, no capabilities, no-new-privileges, the shared seccomp allow-list, memory
(no swap), CPU, pids and ulimit bounds, a small noexec ``/tmp``, an init that
reaps zombies, and only the spec's environment and mounts.

Stdio goes over the engine's attach sockets (``_docker_process``), with no
``docker`` CLI in the path. Containers are labelled with the proxy instance and the
owning process (``_docker_owner``); the backend removes its own at ``aclose`` and,
on first use, those of proxies that died without cleaning up.

Runtimes: a spec may name an OCI runtime registered with the engine, e.g. ``crun``
or ``runsc`` (gVisor): ``dockerd --add-runtime runsc=/usr/local/bin/runsc``, or a
``"runtimes"`` entry in ``daemon.json``. A runtime the engine does not know stops
the server from starting, with an error that lists the ones it does know.
"""

from __future__ import annotations

import secrets
from typing import Any

import anyio
import docker.errors
import structlog

from mcp_sandbox_proxy.exceptions import SandboxStartFailed, SandboxUnavailable
from mcp_sandbox_proxy.sandbox import _docker_engine as engine_calls
from mcp_sandbox_proxy.sandbox._docker_engine import Engine, connect, explain
from mcp_sandbox_proxy.sandbox._docker_frames import STDERR, STDOUT
from mcp_sandbox_proxy.sandbox._docker_options import container_config, container_name
from mcp_sandbox_proxy.sandbox._docker_owner import (
    INSTANCE_LABEL,
    SERVER_LABEL,
    Owner,
    current_owner,
)
from mcp_sandbox_proxy.sandbox._docker_process import (
    AttachedStream,
    DockerProcess,
    attach,
)
from mcp_sandbox_proxy.sandbox.backend import Backend, BackendCheck
from mcp_sandbox_proxy.sandbox.seccomp import docker_seccomp_profile
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

log = structlog.get_logger(__name__)

# A server that died while starting has this long to finish writing stderr...
START_STDERR_DRAIN_S = 1.0
# ...of which the end is quoted in the error.
START_STDERR_TAIL_BYTES = 2000


class DockerBackend(Backend):
    """Runs each server in a container of its own image, confined and labelled."""

    name = "docker"

    def __init__(self, *, instance: str | None = None) -> None:
        self.owner = current_owner()
        self.instance = instance or f"{self.owner.pid}-{secrets.token_hex(4)}"
        self._engine: Engine | None = None
        self._runtimes: frozenset[str] = frozenset()
        self._seccomp: dict[str, Any] | None = None
        self._connect_lock = anyio.Lock()
        self._containers: set[str] = set()

    async def start(self, spec: SandboxSpec) -> DockerProcess:
        engine = await self._connected()
        self._check_runtime(spec)
        config = container_config(
            spec, labels=self._labels(spec), seccomp_profile=self._seccomp_profile()
        )
        name = container_name(spec.name, secrets.token_hex(4))
        container_id = await self._create(engine, spec, config, name)
        try:
            process = await self._attach_and_start(engine, spec, container_id, name)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._discard(engine, container_id)

            raise

        log.info(
            "docker_sandbox_started",
            server=spec.name,
            container=name,
            image=spec.image,
            runtime=spec.runtime or "default",
        )
        return process

    async def remove_stale(self) -> int:
        """Remove containers of proxies that died; return how many were removed."""
        return await self._remove_stale(await self._connected())

    async def aclose(self) -> None:
        """Remove every container of this proxy instance and let go of the engine."""
        engine = self._engine
        if engine is None:
            return

        ids = set(self._containers)
        with anyio.CancelScope(shield=True):
            ids.update(await self._instance_containers(engine))
            async with anyio.create_task_group() as group:
                for container_id in ids:
                    group.start_soon(self._discard, engine, container_id)

            engine.close()
            self._engine = None

        if ids:
            log.info(
                "docker_containers_removed", instance=self.instance, count=len(ids)
            )

    def checks(self) -> list[BackendCheck]:
        try:
            engine = connect()
        except SandboxUnavailable as exc:
            return [BackendCheck("docker engine", False, str(exc))]

        try:
            return engine_checks(engine.version(), engine.info())
        except (docker.errors.APIError, SandboxUnavailable) as exc:
            return [BackendCheck("docker engine", False, f"engine error: {exc}")]
        finally:
            engine.close()

    async def _connected(self) -> Engine:
        async with self._connect_lock:
            if self._engine is None:
                engine = await anyio.to_thread.run_sync(connect)
                info = await engine_calls.call(engine.info)
                self._runtimes = frozenset(info.get("Runtimes") or {})
                self._engine = engine
                await self._remove_stale(engine)

            return self._engine

    def _seccomp_profile(self) -> dict[str, Any]:
        if self._seccomp is None:
            self._seccomp = docker_seccomp_profile()

        return self._seccomp

    def _labels(self, spec: SandboxSpec) -> dict[str, str]:
        return {
            **spec.labels,
            INSTANCE_LABEL: self.instance,
            SERVER_LABEL: spec.name,
            **self.owner.labels(),
        }

    def _check_runtime(self, spec: SandboxSpec) -> None:
        if spec.runtime and spec.runtime not in self._runtimes:
            known = ", ".join(sorted(self._runtimes))
            raise SandboxUnavailable(
                f"server {spec.name!r} asks for runtime {spec.runtime!r}, which the"
                f" Docker engine does not know (it knows: {known}); register it with"
                f" dockerd --add-runtime {spec.runtime}=<path>"
            )

    async def _create(
        self, engine: Engine, spec: SandboxSpec, config: dict[str, Any], name: str
    ) -> str:
        where = f"server {spec.name!r}"
        try:
            created = await engine_calls.call(
                engine.create_container_from_config, config, name
            )
        except docker.errors.ImageNotFound as exc:
            raise SandboxUnavailable(
                f"{where}: image {spec.image!r} is not in the Docker engine; build or"
                " load it first (the proxy never pulls images)"
            ) from exc
        except docker.errors.APIError as exc:
            error = SandboxStartFailed
            if "unknown runtime" in explain(exc).lower():
                error = SandboxUnavailable

            raise error(
                f"{where}: the Docker engine refused its container: {explain(exc)}"
            ) from exc

        container_id: str = created["Id"]
        self._containers.add(container_id)
        return container_id

    async def _attach_and_start(
        self, engine: Engine, spec: SandboxSpec, container_id: str, name: str
    ) -> DockerProcess:
        stdio = await _attach(engine, spec, container_id, STDOUT)
        try:
            stderr = await _attach(engine, spec, container_id, STDERR)
        except BaseException:
            stdio.close()
            raise

        process = DockerProcess(
            engine,
            container_id=container_id,
            name=name,
            stdio=stdio,
            stderr=stderr,
            on_removed=self._containers.discard,
        )
        try:
            await self._start_container(engine, spec, process)
        except BaseException:
            process.close()
            raise

        return process

    async def _start_container(
        self, engine: Engine, spec: SandboxSpec, process: DockerProcess
    ) -> None:
        where = f"server {spec.name!r}"
        try:
            await engine_calls.call(engine.start, process.container_id)
            inspected = await engine_calls.call(
                engine.inspect_container, process.container_id
            )
        except docker.errors.APIError as exc:
            raise SandboxStartFailed(
                f"{where}: its container did not start: {explain(exc)}"
            ) from exc

        state = inspected["State"]
        # A container already gone is reported here; one that dies later, through
        # its exit status and stderr, to whoever reads them.
        if not state.get("Running"):
            tail = await _stderr_tail(process)
            raise SandboxStartFailed(
                f"{where}: its container exited with status {state.get('ExitCode')}"
                f" as it started; its stderr ends with: {tail or '(nothing)'}"
            )

    async def _remove_stale(self, engine: Engine) -> int:
        containers = await engine_calls.call(
            engine.containers, all=True, filters={"label": INSTANCE_LABEL}
        )
        stale = [c["Id"] for c in containers if self._is_stale(c.get("Labels") or {})]
        async with anyio.create_task_group() as group:
            for container_id in stale:
                group.start_soon(self._discard, engine, container_id)

        if stale:
            log.info("docker_stale_containers_removed", count=len(stale))

        return len(stale)

    def _is_stale(self, labels: dict[str, str]) -> bool:
        owner = Owner.from_labels(labels)
        if owner is None or owner == self.owner:
            return False

        return owner.is_dead(self.owner)

    async def _instance_containers(self, engine: Engine) -> list[str]:
        selector = f"{INSTANCE_LABEL}={self.instance}"
        try:
            found = await engine_calls.call(
                engine.containers, all=True, quiet=True, filters={"label": selector}
            )
        except (docker.errors.APIError, SandboxUnavailable) as exc:
            log.warning("docker_containers_not_listed", error=str(exc))
            return []

        return [c["Id"] for c in found]

    async def _discard(self, engine: Engine, container_id: str) -> None:
        self._containers.discard(container_id)
        try:
            await engine_calls.call(engine.remove_container, container_id, force=True)
        except docker.errors.NotFound:
            pass
        except (docker.errors.APIError, SandboxUnavailable) as exc:
            log.warning(
                "docker_container_not_removed", container=container_id, error=str(exc)
            )


async def _attach(
    engine: Engine, spec: SandboxSpec, container_id: str, stream: int
) -> AttachedStream:
    try:
        return await attach(engine, container_id, stream=stream)
    except docker.errors.APIError as exc:
        raise SandboxStartFailed(
            f"server {spec.name!r}: cannot attach to its container: {explain(exc)}"
        ) from exc


async def _stderr_tail(process: DockerProcess) -> str:
    tail = b""
    with anyio.move_on_after(START_STDERR_DRAIN_S):
        while chunk := await process.receive_stderr():
            tail = (tail + chunk)[-START_STDERR_TAIL_BYTES:]

    return tail.decode(errors="replace").strip()


def engine_checks(version: dict[str, Any], info: dict[str, Any]) -> list[BackendCheck]:
    """What ``doctor`` reports of an engine, from its version and info answers."""
    runtimes = sorted(info.get("Runtimes") or {})
    security = " ".join(info.get("SecurityOptions") or [])
    return [
        BackendCheck(
            "docker engine",
            True,
            f"Docker {version.get('Version')} (API {version.get('ApiVersion')})",
        ),
        BackendCheck(
            "docker seccomp",
            "name=seccomp" in security,
            "the engine applies seccomp profiles"
            if "name=seccomp" in security
            else "the engine cannot apply seccomp profiles",
        ),
        BackendCheck(
            "docker runtimes",
            True,
            f"{', '.join(runtimes)} (default {info.get('DefaultRuntime')})",
            required=False,
        ),
        BackendCheck(
            "docker runtime runsc (gVisor)",
            "runsc" in runtimes,
            "registered" if "runsc" in runtimes else "not registered with the engine",
            required=False,
        ),
        BackendCheck(
            "docker swap limit",
            bool(info.get("SwapLimit")),
            "memory limits include swap"
            if info.get("SwapLimit")
            else "the kernel does not account swap: memory limits exclude it",
            required=False,
        ),
    ]
