"""Units and egress entries as policy files write them."""

from __future__ import annotations

import pytest

from mcp_sandbox_proxy.policy.models import (
    EgressRule,
    parse_cores,
    parse_count,
    parse_duration,
    parse_egress,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512MiB", 512 * 1024 * 1024),
        ("1.5GiB", 3 * 512 * 1024 * 1024),
        ("64KiB", 64 * 1024),
        ("64kB", 64_000),
        ("2 MB", 2_000_000),
        (4096, 4096),
        ("100", 100),
        ("unlimited", None),
    ],
)
def test_sizes_are_read_in_binary_and_decimal_units(
    text: str | int, size: int | None
) -> None:
    """Sizes take binary (KiB) and decimal (kB) units, bare bytes, or unlimited."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["lots", "512M", "-1", "1.5.2GiB", True, 2.5])
def test_a_size_without_a_known_unit_is_refused_with_an_example(
    text: str | int,
) -> None:
    """A size that cannot be read says what a size looks like."""
    with pytest.raises(ValueError, match="expected a size such as '512MiB' or"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("60s", 60.0), ("500ms", 0.5), ("2m", 120.0), ("1h", 3600.0), (30, 30.0)],
)
def test_durations_are_read_in_seconds(text: str | int, seconds: float) -> None:
    """Durations take ms, s, m and h, or a plain number of seconds."""
    assert parse_duration(text) == seconds


def test_a_zero_duration_is_refused() -> None:
    """A call cannot be given no time at all."""
    with pytest.raises(ValueError, match=r"expected a duration such as '60s'.*'0s'"):
        parse_duration("0s")


def test_cores_and_counts_accept_unlimited_and_refuse_nonsense() -> None:
    """Cores are positive numbers, counts positive integers; both may be unlimited."""
    assert parse_cores("1.5") == 1.5
    assert parse_cores("unlimited") is None
    assert parse_count(64) == 64
    assert parse_count("unlimited") is None
    with pytest.raises(ValueError, match=r"number of CPU cores such as 1\.5, got 0"):
        parse_cores(0)

    with pytest.raises(ValueError, match="whole number of at least 1, got 0"):
        parse_count(0)


@pytest.mark.parametrize(
    ("entry", "rule"),
    [
        ("example.com:443", EgressRule("example.com", 443)),
        ("*.Example.com:443", EgressRule("*.example.com", 443)),
        ("10.0.0.0/8:5432", EgressRule("10.0.0.0/8", 5432)),
        ("[2001:db8::1]:80", EgressRule("2001:db8::1", 80)),
        ("*:*", EgressRule("*", None)),
    ],
)
def test_egress_entries_name_hosts_wildcards_addresses_and_networks(
    entry: str, rule: EgressRule
) -> None:
    """Names, wildcards, IPs (IPv6 in brackets) and CIDRs, each with a port."""
    assert parse_egress(entry) == rule


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("example.com", "expected 'host:port'"),
        ("2001:db8::1:80", "expected 'host:port'"),
        ("exa mple.com:443", "expected 'host:port'"),
        ("example.com:http", "port must be a number from 1 to 65535 or '*'"),
        ("example.com:70000", "port must be a number from 1 to 65535 or '*'"),
    ],
)
def test_a_malformed_egress_entry_is_refused(entry: str, message: str) -> None:
    """An entry without a port, a bad name or a bad port is refused."""
    with pytest.raises(ValueError, match=message):
        parse_egress(entry)


def test_a_wildcard_matches_names_below_the_domain_only() -> None:
    """``*.example.com`` allows api.example.com, not example.com nor evilexample.com."""
    rule = parse_egress("*.example.com:443")

    assert rule.matches("api.example.com", 443)
    assert not rule.matches("example.com", 443)
    assert not rule.matches("evilexample.com", 443)
    assert not rule.matches("api.example.com", 80)


def test_networks_match_addresses_of_their_own_family() -> None:
    """A CIDR matches addresses inside it; IPv4 rules never match IPv6 and back."""
    rule = parse_egress("10.0.0.0/8:*")

    assert rule.matches("10.1.2.3", 22)
    assert not rule.matches("11.0.0.1", 22)
    assert not rule.matches("::1", 22)
    assert not rule.matches("ten.example", 22)


def test_rules_to_everything_are_recognised() -> None:
    """``*`` and a /0 network reach every address; a domain does not."""
    assert parse_egress("*:443").is_everything
    assert parse_egress("0.0.0.0/0:*").is_everything
    assert parse_egress("[::/0]:443").is_everything
    assert not parse_egress("*.example.com:*").is_everything
