"""``Installer``: the sandboxed install phase of servers started by a package runner.

An install runs in a namespace sandbox of its own, whatever backend the server
will use: the package manager (npm, uv, pip) is the only program, its network is
the proxy's egress filter with the registry's hosts as the only destinations, and
the one writable folder is the installation's own, inside the proxy's cache. Any
install script of the package runs there too, never on the host. The proxy then
reads the installed version and the program to start from files, records them,
and hands the folder back to its own user; the server's sandbox binds it
read-only. Every install, reuse and failure is an audit record, and so is each
connection the install made.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import structlog

from mcp_sandbox_proxy.config import InstallConfig
from mcp_sandbox_proxy.exceptions import ConfigError, SandboxError, SandboxStartFailed
from mcp_sandbox_proxy.install.launchers import Launch, Requirement
from mcp_sandbox_proxy.install.recipes import SCRATCH_DIRS, install_recipe, read_result
from mcp_sandbox_proxy.install.registries import Registry, find_registry
from mcp_sandbox_proxy.install.store import LEASE_FILE, Installed, PackageStore
from mcp_sandbox_proxy.policy.models import EgressRule
from mcp_sandbox_proxy.policy.resolve import SANDBOX_HOME, sandbox_path
from mcp_sandbox_proxy.sandbox.backend import Backend
from mcp_sandbox_proxy.sandbox.egress import (
    EgressAttempt,
    EgressFilter,
    hosts_first_resolver,
)
from mcp_sandbox_proxy.sandbox.spec import (
    MIB,
    NOBODY_GID,
    NOBODY_UID,
    Limits,
    Mount,
    NetworkSpec,
    SandboxSpec,
)

log = structlog.get_logger(__name__)

# Package managers resolve and unpack in parallel and build native modules.
INSTALL_LIMITS = Limits(
    memory_bytes=2048 * MIB,
    pids=512,
    cpu_cores=2.0,
    open_files=8192,
    file_size_bytes=512 * MIB,
    tmpfs_bytes=512 * MIB,
)
# Lines of the installer's output kept to explain a failure.
OUTPUT_TAIL_LINES = 20
INSTALL_PROFILE = "install"

# Writes one audit record: the event's name and its fields.
Record = Callable[[str, dict[str, Any]], Awaitable[None]]


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """``$XDG_CACHE_HOME/mcp-sandbox-proxy/packages`` (``~/.cache`` by default)."""
    cache = environ.get("XDG_CACHE_HOME") or ""
    base = Path(cache) if Path(cache).is_absolute() else Path.home() / ".cache"
    return base / "mcp-sandbox-proxy" / "packages"


async def _no_record(event: str, fields: dict[str, Any]) -> None:
    del event, fields


class Installer:
    """Installs, records and reuses the packages of one proxy's servers."""

    def __init__(
        self,
        settings: InstallConfig,
        *,
        backend: Backend,
        environ: Mapping[str, str] = os.environ,
        record: Record = _no_record,
        egress_hosts: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = PackageStore(settings.cache_dir or default_cache_dir(environ))
        self._backend = backend
        self._environ = environ
        self._record = record
        self._hosts = egress_hosts or {}
        self._lock = anyio.Lock()
        self._failed: dict[str, SandboxError] = {}
        # Descriptors of the ``.in-use`` files held, by installation folder: open
        # until the process exits, which lets go of them.
        self._leases: dict[str, int] = {}

    async def ensure(self, server: str, launch: Launch) -> Installed:
        """The recorded installation of ``launch``, installing it the first time.

        A failure is remembered for this proxy's lifetime, so that restarts of
        the server do not download the package again and again.
        """
        if launch.key in self._failed:
            raise self._failed[launch.key]

        found = self.store.get(launch.key)
        if found is None or not await self._hold(found):
            async with self._lock:
                found = await self._change(server, launch, upgrade=False)

        await self._record(
            "package_ready",
            _fields(server, launch, version=found.version, program=found.program),
        )
        return found

    async def _hold(self, installed: Installed) -> bool:
        """Hold ``installed``'s folder for as long as this proxy runs, so that no
        upgrade removes it from under a running server; False when it is gone."""
        if installed.directory in self._leases:
            return installed.usable()

        fd = await self.store.lease(installed)
        if fd is None:
            return False

        self._leases[installed.directory] = fd
        return True

    async def upgrade(self, server: str, launch: Launch) -> Installed:
        """Install the newest version ``launch`` allows and record it."""
        async with self._lock:
            return await self._change(server, launch, upgrade=True)

    async def _change(self, server: str, launch: Launch, *, upgrade: bool) -> Installed:
        try:
            async with self.store.locked():
                # Another proxy may have installed it while this one waited. The
                # hold is taken under the cache's lock, where no upgrade can
                # remove the folder first.
                previous = self.store.get(launch.key)
                if previous is not None and not upgrade and await self._hold(previous):
                    return previous

                requirement = launch.package
                if previous is not None and not upgrade:
                    # The files went missing: the recorded version is reinstalled.
                    requirement = launch.package.pinned(previous.version)

                installed = await self._install(server, launch, requirement)
                if not upgrade:
                    await self._hold(installed)

                return installed
        except ConfigError as exc:
            failure = SandboxStartFailed(str(exc))
            self._failed[launch.key] = failure
            raise failure from exc
        except SandboxError as exc:
            self._failed[launch.key] = exc
            raise

    async def _install(
        self, server: str, launch: Launch, requirement: Requirement
    ) -> Installed:
        registry = await anyio.to_thread.run_sync(
            find_registry, launch.ecosystem, self._environ, self.settings.extra_hosts
        )
        target = self.store.folder_for(launch.ecosystem, launch.package.name)
        started = time.monotonic()
        fields = _fields(server, launch, registry=[str(e) for e in registry.endpoints])
        log.info("package_installing", **fields, folder=str(target))
        await self._record("package_install_started", fields)
        try:
            await self._run_install(server, launch, requirement, registry, target)
            for scratch in SCRATCH_DIRS:
                shutil.rmtree(target / scratch, ignore_errors=True)

            _own(target, os.getuid(), os.getgid())
            # The file that running proxies hold (``store.lease``).
            (target / LEASE_FILE).touch()
            version, program = read_result(launch, target)
        except BaseException as exc:
            shutil.rmtree(target, ignore_errors=True)
            if isinstance(exc, SandboxError | ConfigError):
                failed = {**fields, "error": str(exc)}
                await self._record("package_install_failed", failed)
                log.error("package_install_failed", **fields, error=str(exc))

            raise

        installed = Installed(
            key=launch.key,
            package=launch.package.name,
            version=version,
            directory=str(target),
            program=str(program),
            installed_at=datetime.now(UTC).isoformat(timespec="seconds"),
            registry=tuple(str(e) for e in registry.endpoints),
        )
        replaced = self.store.put(installed)
        # The folder replaced is no longer recorded: the sweep removes it with
        # any left behind earlier, unless a running proxy holds it.
        removed = self.store.sweep()
        for folder in removed:
            log.info("package_folder_removed", **fields, folder=folder)

        if replaced is not None and replaced.directory not in removed:
            log.info(
                "package_version_kept",
                **fields,
                version=replaced.version,
                folder=replaced.directory,
                reason="a running proxy uses it; a later install removes it",
            )

        seconds = round(time.monotonic() - started, 1)
        done = {**fields, "version": version, "program": str(program)}
        log.info("package_installed", **done, seconds=seconds)
        await self._record("package_installed", {**done, "seconds": seconds})
        return installed

    async def _run_install(
        self,
        server: str,
        launch: Launch,
        requirement: Requirement,
        registry: Registry,
        target: Path,
    ) -> None:
        recipe = await anyio.to_thread.run_sync(
            install_recipe,
            launch,
            [requirement, *launch.extra],
            registry,
            target,
            self._environ,
        )
        as_root = os.geteuid() == 0
        uid, gid = (NOBODY_UID, NOBODY_GID) if as_root else (os.getuid(), os.getgid())
        # The sandbox's own user must be able to write its one folder.
        os.chown(target, uid, gid)

        refused: list[str] = []

        async def record_attempt(attempt: EgressAttempt) -> None:
            if attempt.decision == "deny":
                refused.append(f"{attempt.host}:{attempt.port}")

            await self._record("egress_attempt", _attempt_fields(server, attempt))

        name = f"{server}:{INSTALL_PROFILE}"
        egress = EgressFilter(
            sandbox=name,
            rules=[EgressRule(e.host, e.port) for e in registry.endpoints],
            allow_private=self.settings.allow_private,
            on_attempt=record_attempt,
            resolver=hosts_first_resolver(self._hosts),
        )
        failure: SandboxError | None = None
        async with anyio.create_task_group() as group:
            socket = await group.start(egress.serve)
            env = {
                "HOME": SANDBOX_HOME,
                "PATH": sandbox_path(recipe.command, self._environ),
                **recipe.env,
            }
            spec = SandboxSpec(
                name=name,
                command=recipe.command,
                args=recipe.args,
                env=env,
                cwd=target,
                mounts=(Mount(target, target, writable=True),),
                runtime_paths=recipe.runtime_paths,
                network=NetworkSpec("egress", socket),
                limits=INSTALL_LIMITS,
                uid=uid,
                gid=gid,
            )
            try:
                await self._run_sandbox(server, spec, launch)
            except SandboxError as exc:
                failure = exc
            finally:
                group.cancel_scope.cancel()

        if failure is not None and refused:
            # Often the real cause, and something the installer's own words hide.
            hosts = ", ".join(dict.fromkeys(refused))
            raise SandboxStartFailed(
                f"{failure}\nThe install tried to reach {hosts}, which is not the"
                " registry; add a mirror's download host to proxy.install.extraHosts"
                " if it is one"
            ) from failure

        if failure is not None:
            raise failure

    async def _run_sandbox(
        self, server: str, spec: SandboxSpec, launch: Launch
    ) -> None:
        process = await self._backend.start(spec)
        tail: list[str] = []
        status: int | None = None
        try:
            with anyio.move_on_after(self.settings.timeout) as deadline:
                async with anyio.create_task_group() as group:
                    group.start_soon(_relay_output, process.receive, server, tail)
                    await _relay_output(process.receive_stderr, server, tail)
                    status = await process.wait()

            if deadline.cancelled_caught:
                await process.stop()
                raise SandboxStartFailed(
                    f"installing {launch.describe()} for server {server!r} took"
                    f" longer than {self.settings.timeout:g} s"
                    " (proxy.install.timeout); the registry may be slow or"
                    " unreachable"
                )
        finally:
            with anyio.CancelScope(shield=True):
                if process.returncode is None:
                    await process.stop()

            process.close()

        if status != 0:
            said = "\n".join(tail[-OUTPUT_TAIL_LINES:]) or "(no output)"
            raise SandboxStartFailed(
                f"installing {launch.describe()} for server {server!r} failed"
                f" (exit status {status}); the installer said:\n{said}"
            )


async def _relay_output(
    receive: Callable[[], Awaitable[bytes]], server: str, tail: list[str]
) -> None:
    """Show the installer's output on stderr as progress; keep its last lines."""
    pending = b""
    while chunk := await receive():
        *lines, pending = (pending + chunk).split(b"\n")
        for raw in lines:
            line = raw.decode(errors="replace").rstrip()
            if line:
                log.info("install_output", server=server, line=line)
                tail.append(line)
                del tail[:-OUTPUT_TAIL_LINES]


def _own(folder: Path, uid: int, gid: int) -> None:
    """Hand the installed files to the proxy's user, so no sandbox can write them."""
    if os.geteuid() != 0:
        return

    os.lchown(folder, uid, gid)
    for parent, folders, files in os.walk(folder):
        for name in (*folders, *files):
            os.lchown(Path(parent) / name, uid, gid)


def _fields(server: str, launch: Launch, **more: Any) -> dict[str, Any]:
    return {
        "server": server,
        "profile": INSTALL_PROFILE,
        "runner": launch.runner,
        "ecosystem": launch.ecosystem,
        "package": launch.describe(),
        **more,
    }


def _attempt_fields(server: str, attempt: EgressAttempt) -> dict[str, Any]:
    return {
        "server": server,
        "profile": INSTALL_PROFILE,
        "host": attempt.host,
        "port": attempt.port,
        "addresses": list(attempt.addresses),
        "decision": attempt.decision,
        "reason": attempt.reason,
        "rule": attempt.rule,
        "bytes_up": attempt.bytes_up,
        "bytes_down": attempt.bytes_down,
        "duration_ms": attempt.duration_ms,
        "protocol": attempt.protocol,
        "error": attempt.error,
    }
