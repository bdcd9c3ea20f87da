"""One connection through the egress filter: read the request, decide, connect,
relay, and keep what happened for the filter's report.

The client speaks SOCKS5 when its first byte is 5, HTTP otherwise (``CONNECT`` for
a tunnel, an absolute ``http://`` URL for a forwarded request).
"""

from __future__ import annotations

import contextlib
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import SocketStream
from anyio.streams.buffered import BufferedByteReceiveStream

from mcp_sandbox_proxy.sandbox._egress_relay import Relay
from mcp_sandbox_proxy.sandbox._egress_rules import address_refusal
from mcp_sandbox_proxy.sandbox._egress_wire import (
    CONNECT_ESTABLISHED,
    HEAD_END,
    SOCKS_NO_ACCEPTABLE_METHOD,
    SOCKS_NO_AUTH,
    SOCKS_REQUEST_PREFIX_BYTES,
    SOCKS_VERSION,
    Refusal,
    connect_destination,
    forward_destination,
    http_refusal,
    origin_head,
    parse_http_head,
    parse_socks_request,
    socks_method_reply,
    socks_reply,
    socks_request_size,
)

if TYPE_CHECKING:
    from mcp_sandbox_proxy.policy.models import EgressRule
    from mcp_sandbox_proxy.sandbox.egress import EgressFilter

SOCKS_SUCCEEDED = 0x00
# After a refusal the filter reads what the client still sends, for this long and
# up to this much, before closing: closing with unread input would reset the
# connection, and the client could lose the refusal it was about to read.
LINGER_S = 1.0
LINGER_MAX_BYTES = 256 * 1024
_GONE = (
    anyio.EndOfStream,
    anyio.IncompleteRead,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    OSError,
)


@dataclass(frozen=True)
class Request:
    """Where a client wants to go, and the bytes that open the way once connected.

    ``established`` goes to the client, ``prefix`` (a rewritten request head) to
    the destination before anything else is relayed.
    """

    host: str
    port: int
    command: str = "connect"
    established: bytes = b""
    prefix: bytes = b""


class Exchange:
    """The state of one client connection, read by the filter's report."""

    def __init__(
        self, gate: EgressFilter, client: SocketStream, context: dict[str, Any]
    ) -> None:
        self.gate = gate
        self.client = client
        self.incoming = BufferedByteReceiveStream(client)
        self.context = context
        self.started = anyio.current_time()
        self.protocol = ""
        self.host = ""
        self.port = 0
        self.addresses: tuple[str, ...] = ()
        self.allowed = False
        self.reason = ""
        self.rule: str | None = None
        self.error: str | None = None
        self.relay: Relay | None = None
        self._can_reply = False

    @property
    def heard(self) -> bool:
        """Whether the client sent anything: an attempt worth reporting."""
        return bool(self.protocol or self.reason)

    async def refuse_busy(self, reason: str) -> None:
        """Refuse a connection over the limit, in the protocol its first byte shows."""
        self.reason = reason
        with anyio.move_on_after(LINGER_S), contextlib.suppress(*_GONE):
            first = await self.incoming.receive(1)
            reply = bytes([SOCKS_VERSION, SOCKS_NO_ACCEPTABLE_METHOD])
            if first[0] != SOCKS_VERSION:
                reply = http_refusal(Refusal.BUSY, reason)

            await self.client.send(reply)

    async def linger(self) -> None:
        """End the filter's side, then drain the client's (bounded) before closing."""
        if self.relay is not None:
            return

        with anyio.move_on_after(LINGER_S), contextlib.suppress(*_GONE):
            await self.client.send_eof()
            drained = 0
            while drained < LINGER_MAX_BYTES:
                drained += len(await self.incoming.receive())

    async def run(self) -> None:
        """Serve the connection from its first byte to its end."""
        limits = self.gate.limits
        try:
            with anyio.fail_after(limits.handshake_timeout_s):
                request = await self._read_request(limits.max_head_bytes)
        except TimeoutError:
            return await self._refuse(Refusal.TIMEOUT, "no complete request in time")
        except anyio.DelimiterNotFound:
            size = limits.max_head_bytes
            return await self._refuse(Refusal.TOO_LARGE, f"head over {size} bytes")
        except (anyio.IncompleteRead, anyio.EndOfStream):
            return await self._client_left()
        except ValueError as exc:
            return await self._refuse(Refusal.MALFORMED, str(exc))

        await self._serve(request)

    async def _serve(self, request: Request) -> None:
        self.host, self.port = request.host, request.port
        if request.command != "connect":
            reason = f"SOCKS5 {request.command} is refused: only TCP connections leave"
            return await self._refuse(Refusal.UNSUPPORTED, reason)

        refusal = await self._decide()
        if refusal is not None:
            return await self._refuse(*refusal)

        try:
            with anyio.fail_after(self.gate.limits.connect_timeout_s):
                upstream = await self._connect()
        except TimeoutError:
            return await self._refuse(Refusal.TIMEOUT, "connecting timed out")
        except OSError as exc:
            return await self._refuse(Refusal.UNREACHABLE, f"cannot connect: {exc}")

        async with upstream:
            await self._relay(request, upstream)

    async def _read_request(self, max_head_bytes: int) -> Request:
        first = await self.incoming.receive_exactly(1)
        if first[0] == SOCKS_VERSION:
            self.protocol = "socks5"
            return await self._read_socks()

        self.protocol = "http"
        self._can_reply = True
        head = first + await self.incoming.receive_until(HEAD_END, max_head_bytes)
        if len(head) > max_head_bytes:
            raise anyio.DelimiterNotFound(max_head_bytes)

        request = parse_http_head(head + HEAD_END)
        if request.method == "CONNECT":
            self.protocol = "http-connect"
            host, port = connect_destination(request)
            return Request(host, port, established=CONNECT_ESTABLISHED)

        host, port, path = forward_destination(request)
        return Request(host, port, prefix=origin_head(request, host, port, path))

    async def _read_socks(self) -> Request:
        count = (await self.incoming.receive_exactly(1))[0]
        methods = await self.incoming.receive_exactly(count)
        reply = socks_method_reply(methods)
        await self.client.send(reply)
        if reply[1] != SOCKS_NO_AUTH:
            raise ValueError(
                "the SOCKS5 client offers no method without authentication"
            )

        self._can_reply = True
        prefix = await self.incoming.receive_exactly(SOCKS_REQUEST_PREFIX_BYTES)
        size = socks_request_size(prefix)
        request = parse_socks_request(
            prefix + await self.incoming.receive_exactly(size - len(prefix))
        )
        if request.command == "connect" and request.port == 0:
            raise ValueError("SOCKS5 CONNECT to port 0")

        established = socks_reply(SOCKS_SUCCEEDED)
        return Request(request.host, request.port, request.command, established)

    async def _decide(self) -> tuple[Refusal, str] | None:
        """Rules first, then resolution, then every address; ``None`` allows."""
        rule = _first_match(self.gate.rules, self.host, self.port)
        if rule is None:
            return Refusal.FORBIDDEN, f"no allow rule matches {self.host}:{self.port}"

        self.rule = f"{rule.host}:{rule.port or '*'}"
        try:
            with anyio.fail_after(self.gate.limits.resolve_timeout_s):
                self.addresses = tuple(await self._resolve())
        except (OSError, TimeoutError) as exc:
            return Refusal.UNREACHABLE, f"{self.host} did not resolve: {exc}"

        allow_private = self.gate.allow_private
        for address in self.addresses:
            reason = address_refusal(address, allow_private=allow_private)
            if reason is not None:
                return Refusal.FORBIDDEN, reason

        self.allowed = True
        return None

    async def _resolve(self) -> list[str]:
        try:
            return [str(ipaddress.ip_address(self.host))]
        except ValueError:
            pass

        addresses = list(await self.gate.resolver(self.host, self.port))
        if not addresses:
            raise OSError("no addresses")

        return addresses

    async def _connect(self) -> SocketStream:
        """A connection to the first checked address that answers."""
        failure: OSError = OSError("no address to connect to")
        for address in self.addresses:
            try:
                return await anyio.connect_tcp(address, self.port)
            except OSError as exc:
                failure = exc

        raise failure

    async def _relay(self, request: Request, upstream: SocketStream) -> None:
        self.reason = f"allowed by rule {self.rule}"
        self.relay = Relay(idle_timeout_s=self.gate.limits.idle_timeout_s)
        await self.client.send(request.established)
        if request.prefix:
            await upstream.send(request.prefix)
            self.relay.bytes_up += len(request.prefix)

        await self.relay.run(self.incoming, self.client, upstream)
        if self.relay.idled_out:
            self.error = "closed after being idle"

    async def _refuse(self, refusal: Refusal, reason: str) -> None:
        """Answer with the refusal the client's protocol understands, then close."""
        if self.allowed:
            self.error = reason
            self.reason = f"allowed by rule {self.rule}"
        else:
            self.reason = reason

        if not self._can_reply:
            return

        if self.protocol == "socks5":
            reply = socks_reply(refusal.socks_code)
        else:
            reply = http_refusal(refusal, reason)

        try:
            await self.client.send(reply)
        except _GONE:
            self.error = self.error or "the client left before the refusal"

    async def _client_left(self) -> None:
        if self.protocol:
            self.reason = "the client closed the connection before a complete request"


def _first_match(
    rules: tuple[EgressRule, ...], host: str, port: int
) -> EgressRule | None:
    return next((rule for rule in rules if rule.matches(host, port)), None)
