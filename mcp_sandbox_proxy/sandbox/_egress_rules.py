"""Which destinations the egress filter may connect to: host names checked for
shape, and resolved addresses sorted into the ranges that stay closed.

Two classes of address are refused. Some are never a destination, whatever the
policy: the cloud metadata services (they hand out the host's cloud credentials),
unspecified addresses (``0.0.0.0`` reaches the host itself), multicast and the
reserved range. The others are refused unless the policy sets ``allowPrivate``:
loopback, private networks, shared address space, link-local, tunnel prefixes that
wrap an IPv4 address, and anything else that is not globally routable. An
IPv4-mapped or NAT64 address is judged by the IPv4 address it wraps.
"""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Longest DNS name, in characters, without the trailing dot.
MAX_HOST_CHARS = 253

_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _networks(table: dict[str, tuple[str, ...]]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple(
        (ipaddress.ip_network(network), label)
        for label, networks in table.items()
        for network in networks
    )


# Refused whatever the policy says; checked first, so that the metadata services
# inside the link-local and private ranges keep their own reason.
NEVER_REACHABLE = _networks(
    {
        "a cloud metadata service": (
            "169.254.169.254/32",
            "169.254.170.2/32",
            "100.100.100.200/32",
            "fd00:ec2::254/128",
        ),
        "an unspecified address": ("0.0.0.0/8", "::/128"),
        "a multicast address": ("224.0.0.0/4", "ff00::/8"),
        "a reserved or broadcast address": ("240.0.0.0/4",),
    }
)

# Refused unless the policy opts in with ``allowPrivate``; any other address that
# is not globally routable is refused with them.
PRIVATE = _networks(
    {
        "a loopback address": ("127.0.0.0/8", "::1/128"),
        "a private network address": (
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
            "fec0::/10",
        ),
        "shared address space (carrier NAT, VPN overlays)": ("100.64.0.0/10",),
        "a link-local address": ("169.254.0.0/16", "fe80::/10"),
        "a tunnel address wrapping IPv4 (6to4, Teredo)": ("2002::/16", "2001::/32"),
    }
)


def normalize_host(text: str) -> str:
    """A requested host in canonical form: an IP address, or a lower-case name.

    Refused with ``ValueError``: anything but ASCII letters, digits, ``-``, ``_``
    and dots, over-long names and labels, and names whose last label is numeric
    (``127.1``, ``2130706433``), which resolvers read as disguised IPv4 addresses.
    """
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass

    name = host.lower().removesuffix(".")
    labels = name.split(".")
    if not name or len(name) > MAX_HOST_CHARS or not all(map(_LABEL.match, labels)):
        raise ValueError(
            f"{text!r} is not a host name or IP address"
            " (international names must be sent in their xn-- form)"
        )

    if labels[-1].isdigit():
        raise ValueError(f"{text!r} is neither a dotted IP address nor a host name")

    return name


def address_refusal(address: str, *, allow_private: bool) -> str | None:
    """Why ``address`` may not be connected to, or ``None`` when it may."""
    ip = _unwrapped(ipaddress.ip_address(address))
    label = _label(ip, NEVER_REACHABLE)
    if label is not None:
        return f"{address} is {label}, which is never reachable"

    if allow_private:
        return None

    label = _label(ip, PRIVATE)
    if label is None and not ip.is_global:
        label = "a special-purpose address that is not globally routable"

    if label is None:
        return None

    return f"{address} is {label}; the policy does not set allowPrivate"


def _unwrapped(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv4-mapped or NAT64 IPv6 address stands for."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip

    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped

    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)

    return ip


def _label(ip: IPAddress, table: tuple[tuple[IPNetwork, str], ...]) -> str | None:
    return next((label for network, label in table if ip in network), None)
