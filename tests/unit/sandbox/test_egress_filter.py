"""The egress filter over its real Unix socket, in front of servers on loopback.

Destinations here are on 127.0.0.1, so the policies that should reach them set
``allowPrivate``; the test hosts in network namespaces are in the integration tests.
"""

from __future__ import annotations

import stat
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream

from mcp_sandbox_proxy.exceptions import SandboxError
from mcp_sandbox_proxy.policy.models import Network
from mcp_sandbox_proxy.sandbox.egress import (
    EgressAttempt,
    EgressFilter,
    EgressLimits,
    static_resolver,
    system_resolver,
)

pytestmark = pytest.mark.anyio

# Every exchange with the filter ends well within this.
EXCHANGE_TIMEOUT_S = 10.0
PAGE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"


class Recorder:
    """Collects attempts and the names the filter asked the resolver about."""

    def __init__(self, table: Mapping[str, Sequence[str]]) -> None:
        self.attempts: list[EgressAttempt] = []
        self.lookups: list[str] = []
        self._resolve = static_resolver(table)
        self._reported = anyio.Event()

    async def on_attempt(self, attempt: EgressAttempt) -> None:
        self.attempts.append(attempt)
        self._reported.set()
        self._reported = anyio.Event()

    async def settle(self, count: int) -> None:
        """Wait (bounded) until ``count`` attempts were reported."""
        with anyio.fail_after(EXCHANGE_TIMEOUT_S):
            while len(self.attempts) < count:
                await self._reported.wait()

    async def resolve(self, host: str, port: int) -> list[str]:
        self.lookups.append(host)
        return list(await self._resolve(host, port))


def _filter(
    recorder: Recorder, allow: list[str], *, private: bool = True, **options: Any
) -> EgressFilter:
    network = Network.model_validate({"allow": allow, "allowPrivate": private})
    return EgressFilter(
        sandbox="sandbox-1",
        rules=network.rules,
        allow_private=network.allow_private,
        on_attempt=recorder.on_attempt,
        resolver=recorder.resolve,
        call_context=lambda: {"tool": "fetch"},
        **options,
    )


@asynccontextmanager
async def serving(egress: EgressFilter) -> AsyncGenerator[Path, None]:
    """The filter serving; its socket path while it runs."""
    async with anyio.create_task_group() as group:
        yield await group.start(egress.serve)
        group.cancel_scope.cancel()


@asynccontextmanager
async def tcp_server(
    handler: Callable[[SocketStream], Awaitable[None]],
) -> AsyncGenerator[int, None]:
    """A server on 127.0.0.1; its port while it runs."""
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as group:
        group.start_soon(listener.serve, handler)
        yield listener.extra(SocketAttribute.local_port)
        group.cancel_scope.cancel()


async def echo(stream: SocketStream) -> None:
    async with stream:
        async for chunk in stream:
            await stream.send(chunk)


def page_server(heads: list[bytes]) -> Callable[[SocketStream], Awaitable[None]]:
    """A one-request HTTP server that keeps the heads it received."""

    async def serve(stream: SocketStream) -> None:
        async with stream:
            data = b""
            while b"\r\n\r\n" not in data:
                data += await stream.receive()

            heads.append(data)
            await stream.send(PAGE)

    return serve


async def talk(path: Path, data: bytes, *, end: bool = False) -> bytes:
    """Send ``data`` to the filter and read until it closes."""
    with anyio.fail_after(EXCHANGE_TIMEOUT_S):
        async with await anyio.connect_unix(path) as stream:
            await stream.send(data)
            if end:
                await stream.send_eof()

            return b"".join([chunk async for chunk in stream])


async def test_a_forwarded_request_reaches_the_allowed_host_in_origin_form() -> None:
    """Plain HTTP: the origin gets an origin-form head; the attempt is counted."""
    heads: list[bytes] = []
    recorder = Recorder({"web.test": ["127.0.0.1"]})
    async with tcp_server(page_server(heads)) as port:
        egress = _filter(recorder, [f"web.test:{port}"])
        async with serving(egress) as path:
            request = f"GET http://web.test:{port}/page HTTP/1.1\r\nHost: x\r\n\r\n"
            response = await talk(path, request.encode())
            await recorder.settle(1)

    assert response == PAGE
    assert heads[0].startswith(f"GET /page HTTP/1.1\r\nHost: web.test:{port}".encode())
    (attempt,) = recorder.attempts
    assert (attempt.decision, attempt.protocol, attempt.host) == (
        "allow",
        "http",
        "web.test",
    )
    assert (attempt.bytes_up, attempt.bytes_down) == (len(heads[0]), len(PAGE))
    assert attempt.addresses == ("127.0.0.1",) and attempt.rule == f"web.test:{port}"
    assert attempt.context == {"tool": "fetch"} and attempt.sandbox == "sandbox-1"


async def test_a_connect_tunnel_relays_both_ways_and_passes_the_end_on() -> None:
    """CONNECT: 200, then bytes both ways; the client's EOF reaches the echo."""
    recorder = Recorder({"echo.test": ["127.0.0.1"]})
    async with (
        tcp_server(echo) as port,
        serving(_filter(recorder, [f"echo.test:{port}"])) as path,
    ):
        request = f"CONNECT echo.test:{port} HTTP/1.1\r\n\r\n".encode()
        response = await talk(path, request + b"x" * 100_000, end=True)
        await recorder.settle(1)

    established = b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert response == established + b"x" * 100_000
    (attempt,) = recorder.attempts
    assert (attempt.protocol, attempt.bytes_up, attempt.bytes_down) == (
        "http-connect",
        100_000,
        100_000,
    )


async def test_socks5_connects_by_name_resolved_by_the_filter() -> None:
    """SOCKS5 CONNECT with a domain name: the filter resolves it, then relays."""
    recorder = Recorder({"echo.test": ["127.0.0.1"]})
    async with (
        tcp_server(echo) as port,
        serving(_filter(recorder, [f"echo.test:{port}"])) as path,
    ):
        name = b"echo.test"
        request = b"\x05\x01\x00\x05\x01\x00\x03" + bytes([len(name)]) + name
        response = await talk(path, request + port.to_bytes(2, "big") + b"hi", end=True)
        await recorder.settle(1)

    assert response == b"\x05\x00" + b"\x05\x00\x00\x01" + bytes(6) + b"hi"
    assert recorder.lookups == ["echo.test"]
    assert recorder.attempts[0].protocol == "socks5"


@pytest.mark.parametrize(
    "request_line",
    [
        "CONNECT other.test:{port} HTTP/1.1",
        "CONNECT web.test:1 HTTP/1.1",
        "CONNECT 127.0.0.1:{port} HTTP/1.1",
        "GET http://other.test:{port}/ HTTP/1.1",
    ],
)
async def test_destinations_without_a_rule_are_refused_before_any_lookup(
    request_line: str,
) -> None:
    """Another host, another port, or the IP address itself: 403, and no DNS."""
    heads: list[bytes] = []
    recorder = Recorder({"web.test": ["127.0.0.1"], "other.test": ["127.0.0.1"]})
    async with (
        tcp_server(page_server(heads)) as port,
        serving(_filter(recorder, [f"web.test:{port}"])) as path,
    ):
        line = request_line.format(port=port)
        response = await talk(path, f"{line}\r\n\r\n".encode())
        await recorder.settle(1)

    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert b"no allow rule matches" in response
    assert recorder.lookups == [] and heads == []
    (attempt,) = recorder.attempts
    assert attempt.decision == "deny" and attempt.addresses == ()


@pytest.mark.parametrize(
    ("addresses", "private", "said"),
    [
        (["127.0.0.1"], False, b"loopback"),
        (["93.184.215.14", "10.0.0.1"], False, b"private network"),
        (["169.254.169.254"], True, b"cloud metadata"),
    ],
)
async def test_an_allowed_name_resolving_to_a_closed_address_is_refused(
    addresses: list[str], private: bool, said: bytes
) -> None:
    """Rebinding an allowed name to loopback, the LAN or metadata does not work."""
    recorder = Recorder({"web.test": addresses})
    async with tcp_server(echo) as port:
        egress = _filter(recorder, [f"web.test:{port}"], private=private)
        async with serving(egress) as path:
            response = await talk(
                path, f"CONNECT web.test:{port} HTTP/1.1\r\n\r\n".encode()
            )
            await recorder.settle(1)

    assert response.startswith(b"HTTP/1.1 403") and said in response
    (attempt,) = recorder.attempts
    assert attempt.decision == "deny" and attempt.addresses == tuple(addresses)


@pytest.mark.parametrize(("command", "name"), [(3, "udp-associate"), (2, "bind")])
async def test_socks5_udp_associate_and_bind_are_refused(
    command: int, name: str
) -> None:
    """Only TCP CONNECT leaves: UDP ASSOCIATE and BIND get 'command not supported'."""
    recorder = Recorder({})
    async with serving(_filter(recorder, ["*:*"])) as path:
        request = (
            b"\x05\x01\x00\x05"
            + bytes([command])
            + b"\x00\x01"
            + bytes(4)
            + b"\x00\x35"
        )
        response = await talk(path, request)
        await recorder.settle(1)

    assert response == b"\x05\x00" + b"\x05\x07\x00\x01" + bytes(6)
    assert recorder.attempts[0].decision == "deny"
    assert name in recorder.attempts[0].reason


async def test_socks5_without_the_no_authentication_method_is_refused() -> None:
    """A client offering only username/password learns nothing is acceptable."""
    recorder = Recorder({})
    async with serving(_filter(recorder, ["*:*"])) as path:
        response = await talk(path, b"\x05\x01\x02")
        await recorder.settle(1)

    assert response == b"\x05\xff"
    assert "without authentication" in recorder.attempts[0].reason


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET /relative HTTP/1.1\r\n\r\n", b"400"),
        (b"GET http://a.test/ HTTP/1.1\r\nX: " + b"y" * 2000 + b"\r\n\r\n", b"431"),
        (b"GET http://a.test/ HTTP/1.1\r\n", b"504"),
    ],
)
async def test_malformed_oversized_and_unfinished_requests_are_answered(
    data: bytes, status: bytes
) -> None:
    """400 for a bad request, 431 for a head over the limit, 504 for a stalled one."""
    recorder = Recorder({})
    limits = EgressLimits(max_head_bytes=1024, handshake_timeout_s=0.2)
    async with serving(_filter(recorder, ["*:*"], limits=limits)) as path:
        response = await talk(path, data)
        await recorder.settle(1)

    assert response.split(b" ")[1] == status
    assert recorder.attempts[0].decision == "deny"


async def test_an_idle_tunnel_is_closed() -> None:
    """A tunnel on which nothing moves is closed after the idle bound."""
    recorder = Recorder({"echo.test": ["127.0.0.1"]})
    limits = EgressLimits(idle_timeout_s=0.2)
    async with (
        tcp_server(echo) as port,
        serving(_filter(recorder, [f"echo.test:{port}"], limits=limits)) as path,
    ):
        await talk(path, f"CONNECT echo.test:{port} HTTP/1.1\r\n\r\n".encode())
        await recorder.settle(1)

    assert recorder.attempts[0].decision == "allow"
    assert recorder.attempts[0].error == "closed after being idle"


async def test_connections_over_the_limit_are_closed_and_reported() -> None:
    """With one tunnel open and a limit of one, the next connection is closed."""
    recorder = Recorder({"echo.test": ["127.0.0.1"]})
    limits = EgressLimits(max_connections=1)
    async with (
        tcp_server(echo) as port,
        serving(_filter(recorder, [f"echo.test:{port}"], limits=limits)) as path,
    ):
        async with await anyio.connect_unix(path) as held:
            await held.send(f"CONNECT echo.test:{port} HTTP/1.1\r\n\r\n".encode())
            await held.receive()
            refused = await talk(path, b"CONNECT echo.test:1 HTTP/1.1\r\n\r\n")
            await recorder.settle(1)

        await recorder.settle(2)

    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable")
    assert recorder.attempts[0].reason == "too many open connections (limit 1)"
    assert recorder.attempts[1].decision == "allow"


async def test_an_allowed_destination_that_refuses_is_reported_with_its_error() -> None:
    """The policy allowed it, the host refused: 502, decision allow with an error."""
    recorder = Recorder({"web.test": ["127.0.0.1"]})
    async with tcp_server(echo) as port:
        pass

    async with serving(_filter(recorder, [f"web.test:{port}"])) as path:
        response = await talk(
            path, f"CONNECT web.test:{port} HTTP/1.1\r\n\r\n".encode()
        )
        await recorder.settle(1)

    assert response.startswith(b"HTTP/1.1 502 Bad Gateway")
    (attempt,) = recorder.attempts
    assert attempt.decision == "allow" and attempt.error is not None
    assert "cannot connect" in attempt.error


async def test_an_allowed_name_that_does_not_resolve_is_refused() -> None:
    """No address, no connection: 502 naming the lookup failure."""
    recorder = Recorder({})
    async with serving(_filter(recorder, ["nowhere.test:80"])) as path:
        response = await talk(path, b"CONNECT nowhere.test:80 HTTP/1.1\r\n\r\n")
        await recorder.settle(1)

    assert response.startswith(b"HTTP/1.1 502") and b"did not resolve" in response
    assert recorder.attempts[0].decision == "deny"


async def test_a_failing_report_does_not_stop_the_filter() -> None:
    """A callback that raises is logged; the next connection is still served."""
    recorder = Recorder({})

    async def broken(attempt: EgressAttempt) -> None:
        await recorder.on_attempt(attempt)
        raise RuntimeError("audit unavailable")

    egress = EgressFilter(sandbox="s", rules=(), on_attempt=broken)
    async with serving(egress) as path:
        first = await talk(path, b"CONNECT a.test:80 HTTP/1.1\r\n\r\n")
        second = await talk(path, b"CONNECT b.test:80 HTTP/1.1\r\n\r\n")
        await recorder.settle(2)

    assert first.startswith(b"HTTP/1.1 403") and second.startswith(b"HTTP/1.1 403")
    assert [attempt.host for attempt in recorder.attempts] == ["a.test", "b.test"]


async def test_a_failing_call_context_costs_only_the_context() -> None:
    """A context hook that raises leaves the attempt without context, still served."""
    recorder = Recorder({})

    def broken() -> Mapping[str, Any]:
        raise LookupError("no call is running")

    egress = EgressFilter(
        sandbox="s", rules=(), on_attempt=recorder.on_attempt, call_context=broken
    )
    async with serving(egress) as path:
        response = await talk(path, b"CONNECT a.test:80 HTTP/1.1\r\n\r\n")
        await recorder.settle(1)

    assert response.startswith(b"HTTP/1.1 403")
    assert recorder.attempts[0].context == {}


async def test_a_client_that_sends_nothing_is_not_an_attempt() -> None:
    """Connecting and leaving names no destination, so nothing is reported."""
    recorder = Recorder({})
    async with serving(_filter(recorder, ["*:*"])) as path:
        assert await talk(path, b"", end=True) == b""
        assert await talk(path, b"CONNECT a.test:1 HTTP/1.1\r\n\r\n") != b""
        await recorder.settle(1)

    assert [attempt.host for attempt in recorder.attempts] == ["a.test"]


async def test_the_socket_is_private_to_its_folder_and_removed_after() -> None:
    """A 0700 folder of its own; the socket open to the sandbox uid; both removed."""
    egress = EgressFilter(sandbox="s", rules=())
    async with serving(egress) as path:
        folder_mode = stat.S_IMODE(path.parent.stat().st_mode)
        socket_mode = stat.S_IMODE(path.stat().st_mode)
        assert egress.socket_path == path and stat.S_ISSOCK(path.stat().st_mode)

    assert (folder_mode, socket_mode) == (0o700, 0o666)
    assert not path.parent.exists() and egress.socket_path is None


async def test_a_socket_path_too_long_for_unix_sockets_is_refused(
    tmp_path: Path,
) -> None:
    """The error names the path and the way out instead of a bare OSError."""
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    egress = EgressFilter(sandbox="s", rules=(), socket_parent=deep)

    with pytest.raises(SandboxError, match="longer than 107 bytes; point TMPDIR"):
        await egress.serve()

    assert list(deep.iterdir()) == []


async def test_the_system_resolver_answers_from_the_hosts_file() -> None:
    """The default resolver uses getaddrinfo (here: localhost, no network)."""
    addresses = await system_resolver("localhost", 80)

    assert set(addresses) <= {"127.0.0.1", "::1"} and addresses
