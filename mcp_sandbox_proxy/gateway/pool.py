"""Running instances of every server, keyed by (server, isolation profile).

Every instance is started with the proxy and kept warm, so that no call waits for
a sandbox to start. An instance is initialised with the client's own
``initialize`` parameters, so the server sees the client's protocol version,
capabilities and name. A crashed instance is restarted with backoff; past a bound
it is marked failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import structlog

from mcp_sandbox_proxy.exceptions import DownstreamError, SandboxError
from mcp_sandbox_proxy.gateway.downstream import Downstream, DownstreamHandler
from mcp_sandbox_proxy.gateway.jsonrpc import Message
from mcp_sandbox_proxy.sandbox.backend import Backend
from mcp_sandbox_proxy.sandbox.spec import SandboxSpec

log = structlog.get_logger(__name__)

# Servers installed on first use (npx, uvx) may take long to answer initialize.
INITIALIZE_TIMEOUT_S = 60.0
# Restarts after a crash: the delay doubles from the first to the last; a server
# that crashes more often than that within the window is given up on.
RESTART_DELAYS_S = (0.25, 0.5, 1.0, 2.0, 4.0)
RESTART_WINDOW_S = 60.0

Key = tuple[str, str]


@dataclass
class InstanceState:
    """The supervision record of one (server, profile) instance."""

    spec: SandboxSpec
    backend: Backend
    link: Downstream | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)
    failed: str | None = None
    crashes: list[float] = field(default_factory=lambda: [])
    stopping: bool = False


class Pool:
    """Starts, initialises, supervises and stops downstream instances."""

    def __init__(
        self,
        group: anyio.abc.TaskGroup,
        handler: DownstreamHandler,
        initialize_params: Callable[[str], Message],
    ) -> None:
        self._group = group
        self._handler = handler
        self._initialize_params = initialize_params
        self._instances: dict[Key, InstanceState] = {}
        self._client_ready = anyio.Event()

    def add(self, key: Key, spec: SandboxSpec, backend: Backend) -> InstanceState:
        """Register an instance and start supervising it."""
        state = InstanceState(spec, backend)
        self._instances[key] = state
        self._group.start_soon(self._supervise, key, state)
        return state

    def client_initialized(self) -> None:
        """The client's initialize arrived: instances may now initialise."""
        self._client_ready.set()

    def state(self, key: Key) -> InstanceState | None:
        return self._instances.get(key)

    def links(self) -> list[Downstream]:
        """Every instance that is ready now."""
        return [
            s.link
            for s in self._instances.values()
            if s.link is not None and s.ready.is_set() and not s.link.closed
        ]

    async def get(
        self, key: Key, timeout_s: float = INITIALIZE_TIMEOUT_S
    ) -> Downstream:
        """The ready instance for ``key``; raises ``DownstreamError``."""
        state = self._instances.get(key)
        if state is None:
            raise DownstreamError(f"no instance {key[0]!r} with profile {key[1]!r}")

        link = state.link
        if state.ready.is_set() and link is not None and not link.closed:
            return link  # the common case, without a trip through the event loop

        with anyio.move_on_after(timeout_s):
            await state.ready.wait()

        link = state.link
        if state.failed is not None or link is None or link.closed:
            reason = state.failed or "it is restarting"
            raise DownstreamError(f"server {key[0]!r} is unavailable: {reason}")

        return link

    async def _supervise(self, key: Key, state: InstanceState) -> None:
        while not state.stopping:
            link = Downstream(key[0], key[1], state.spec, state.backend, self._handler)
            state.link = link
            reason = await self._run_once(link, state)
            state.ready = anyio.Event()
            if state.stopping:
                return

            now = anyio.current_time()
            state.crashes = [t for t in state.crashes if now - t < RESTART_WINDOW_S]
            state.crashes.append(now)
            if len(state.crashes) > len(RESTART_DELAYS_S):
                state.failed = f"gave up after {len(state.crashes)} failures: {reason}"
                state.ready.set()
                log.error("server_failed", server=key[0], profile=key[1], reason=reason)
                return

            delay = RESTART_DELAYS_S[len(state.crashes) - 1]
            log.warning(
                "server_restarting", server=key[0], delay_s=delay, reason=reason
            )
            await anyio.sleep(delay)

    async def _run_once(self, link: Downstream, state: InstanceState) -> str:
        try:
            await link.start()
        except SandboxError as exc:
            log.error("server_start_failed", server=link.server, error=str(exc))
            return str(exc)

        async with anyio.create_task_group() as group:
            group.start_soon(link.run)
            try:
                await self._initialize(link)
            except DownstreamError as exc:
                tail = link.stderr.text().strip()
                log.error(
                    "server_initialize_failed", server=link.server, error=str(exc)
                )
                await link.stop()
                return f"{exc}; stderr: {tail[-500:]}" if tail else str(exc)

            state.ready.set()
            await self._handler.on_server_ready(link)

        return link.exit_reason or "server exited"

    async def _initialize(self, link: Downstream) -> None:
        await self._client_ready.wait()
        params = self._initialize_params(link.server)
        result: Any = await link.request("initialize", params, INITIALIZE_TIMEOUT_S)
        if not isinstance(result, dict):
            raise DownstreamError(f"server {link.server!r} sent an invalid initialize")

        link.initialize_result = result  # type: ignore[assignment]
        await link.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        log.info(
            "server_ready",
            server=link.server,
            profile=link.profile,
            sandbox=link.sandbox_id,
            protocol=result.get("protocolVersion"),  # type: ignore[union-attr]
        )

    async def stop_all(self) -> None:
        """Stop every instance concurrently; each stop is bounded."""
        async with anyio.create_task_group() as group:
            for state in self._instances.values():
                state.stopping = True
                state.ready.set()
                if state.link is not None:
                    group.start_soon(state.link.stop)
