"""Running instances of every server, keyed by (server, isolation profile).

Every instance is started with the proxy and kept warm, so that no call waits for
a sandbox to start. An instance is initialised with the client's own
``initialize`` parameters, so the server sees the client's protocol version,
capabilities and name. A crashed instance is restarted with backoff; past a bound
it is marked failed. An instance whose first start fails is counted as settled,
so that one broken server does not hold up the answer to the client's initialize.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc
import structlog

from mcp_sandbox_proxy.exceptions import DownstreamError, SandboxError
from mcp_sandbox_proxy.gateway.downstream import (
    Downstream,
    DownstreamHandler,
    InstanceBounds,
)
from mcp_sandbox_proxy.gateway.jsonrpc import Message
from mcp_sandbox_proxy.policy import ResolvedPolicy
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
    bounds: InstanceBounds
    link: Downstream | None = None
    ready: anyio.Event = field(default_factory=anyio.Event)
    settled: anyio.Event = field(default_factory=anyio.Event)
    # Set, and replaced, whenever the instance becomes ready, fails or stops.
    changed: anyio.Event = field(default_factory=anyio.Event)
    failed: str | None = None
    last_failure: str = ""
    crashes: list[float] = field(default_factory=lambda: [])
    stopping: bool = False


def instance_bounds(policy: ResolvedPolicy) -> InstanceBounds:
    """What a policy bounds per instance: the size of one message from the server,
    and, by its call timeout, how long the server's requests wait for the client."""
    return InstanceBounds(
        max_message_bytes=policy.max_message_bytes,
        client_answer_timeout_s=policy.call_timeout_s,
    )


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
        self._by_server: dict[str, list[InstanceState]] = {}
        self._client_ready = anyio.Event()

    def add(
        self,
        key: Key,
        spec: SandboxSpec,
        backend: Backend,
        bounds: InstanceBounds | None = None,
    ) -> InstanceState:
        """Register an instance and start supervising it; ``bounds`` come from
        the policy of the instance's profile."""
        state = InstanceState(spec, backend, bounds or InstanceBounds())
        self._instances[key] = state
        self._by_server.setdefault(key[0], []).append(state)
        self._group.start_soon(self._supervise, key, state)
        return state

    def client_initialized(self) -> None:
        """The client's initialize arrived: instances may now initialise."""
        self._client_ready.set()

    def state(self, key: Key) -> InstanceState | None:
        return self._instances.get(key)

    def server_ready(self, server: str) -> bool:
        """True when every instance of ``server`` is up: a call to it never waits."""
        states = self._by_server.get(server)
        return bool(states) and None not in map(_ready_link, states)

    def links(self) -> list[Downstream]:
        """Every instance that is ready now."""
        return [
            link
            for state in self._instances.values()
            if (link := _ready_link(state)) is not None
        ]

    async def get(
        self, key: Key, timeout_s: float = INITIALIZE_TIMEOUT_S
    ) -> Downstream:
        """The ready instance for ``key``, waiting up to ``timeout_s`` for it to
        start; raises ``DownstreamError``."""
        state = self._instances.get(key)
        if state is None:
            raise DownstreamError(f"no instance {key[0]!r} with profile {key[1]!r}")

        link = _ready_link(state)
        if link is not None:
            return link  # the common case, without a trip through the event loop

        with anyio.move_on_after(timeout_s):
            while _ready_link(state) is None and not _over(state):
                await state.changed.wait()

        link = _ready_link(state)
        if link is None:
            raise DownstreamError(f"server {key[0]!r} is unavailable: {_why(state)}")

        return link

    def ready_link(self, key: Key) -> Downstream | None:
        """The instance for ``key`` if it is ready now, else None."""
        state = self._instances.get(key)
        return _ready_link(state) if state is not None else None

    def why(self, server: str, profile: str) -> str:
        """Why the instance is not ready, in words for a log or an error."""
        state = self._instances.get((server, profile))
        return _why(state) if state is not None else "it is not configured"

    async def settle(self, key: Key, timeout_s: float = INITIALIZE_TIMEOUT_S) -> None:
        """Wait until the first start of ``key`` succeeded or failed, bounded."""
        state = self._instances.get(key)
        if state is not None:
            with anyio.move_on_after(timeout_s):
                await state.settled.wait()

    async def _supervise(self, key: Key, state: InstanceState) -> None:
        while not state.stopping:
            link = Downstream(
                key[0], key[1], state.spec, state.backend, self._handler, state.bounds
            )
            state.link = link
            reason = await self._run_once(link, state)
            state.settled.set()
            state.ready = anyio.Event()
            if state.stopping:
                return

            state.last_failure = reason
            now = anyio.current_time()
            state.crashes = [t for t in state.crashes if now - t < RESTART_WINDOW_S]
            state.crashes.append(now)
            if len(state.crashes) > len(RESTART_DELAYS_S):
                state.failed = f"gave up after {len(state.crashes)} failures: {reason}"
                state.ready.set()
                _announce(state)
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
                log.error(
                    "server_initialize_failed", server=link.server, error=str(exc)
                )
                await link.stop()
                return link.with_stderr(str(exc))

            state.ready.set()
            state.settled.set()
            _announce(state)
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
                _announce(state)
                if state.link is not None:
                    group.start_soon(state.link.stop)


def _ready_link(state: InstanceState) -> Downstream | None:
    link = state.link
    if link is None or link.closed or not state.ready.is_set():
        return None

    return link


def _over(state: InstanceState) -> bool:
    return state.failed is not None or state.stopping


def _announce(state: InstanceState) -> None:
    changed, state.changed = state.changed, anyio.Event()
    changed.set()


def _why(state: InstanceState) -> str:
    if state.failed is not None:
        return state.failed

    if state.last_failure:
        return f"it is restarting after: {state.last_failure}"

    return "it is starting"
