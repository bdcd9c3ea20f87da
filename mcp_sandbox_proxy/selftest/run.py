"""``doctor --self-test``: the escape probes, run in each server's own sandbox.

For every enabled server (or the one asked for), the spec its default policy
gives is taken as the proxy would build it, with one change: the command becomes
``python3 probes.py`` and the folder of ``probes.py`` is mounted read-only. The
namespaces, seccomp filter, identity, limits, granted folders, environment and
network stay as the policy says; only the server's own runtime files are not
bound, since its program does not run. The sandbox's output and the traces on the
host become one row per probe (``judge``).
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio

from mcp_sandbox_proxy.config import ProxyConfig
from mcp_sandbox_proxy.exceptions import (
    ConfigError,
    SandboxError,
    SandboxUnavailable,
)
from mcp_sandbox_proxy.gateway.startup import sandbox_specs
from mcp_sandbox_proxy.policy import PolicySet, ResolvedPolicy
from mcp_sandbox_proxy.sandbox.backend import Backend
from mcp_sandbox_proxy.sandbox.egress import EgressFilter
from mcp_sandbox_proxy.sandbox.registry import Backends
from mcp_sandbox_proxy.sandbox.spec import Mount, NetworkSpec, SandboxSpec
from mcp_sandbox_proxy.selftest.bait import Bait, planted
from mcp_sandbox_proxy.selftest.judge import (
    ProbeRun,
    Row,
    judge,
    parse_reports,
    summary,
)
from mcp_sandbox_proxy.selftest.probes import MAX_EVIDENCE_CHARS, PROBES

PROBES_FILE = Path(__file__).resolve().with_name("probes.py")
# Found on the sandbox's own PATH: the host's for namespace and process, the
# image's for docker.
PROBE_PYTHON = "python3"
# Every probe bounds its own waits (5 s at most); all nine finish in about a
# second, so a sandbox still running after this is stuck and is stopped.
PROBE_RUN_TIMEOUT_S = 60.0
# Nine JSON lines of a few hundred bytes; anything beyond is not from the probes.
MAX_PROBE_OUTPUT_BYTES = 64 * 1024

Progress = Callable[[str], None]


async def self_test(
    config: ProxyConfig, *, server: str | None = None, progress: Progress
) -> list[Row]:
    """Run every probe in the sandbox of each chosen server; one row per probe."""
    names = chosen_servers(config, server)
    policies = PolicySet.load(config)
    backends = Backends(instance=f"selftest-{os.getpid()}")
    rows: list[Row] = []
    try:
        async with planted() as bait:
            # Built only now, with the secret in the proxy's environment.
            for name, spec, policy in default_instances(policies, names):
                rows += await probe_server(name, spec, policy, backends, bait, progress)
    finally:
        with anyio.CancelScope(shield=True):
            await backends.aclose()

    return rows


def chosen_servers(config: ProxyConfig, only: str | None) -> list[str]:
    """The servers to test: every enabled one, or ``only``; errors say which exist."""
    source = str(config.source) if config.source else None
    enabled = list(config.enabled_servers())
    if only is None:
        if not enabled:
            raise ConfigError(
                "no enabled server to test under mcpServers", source=source
            )

        return enabled

    if only not in config.mcp_servers:
        known = ", ".join(sorted(config.mcp_servers)) or "none"
        raise ConfigError(
            f"--server {only!r}: no such server under mcpServers (there are: {known})",
            source=source,
        )

    if only not in enabled:
        raise ConfigError(
            f"--server {only!r}: the server is disabled; remove 'disabled: true'"
            f" from mcpServers.{only} to test its sandbox",
            source=source,
        )

    return [only]


def default_instances(
    policies: PolicySet, names: list[str]
) -> Iterator[tuple[str, SandboxSpec, ResolvedPolicy]]:
    """Each server's default-profile instance, as the proxy would build it."""
    for (name, profile), spec, policy in sandbox_specs(policies, names):
        if profile == policies.for_server(name).profile:
            yield name, spec, policy


async def probe_server(
    name: str,
    spec: SandboxSpec,
    policy: ResolvedPolicy,
    backends: Backends,
    bait: Bait,
    progress: Progress,
) -> list[Row]:
    """The probes in one server's sandbox, judged with the host's traces."""
    progress(
        f"self-test: server {name!r}: running {len(PROBES)} probes under the"
        f" {policy.backend} backend (policy {policy.name!r})"
    )
    started = time.monotonic()
    bait.open_to(spec.uid, spec.gid)
    granted = granted_probes(spec, bait)
    run = await _run_in_sandbox(backends.get(policy.backend), spec, policy, bait)

    rows = judge(name, policy.backend, run, bait.traces(run.reports), granted)
    why = f": {run.problem}" if run.problem and not run.reports else ""
    progress(f"self-test: server {name!r}: {summary(rows)}{_took(started)}{why}")
    return rows


def start_failure(exc: SandboxError, backend: str, image: str | None) -> str:
    """Why a sandbox did not start, and what to do about it."""
    if isinstance(exc, SandboxUnavailable):
        return (
            f"the sandbox is not available here: {exc}; run `mcp-sandbox-proxy"
            f" doctor` to see what the {backend} backend lacks on this machine"
        )

    where = f" in the image {image}" if backend == "docker" and image else ""
    return f"the sandbox did not start: {exc}; the probes need {PROBE_PYTHON}{where}"


def _took(started: float) -> str:
    return f" in {time.monotonic() - started:.1f} s"


def granted_probes(spec: SandboxSpec, bait: Bait) -> dict[str, str]:
    """Probes whose target the policy grants on purpose, with the grant."""
    granted: dict[str, str] = {}
    for mount in spec.mounts:
        grant = f"the policy grants {mount.host_path}"
        if bait.canary.is_relative_to(mount.host_path):
            granted["home-file-read"] = f"{grant}, where the canary is"

        if mount.writable and bait.write_dir.is_relative_to(mount.host_path):
            granted["host-folder-write"] = f"{grant} read-write"

    return granted


def probe_spec(spec: SandboxSpec, bait: Bait) -> SandboxSpec:
    """``spec`` running the probe script instead of the server."""
    folder = PROBES_FILE.parent
    return replace(
        spec,
        command=PROBE_PYTHON,
        args=("-I", "-B", str(PROBES_FILE), *bait.probe_args()),
        mounts=(*spec.mounts, Mount(folder, folder, writable=False)),
    )


async def _run_in_sandbox(
    backend: Backend, spec: SandboxSpec, policy: ResolvedPolicy, bait: Bait
) -> ProbeRun:
    async with _egress(spec, policy) as networked:
        try:
            return await run_probes(backend, probe_spec(networked, bait))
        except SandboxError as exc:
            # Caught here, inside the egress filter's task group, unwrapped.
            return ProbeRun({}, start_failure(exc, policy.backend, spec.image))


@asynccontextmanager
async def _egress(
    spec: SandboxSpec, policy: ResolvedPolicy
) -> AsyncGenerator[SandboxSpec]:
    """An egress filter for a spec whose policy lists destinations, as in the proxy."""
    if spec.network.mode != "egress":
        yield spec
        return

    network = policy.policy.isolation.network
    egress = EgressFilter(
        sandbox=spec.name, rules=network.rules, allow_private=network.allow_private
    )
    async with anyio.create_task_group() as group:
        socket = await group.start(egress.serve)
        yield replace(spec, network=NetworkSpec("egress", socket))
        group.cancel_scope.cancel()


async def run_probes(backend: Backend, spec: SandboxSpec) -> ProbeRun:
    """Start the probe script, read its output until it exits; bounded in time."""
    process = await backend.start(spec)
    stdout, stderr = bytearray(), bytearray()
    status: int | None = None
    try:
        await process.close_stdin()
        with anyio.move_on_after(PROBE_RUN_TIMEOUT_S):
            async with anyio.create_task_group() as group:
                group.start_soon(_collect, process.receive_stderr, stderr)
                await _collect(process.receive, stdout)

            status = await process.wait()
    finally:
        with anyio.CancelScope(shield=True):
            await process.stop()

        process.close()

    return ProbeRun(parse_reports(bytes(stdout)), _problem(status, bytes(stderr)))


async def _collect(receive: Callable[[], Awaitable[bytes]], into: bytearray) -> None:
    """Read a stream to its end, keeping only the first bytes of it."""
    while chunk := await receive():
        room = MAX_PROBE_OUTPUT_BYTES - len(into)
        into += chunk[: max(room, 0)]


def _problem(status: int | None, stderr: bytes) -> str | None:
    if status is None:
        return f"the probes did not finish within {PROBE_RUN_TIMEOUT_S:.0f} s"

    if status == 0:
        return None

    said = stderr.decode(errors="replace").strip().splitlines()
    last = f": {said[-1][:MAX_EVIDENCE_CHARS]}" if said else ""
    return f"the probe script exited with status {status}{last}"
