"""The egress filter's protocols without I/O: HTTP proxy request heads and SOCKS5
requests parsed from bytes, and every reply built as bytes.

Parsers raise ``ValueError`` naming what is wrong; the filter turns that into a
refusal. HTTP heads are parsed strictly (CRLF line ends, token names, no folded
lines, no user info in URLs), since a lenient parser is where smuggling starts.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import Enum

from mcp_sandbox_proxy.sandbox._egress_rules import normalize_host

HTTP_DEFAULT_PORT = 80
HEAD_END = b"\r\n\r\n"
CONNECT_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"

SOCKS_VERSION = 5
SOCKS_NO_AUTH = 0x00
SOCKS_NO_ACCEPTABLE_METHOD = 0xFF
SOCKS_COMMANDS = {1: "connect", 2: "bind", 3: "udp-associate"}
SOCKS_IPV4, SOCKS_DOMAIN, SOCKS_IPV6 = 1, 3, 4
# Version, command, reserved byte, address type, then the address's first byte:
# enough to know the request's full length.
SOCKS_REQUEST_PREFIX_BYTES = 5

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Bare CR, LF, NUL and other control bytes (tab aside) inside a head line.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_VERSION = re.compile(r"^HTTP/1\.[01]$")
_ABSOLUTE_HTTP = re.compile(r"^http://([^/?#@\s]+)([/?][^#\s]*)?$", re.IGNORECASE)
# Headers that belong to one hop: dropped before a request goes on.
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "te"}
)


class Refusal(Enum):
    """Why a request gets no connection, with its HTTP status and SOCKS5 code."""

    MALFORMED = (400, "Bad Request", 0x01)
    FORBIDDEN = (403, "Forbidden", 0x02)
    UNSUPPORTED = (501, "Not Implemented", 0x07)
    TOO_LARGE = (431, "Request Header Fields Too Large", 0x01)
    BUSY = (503, "Service Unavailable", 0x01)
    UNREACHABLE = (502, "Bad Gateway", 0x04)
    TIMEOUT = (504, "Gateway Timeout", 0x06)

    def __init__(self, status: int, phrase: str, socks_code: int) -> None:
        self.status = status
        self.phrase = phrase
        self.socks_code = socks_code


@dataclass(frozen=True)
class HttpRequest:
    """A parsed HTTP request head: request line and headers, in order."""

    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class SocksRequest:
    """A SOCKS5 request: the command and the destination it names."""

    command: str
    host: str
    port: int


def parse_http_head(head: bytes) -> HttpRequest:
    """Parse a request head that ends with an empty line."""
    if not head.endswith(HEAD_END):
        raise ValueError("the request head does not end with an empty line")

    request_line, *lines = head[: -len(HEAD_END)].decode("latin-1").split("\r\n")
    stray = next(
        (line for line in (request_line, *lines) if _CONTROL.search(line)), None
    )
    if stray is not None:
        raise ValueError(f"control character in request head line {stray[:200]!r}")

    parts = request_line.split(" ")
    if len(parts) != 3 or not _TOKEN.match(parts[0]) or not _VERSION.match(parts[2]):
        raise ValueError(f"malformed request line {request_line[:200]!r}")

    return HttpRequest(parts[0], parts[1], parts[2], tuple(map(_header, lines)))


def _header(line: str) -> tuple[str, str]:
    name, colon, value = line.partition(":")
    if not colon or not _TOKEN.match(name):
        raise ValueError(f"malformed header line {line[:200]!r}")

    return name, value.strip(" \t")


def split_authority(authority: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as a canonical host and a port number."""
    host, port_text = authority, ""
    if authority.startswith("["):
        host, bracket, rest = authority.partition("]")
        host, port_text = host + bracket, rest.removeprefix(":")
        if rest and not rest.startswith(":"):
            raise ValueError(f"malformed authority {authority!r}")
    elif ":" in authority:
        host, _, port_text = authority.rpartition(":")
        if ":" in host:
            raise ValueError(f"IPv6 address without brackets in {authority!r}")

    if not port_text and default_port is not None:
        return normalize_host(host), default_port

    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{authority!r} needs a port number from 1 to 65535")

    return normalize_host(host), int(port_text)


def connect_destination(request: HttpRequest) -> tuple[str, int]:
    """The host and port of a ``CONNECT host:port`` request."""
    return split_authority(request.target)


def forward_destination(request: HttpRequest) -> tuple[str, int, str]:
    """Host, port and origin-form target of a request for an ``http://`` URL."""
    match = _ABSOLUTE_HTTP.match(request.target)
    if match is None:
        raise ValueError(
            f"a proxy request needs an absolute http:// URL without user info,"
            f" got {request.target[:200]!r} (https goes through CONNECT)"
        )

    host, port = split_authority(match.group(1), HTTP_DEFAULT_PORT)
    path = match.group(2) or "/"
    return host, port, path if path.startswith("/") else "/" + path


def origin_head(request: HttpRequest, host: str, port: int, path: str) -> bytes:
    """The head to send the origin server: origin-form, its own Host, one request.

    ``Connection: close`` keeps one proxied connection to one request, so that a
    client cannot reuse it for a request meant for another host.
    """
    named = {
        token.strip().lower()
        for name, value in request.headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    dropped = _HOP_BY_HOP | named | {"host"}
    kept = [(n, v) for n, v in request.headers if n.lower() not in dropped]
    lines = [
        f"{request.method} {path} {request.version}",
        f"Host: {host_header(host, port)}",
        *(f"{name}: {value}" for name, value in kept),
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def host_header(host: str, port: int) -> str:
    """The ``Host`` value for ``host:port``; IPv6 in brackets, port 80 left out."""
    shown = f"[{host}]" if ":" in host else host
    return shown if port == HTTP_DEFAULT_PORT else f"{shown}:{port}"


def http_refusal(refusal: Refusal, reason: str) -> bytes:
    """A complete HTTP response that refuses the request and says why."""
    body = f"mcp-sandbox-proxy egress: {reason}\n".encode()
    head = (
        f"HTTP/1.1 {refusal.status} {refusal.phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


def socks_method_reply(methods: bytes) -> bytes:
    """The answer to a SOCKS5 greeting: no authentication, or nothing acceptable."""
    chosen = SOCKS_NO_AUTH if SOCKS_NO_AUTH in methods else SOCKS_NO_ACCEPTABLE_METHOD
    return bytes([SOCKS_VERSION, chosen])


def socks_request_size(prefix: bytes) -> int:
    """The full length of the request whose first five bytes are ``prefix``."""
    address_type = prefix[3]
    if address_type == SOCKS_IPV4:
        return 4 + 4 + 2

    if address_type == SOCKS_IPV6:
        return 4 + 16 + 2

    if address_type == SOCKS_DOMAIN:
        return 4 + 1 + prefix[4] + 2

    raise ValueError(f"unknown SOCKS5 address type {address_type}")


def parse_socks_request(data: bytes) -> SocksRequest:
    """Parse a complete SOCKS5 request (its length from ``socks_request_size``)."""
    version, command, _, address_type = data[:4]
    if version != SOCKS_VERSION or command not in SOCKS_COMMANDS:
        raise ValueError(f"malformed SOCKS5 request (version {version}, {command=})")

    raw, port = data[4:-2], int.from_bytes(data[-2:], "big")
    if address_type == SOCKS_DOMAIN:
        name = raw[1:].decode("ascii", errors="replace")
        return SocksRequest(SOCKS_COMMANDS[command], normalize_host(name), port)

    return SocksRequest(SOCKS_COMMANDS[command], str(ipaddress.ip_address(raw)), port)


def socks_reply(code: int) -> bytes:
    """A SOCKS5 reply with ``code``; the bound address is not disclosed."""
    return bytes([SOCKS_VERSION, code, 0, SOCKS_IPV4, 0, 0, 0, 0, 0, 0])
