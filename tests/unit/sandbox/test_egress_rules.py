"""Which hosts and addresses the egress filter accepts, and why it refuses others."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox_proxy.policy.models import Network
from mcp_sandbox_proxy.sandbox._egress_rules import address_refusal, normalize_host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("_service.example", "_service.example"),
        ("10.0.0.1", "10.0.0.1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("2001:db8:0::1", "2001:db8::1"),
    ],
)
def test_hosts_are_put_in_canonical_form(text: str, expected: str) -> None:
    """Names are lower-cased without their final dot; IP addresses canonical."""
    assert normalize_host(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "exa mple.com",
        "exam/ple.com",
        "user@example.com",
        "bücher.example",
        "-leading.example",
        "a..b",
        "x" * 64 + ".example",
        ("a" * 60 + ".") * 5 + "com",
    ],
)
def test_malformed_host_names_are_refused(text: str) -> None:
    """Anything but letters, digits, hyphens, underscores and dots is refused."""
    with pytest.raises(ValueError, match="not a host name"):
        normalize_host(text)


@pytest.mark.parametrize("text", ["127.1", "2130706433", "0x7f.1", "010.0.0.1"])
def test_disguised_ipv4_addresses_are_refused(text: str) -> None:
    """Shorthand and numeric forms that resolvers read as IPv4 are not names."""
    with pytest.raises(ValueError, match="neither a dotted IP address nor a host name"):
        normalize_host(text)


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private network"),
        ("172.16.0.1", "private network"),
        ("192.168.1.1", "private network"),
        ("fd12:3456::1", "private network"),
        ("100.64.0.1", "shared address space"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("2002:a00:1::1", "tunnel address"),
        ("198.18.0.1", "not globally routable"),
        ("192.0.2.1", "not globally routable"),
        ("::ffff:127.0.0.1", "loopback"),
        ("64:ff9b::a00:1", "private network"),
    ],
)
def test_private_addresses_are_refused_without_the_opt_in(
    address: str, label: str
) -> None:
    """Loopback, LAN, link-local and other non-global addresses need allowPrivate."""
    reason = address_refusal(address, allow_private=False)

    assert reason is not None and label in reason and "allowPrivate" in reason
    assert address_refusal(address, allow_private=True) is None


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("::ffff:169.254.169.254", "cloud metadata"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("255.255.255.255", "reserved or broadcast"),
    ],
)
def test_some_addresses_are_refused_even_with_the_opt_in(
    address: str, label: str
) -> None:
    """Metadata services, unspecified, multicast and broadcast are never reached."""
    reason = address_refusal(address, allow_private=True)

    assert reason is not None and label in reason and "never reachable" in reason


@pytest.mark.parametrize(
    "address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "1.1.1.1"]
)
def test_global_unicast_addresses_are_accepted(address: str) -> None:
    """A globally routable address passes (the allow rules decide about it)."""
    assert address_refusal(address, allow_private=False) is None


@given(st.ip_addresses(network="10.0.0.0/8") | st.ip_addresses(network="127.0.0.0/8"))
def test_every_address_of_a_private_range_is_refused(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    """Not just the usual hosts: every address in the range is refused."""
    assert address_refusal(str(address), allow_private=False) is not None


@given(st.ip_addresses(v=4))
def test_a_refusal_never_opens_anything_the_opt_in_keeps_closed(
    address: ipaddress.IPv4Address,
) -> None:
    """Whatever allowPrivate opens, it never opens more than without it refuses."""
    closed_with = address_refusal(str(address), allow_private=True)
    closed_without = address_refusal(str(address), allow_private=False)

    assert closed_with is None or closed_without is not None


def test_policy_rules_match_names_not_their_addresses() -> None:
    """A rule for a name does not cover its IP address, nor other ports or hosts."""
    network = Network.model_validate({"allow": ["web.test:8080"]})
    (rule,) = network.rules

    assert rule.matches("web.test", 8080)
    assert not rule.matches("10.199.1.2", 8080)
    assert not rule.matches("web.test", 9000)
    assert not rule.matches("other.test", 8080)
