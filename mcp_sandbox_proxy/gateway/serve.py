"""Running the proxy: wire the relay, the pool and the interceptors, then serve.

The proxy serves until its input ends or it gets SIGTERM or SIGINT; then every
sandbox is stopped (each stop bounded) and the audit log is closed.
"""

from __future__ import annotations

import hashlib
import signal
import uuid

import anyio
import structlog

from mcp_sandbox_proxy.audit import AuditLog
from mcp_sandbox_proxy.config import ProxyConfig
from mcp_sandbox_proxy.gateway.egress_links import with_egress
from mcp_sandbox_proxy.gateway.front import ClientChannel
from mcp_sandbox_proxy.gateway.gate import CallGate
from mcp_sandbox_proxy.gateway.pool import Pool, instance_bounds
from mcp_sandbox_proxy.gateway.relay import Relay
from mcp_sandbox_proxy.gateway.startup import Startup
from mcp_sandbox_proxy.heap import trim_when_idle
from mcp_sandbox_proxy.install.servers import installing
from mcp_sandbox_proxy.policy import PolicySet
from mcp_sandbox_proxy.policy.pins import ToolPins
from mcp_sandbox_proxy.sandbox.registry import Backends

log = structlog.get_logger(__name__)

# Shutdown is bounded: every sandbox gets its own grace period, run side by side.
SHUTDOWN_TIMEOUT_S = 10.0


async def serve(
    config: ProxyConfig,
    policies: PolicySet,
    startup: Startup,
    *,
    read_fd: int = 0,
    write_fd: int = 1,
) -> int:
    """Serve MCP on the given descriptors until the client goes away."""
    servers = config.enabled_servers()
    launches = startup.launches
    audit = AuditLog.open(config.proxy.audit, instance=startup.instance)
    backends = startup.backends
    front = ClientChannel(read_fd, write_fd)
    pins = ToolPins.for_config(config)
    # One client per proxy process: the client session is named apart from the
    # instance so that records of one connection can be told from the next.
    session = uuid.uuid4().hex[:12]
    gate = CallGate(policies, pins, audit, session=session)
    default_profiles = {name: policies.for_server(name).profile for name in servers}
    relay = Relay(
        front, gate, {n: config.prefix_of(n) for n in servers}, default_profiles
    )
    await audit.write(
        "config_loaded",
        session=session,
        config_path=str(config.source),
        config_digest=config_digest(config),
        servers=sorted(servers),
        policies={name: policies.for_server(name).digest for name in servers},
    )

    install_first = None
    if launches:
        install_first = installing(config, backends, gate.install_event)

    pool: Pool | None = None
    stopped = False
    try:
        async with anyio.create_task_group() as filters:
            async with anyio.create_task_group() as group:
                pool = Pool(group, relay, relay.initialize_params)
                relay.bind(group, pool)
                for key, spec, policy in startup.instances:
                    spec = await with_egress(
                        filters, key, spec, policy, gate, config.proxy.egress_hosts
                    )
                    bounds = instance_bounds(policy)
                    backend = startup.head_start.backend_for(
                        key, backends.get(policy.backend)
                    )
                    if install_first is not None and key[0] in launches:
                        backend = install_first(backend, key[0], launches[key[0]])

                    pool.add(key, spec, backend, bounds)

                group.start_soon(relay.watch_deadlines)
                group.start_soon(trim_when_idle, lambda: front.chunks_read)
                group.start_soon(_stop_on_signal, group.cancel_scope)
                await front.serve(relay)
                log.info("client_input_closed")
                group.cancel_scope.cancel()

            # The sandboxes stop before their egress filters go.
            await _shut_down(pool, backends, gate)
            stopped = True
            filters.cancel_scope.cancel()
    finally:
        # On an error the sandboxes are stopped here instead.
        with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_TIMEOUT_S):
            if not stopped:
                await _shut_down(pool, backends, gate)

            await startup.head_start.aclose()
            await audit.aclose()

        front.close()

    return 0


async def _shut_down(pool: Pool | None, backends: Backends, gate: CallGate) -> None:
    with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_TIMEOUT_S):
        if pool is not None:
            await pool.stop_all()
            await gate.sandboxes_stopped()

        await backends.aclose()


def config_digest(config: ProxyConfig) -> str:
    """SHA-256 of the configuration file as read, to tie records to its content."""
    if config.source is None or not config.source.exists():
        return ""

    return hashlib.sha256(config.source.read_bytes()).hexdigest()


async def _stop_on_signal(scope: anyio.CancelScope) -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("signal_received", signal=signal.Signals(signum).name)
            scope.cancel()
            return
