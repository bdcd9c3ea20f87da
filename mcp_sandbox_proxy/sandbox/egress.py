"""``EgressFilter``: the only way out of a sandbox whose network mode is ``egress``.

Why this shape gives the strongest guarantee. The sandbox has a network namespace
of its own with nothing in it but loopback: no interface, no route and no resolver
reaches past it, so no socket it opens (TCP, UDP, raw) and no DNS query leaves,
whatever code runs inside. The one door is a Unix socket bound into the sandbox;
behind it this filter runs in the proxy, out of the sandbox's reach, and speaks
HTTP CONNECT, plain HTTP proxying and SOCKS5 CONNECT. For each connection it

1. reads the destination the client names, a host and a port;
2. checks it against the allow rules before any lookup, so a refused name never
   reaches DNS;
3. resolves the name itself and refuses when any address lies in a closed range
   (``_egress_rules``), so an allowed name cannot lead to loopback, the LAN or a
   metadata service;
4. connects to an address it checked, never resolving again, so DNS rebinding
   between check and connect has nothing to change;
5. relays bytes both ways, counted, and reports the attempt to ``on_attempt``.

Compared with filtering packets on a virtual interface, nothing in the host's
kernel is configured per sandbox, names are checked as names rather than inferred
from addresses, and the same socket serves a Docker container run with
``--network none``.

What it cannot see is the content of an allowed connection: several sites behind
one address (shared hosting, CDNs) are reachable through a rule for any one of
them, by the Host header or TLS server name the client sends; and a ``*.domain``
rule lets the sandbox choose names below the domain, and so signal to that
domain's name servers through the names it asks for.
"""

from __future__ import annotations

import ipaddress
import shutil
import socket
import tempfile
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import structlog
from anyio.abc import SocketListener, SocketStream, TaskGroup, TaskStatus

from mcp_sandbox_proxy.exceptions import SandboxError
from mcp_sandbox_proxy.sandbox._egress_exchange import Exchange

if TYPE_CHECKING:
    from mcp_sandbox_proxy.policy.models import EgressRule

log = structlog.get_logger(__name__)

# Connections one sandbox may hold open at once (handshakes included); more are
# closed at once. Servers fetch a few pages at a time, not hundreds.
MAX_CONNECTIONS = 32
# Longest request head (request line and headers) read from a client.
MAX_HEAD_BYTES = 16 * 1024
# A client names its destination promptly or not at all.
HANDSHAKE_TIMEOUT_S = 10.0
RESOLVE_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 10.0
# A connection on which nothing moved either way for this long is closed.
IDLE_TIMEOUT_S = 300.0
# Reporting an attempt (an audit write) may not hold up shutdown for longer.
REPORT_TIMEOUT_S = 5.0
# After a failed accept (out of file descriptors), wait before accepting again
# instead of spinning.
ACCEPT_RETRY_S = 0.1
SOCKET_NAME = "egress.sock"
# sun_path holds 108 bytes, the terminating NUL included.
MAX_SOCKET_PATH_BYTES = 107

Resolver = Callable[[str, int], Awaitable[Sequence[str]]]


@dataclass(frozen=True)
class EgressAttempt:
    """One connection attempt through the filter, allowed or refused.

    ``decision`` is the policy's answer; an allowed attempt whose destination could
    not be reached carries ``error``. ``context`` is what ``call_context`` returned
    when the connection arrived (the tool call running in the sandbox).
    """

    sandbox: str
    host: str
    port: int
    addresses: tuple[str, ...]
    decision: Literal["allow", "deny"]
    reason: str
    bytes_up: int = 0
    bytes_down: int = 0
    duration_ms: float = 0.0
    protocol: str = ""
    rule: str | None = None
    error: str | None = None
    context: Mapping[str, Any] = field(default_factory=lambda: {})


OnAttempt = Callable[[EgressAttempt], Awaitable[None]]
CallContext = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class EgressLimits:
    """Bounds on one sandbox's use of its filter."""

    max_connections: int = MAX_CONNECTIONS
    max_head_bytes: int = MAX_HEAD_BYTES
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    resolve_timeout_s: float = RESOLVE_TIMEOUT_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    idle_timeout_s: float = IDLE_TIMEOUT_S


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's own resolver (``getaddrinfo``): every TCP address of ``host``."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def static_resolver(table: Mapping[str, Sequence[str]]) -> Resolver:
    """A resolver answering from ``table`` (name to addresses) and nothing else."""

    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise OSError(f"{host} is not in the resolver's table")

        return [str(ipaddress.ip_address(address)) for address in table[host]]

    return resolve


def hosts_first_resolver(table: Mapping[str, Sequence[str]]) -> Resolver:
    """Names in ``table`` answered from it (as from a hosts file), others by the
    host's resolver."""
    static = static_resolver(table)

    async def resolve(host: str, port: int) -> Sequence[str]:
        if host in table:
            return await static(host, port)

        return await system_resolver(host, port)

    return resolve


class EgressFilter:
    """The egress proxy of one sandbox, on a Unix socket of its own.

    ``serve`` creates the socket in a new private folder and hands its path to
    ``task_status.started``; it goes into ``NetworkSpec.egress_socket``.
    ``on_attempt`` receives every attempt once its connection ends (a refusal at
    once); ``call_context`` is evaluated when each connection arrives.
    """

    def __init__(
        self,
        *,
        sandbox: str,
        rules: Sequence[EgressRule],
        allow_private: bool = False,
        on_attempt: OnAttempt | None = None,
        call_context: CallContext | None = None,
        resolver: Resolver = system_resolver,
        limits: EgressLimits = EgressLimits(),
        socket_parent: Path | None = None,
    ) -> None:
        self.sandbox = sandbox
        self.rules = tuple(rules)
        self.allow_private = allow_private
        self.resolver = resolver
        self.limits = limits
        self.socket_path: Path | None = None
        self._on_attempt = on_attempt
        self._call_context = call_context
        self._socket_parent = socket_parent
        self._open_connections = 0

    async def serve(
        self, *, task_status: TaskStatus[Path] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept connections until cancelled; then remove the socket and its folder."""
        folder = Path(tempfile.mkdtemp(prefix="mcp-egress-", dir=self._socket_parent))
        try:
            listener = await _listen(folder / SOCKET_NAME)
            async with listener, anyio.create_task_group() as group:
                self.socket_path = folder / SOCKET_NAME
                task_status.started(self.socket_path)
                await self._accept_forever(listener, group)
        finally:
            self.socket_path = None
            shutil.rmtree(folder, ignore_errors=True)

    async def _accept_forever(self, listener: SocketListener, group: TaskGroup) -> None:
        while True:
            try:
                client = await listener.accept()
            except OSError as exc:
                log.warning(
                    "egress_accept_failed", sandbox=self.sandbox, error=str(exc)
                )
                await anyio.sleep(ACCEPT_RETRY_S)
                continue

            group.start_soon(self._handle, client)

    async def _handle(self, client: SocketStream) -> None:
        exchange = Exchange(self, client, self._context())
        self._open_connections += 1
        try:
            async with client:
                await self._run(exchange)
        finally:
            self._open_connections -= 1
            with anyio.CancelScope(shield=True), anyio.move_on_after(REPORT_TIMEOUT_S):
                await self._report(exchange)

    def _context(self) -> dict[str, Any]:
        """What runs in the sandbox now; a failing hook costs the context only."""
        if self._call_context is None:
            return {}

        try:
            return dict(self._call_context())
        except Exception:  # the hook's failure must not refuse the connection
            log.exception("egress_context_failed", sandbox=self.sandbox)
            return {}

    async def _run(self, exchange: Exchange) -> None:
        limit = self.limits.max_connections
        try:
            if self._open_connections > limit:
                await exchange.refuse_busy(f"too many open connections (limit {limit})")
            else:
                await exchange.run()

            await exchange.linger()
        except Exception as exc:  # one broken connection must not stop the filter
            exchange.error = exchange.error or repr(exc)
            log.exception("egress_connection_failed", sandbox=self.sandbox)

    async def _report(self, exchange: Exchange) -> None:
        if not exchange.heard:
            return

        attempt = self._attempt(exchange)

        # Every attempt reaches the audit through ``on_attempt``; on stderr, only
        # refusals are worth a line by default.
        fields = {"sandbox": self.sandbox, "host": attempt.host, "port": attempt.port}
        if attempt.decision == "allow":
            log.debug("egress_allowed", **fields, error=attempt.error)
        else:
            log.info("egress_denied", **fields, reason=attempt.reason)

        if self._on_attempt is None:
            return

        try:
            await self._on_attempt(attempt)
        except Exception:  # the callback's failure is its own to report
            log.exception("egress_report_failed", sandbox=self.sandbox)

    def _attempt(self, exchange: Exchange) -> EgressAttempt:
        relay = exchange.relay
        return EgressAttempt(
            sandbox=self.sandbox,
            host=exchange.host,
            port=exchange.port,
            addresses=exchange.addresses,
            decision="allow" if exchange.allowed else "deny",
            reason=exchange.reason,
            bytes_up=relay.bytes_up if relay else 0,
            bytes_down=relay.bytes_down if relay else 0,
            duration_ms=round((anyio.current_time() - exchange.started) * 1000, 3),
            protocol=exchange.protocol,
            rule=exchange.rule,
            error=exchange.error,
            context=exchange.context,
        )


async def _listen(path: Path) -> SocketListener:
    """A listener on ``path`` any sandbox uid may connect to.

    The socket is world-writable so that the sandbox's unprivileged uid can connect
    through its bind mount; the private (0700) folder around it keeps everyone
    else on the host out.
    """
    if len(bytes(path)) > MAX_SOCKET_PATH_BYTES:
        raise SandboxError(
            f"egress socket path {path} is longer than {MAX_SOCKET_PATH_BYTES} bytes;"
            " point TMPDIR at a shorter folder"
        )

    try:
        return await anyio.create_unix_listener(path, mode=0o666)
    except OSError as exc:
        raise SandboxError(f"cannot listen on egress socket {path}: {exc}") from exc
