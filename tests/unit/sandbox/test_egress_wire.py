"""The egress filter's protocols as bytes: HTTP proxy heads and SOCKS5 messages."""

from __future__ import annotations

import pytest

from mcp_sandbox_proxy.sandbox._egress_wire import (
    Refusal,
    connect_destination,
    forward_destination,
    host_header,
    http_refusal,
    origin_head,
    parse_http_head,
    parse_socks_request,
    socks_method_reply,
    socks_reply,
    socks_request_size,
    split_authority,
)


def _head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def test_a_connect_head_names_its_host_and_port() -> None:
    """``CONNECT host:port`` gives the tunnel's destination."""
    request = parse_http_head(_head("CONNECT Web.Test:443 HTTP/1.1", "Host: x"))

    assert request.method == "CONNECT"
    assert connect_destination(request) == ("web.test", 443)


def test_a_connect_to_an_ipv6_address_needs_brackets() -> None:
    """IPv6 authorities are bracketed; a bare one is ambiguous and refused."""
    bracketed = parse_http_head(_head("CONNECT [2001:db8::1]:443 HTTP/1.1"))
    bare = parse_http_head(_head("CONNECT 2001:db8::1:443 HTTP/1.1"))

    assert connect_destination(bracketed) == ("2001:db8::1", 443)
    with pytest.raises(ValueError):
        connect_destination(bare)


@pytest.mark.parametrize("target", ["web.test", "web.test:0", "web.test:65536", ":80"])
def test_a_connect_without_a_valid_port_or_host_is_refused(target: str) -> None:
    """The port is required and must be 1 to 65535."""
    request = parse_http_head(_head(f"CONNECT {target} HTTP/1.1"))

    with pytest.raises(ValueError):
        connect_destination(request)


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("http://web.test/page?q=1", ("web.test", 80, "/page?q=1")),
        ("HTTP://web.test:8080", ("web.test", 8080, "/")),
        ("http://web.test?x", ("web.test", 80, "/?x")),
        ("http://[::1]:8080/a", ("::1", 8080, "/a")),
    ],
)
def test_a_forwarded_request_names_host_port_and_path(
    target: str, expected: tuple[str, int, str]
) -> None:
    """Absolute ``http://`` URLs give host, port (80 by default) and origin path."""
    request = parse_http_head(_head(f"GET {target} HTTP/1.1"))

    assert forward_destination(request) == expected


@pytest.mark.parametrize(
    "target",
    [
        "/relative",
        "https://web.test/",
        "ftp://web.test/",
        "http://user@evil.test/",
        "http://web.test:8080@evil.test/",
        "http:///nohost",
    ],
)
def test_a_forwarded_request_needs_a_plain_absolute_http_url(target: str) -> None:
    """Origin-form, https, other schemes and user info in URLs are refused."""
    request = parse_http_head(_head(f"GET {target} HTTP/1.1"))

    with pytest.raises(ValueError):
        forward_destination(request)


@pytest.mark.parametrize(
    "head",
    [
        b"GET http://a/ HTTP/1.1\r\n",
        _head("GET http://a/ HTTP/2.0"),
        _head("GET  http://a/ HTTP/1.1"),
        _head("G(T http://a/ HTTP/1.1"),
        _head("GET http://a/ HTTP/1.1", "Bad Name: x"),
        _head("GET http://a/ HTTP/1.1", "X: a", " folded"),
        _head("GET http://a/ HTTP/1.1", "X: a\nInjected: b"),
        _head("GET http://a/ HTTP/1.1", "X: a\rb"),
        _head("GET http://a/\x00 HTTP/1.1"),
    ],
)
def test_malformed_request_heads_are_refused(head: bytes) -> None:
    """Strict parsing: bad versions, tokens, folded lines and stray CR/LF/NUL."""
    with pytest.raises(ValueError):
        parse_http_head(head)


def test_the_origin_head_has_its_own_host_and_closes_after_one_request() -> None:
    """Hop-by-hop headers go; Host follows the URL; ``Connection: close`` added."""
    request = parse_http_head(
        _head(
            "POST http://web.test:8080/form HTTP/1.1",
            "Host: elsewhere.test",
            "Proxy-Authorization: Basic c2VjcmV0",
            "Connection: keep-alive, X-Private",
            "X-Private: drop me",
            "Content-Length: 2",
            "Accept: */*",
        )
    )
    host, port, path = forward_destination(request)

    assert origin_head(request, host, port, path) == _head(
        "POST /form HTTP/1.1",
        "Host: web.test:8080",
        "Content-Length: 2",
        "Accept: */*",
        "Connection: close",
    )


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("web.test", 80, "web.test"),
        ("web.test", 81, "web.test:81"),
        ("::1", 80, "[::1]"),
    ],
)
def test_the_host_header_leaves_out_port_80_and_brackets_ipv6(
    host: str, port: int, expected: str
) -> None:
    """``Host`` is written as a browser would."""
    assert host_header(host, port) == expected


def test_an_http_refusal_is_a_complete_response_with_the_reason() -> None:
    """The status, a length-delimited body naming the reason, and a close."""
    response = http_refusal(Refusal.FORBIDDEN, "no allow rule matches a:1")
    head, _, body = response.partition(b"\r\n\r\n")

    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" in head
    assert body == b"mcp-sandbox-proxy egress: no allow rule matches a:1\n"


def test_socks_greeting_accepts_only_no_authentication() -> None:
    """Method 0 is chosen when offered; otherwise nothing is acceptable."""
    assert socks_method_reply(b"\x02\x00") == b"\x05\x00"
    assert socks_method_reply(b"\x02") == b"\x05\xff"


@pytest.mark.parametrize(
    ("message", "command", "host", "port"),
    [
        (b"\x05\x01\x00\x03\x08web.test\x1f\x90", "connect", "web.test", 8080),
        (b"\x05\x01\x00\x01\x0a\xc7\x01\x02\x00\x50", "connect", "10.199.1.2", 80),
        (
            b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x01\xbb",
            "connect",
            "::1",
            443,
        ),
        (b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00", "udp-associate", "0.0.0.0", 0),
        (b"\x05\x02\x00\x03\x08web.test\x00\x50", "bind", "web.test", 80),
    ],
)
def test_socks_requests_are_sized_and_parsed(
    message: bytes, command: str, host: str, port: int
) -> None:
    """Domain, IPv4 and IPv6 destinations with CONNECT, UDP ASSOCIATE and BIND."""
    assert socks_request_size(message[:5]) == len(message)

    request = parse_socks_request(message)

    assert (request.command, request.host, request.port) == (command, host, port)


@pytest.mark.parametrize(
    "message",
    [
        b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
        b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50",
        b"\x05\x01\x00\x03\x05b\xc3\xbcch\x00\x50",
        b"\x05\x01\x00\x03\x05127.1\x00\x50",
    ],
)
def test_malformed_socks_requests_are_refused(message: bytes) -> None:
    """Wrong version, unknown command, non-ASCII or numeric names."""
    with pytest.raises(ValueError):
        parse_socks_request(message)


def test_an_unknown_socks_address_type_is_refused() -> None:
    """Only IPv4, domain name and IPv6 destinations exist."""
    with pytest.raises(ValueError, match="address type 2"):
        socks_request_size(b"\x05\x01\x00\x02\x00")


def test_socks_replies_do_not_disclose_the_bound_address() -> None:
    """Success and failure replies carry 0.0.0.0:0."""
    assert socks_reply(0x02) == b"\x05\x02\x00\x01" + bytes(6)


@pytest.mark.parametrize(
    ("authority", "default"), [("a.test", 80), ("a.test:80", None)]
)
def test_an_authority_takes_its_port_or_the_default(
    authority: str, default: int | None
) -> None:
    """``split_authority`` falls back to the scheme's port only when given one."""
    assert split_authority(authority, default) == ("a.test", 80)
