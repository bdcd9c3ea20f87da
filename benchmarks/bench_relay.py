"""Relay overhead: the same echo server called directly and through the proxy.

Prints p50/p99 latency with one call in flight, calls/s with 16 in flight (the
median of rounds that the two connections take in turn), a 64 KiB payload case,
spawn-to-initialize time and the proxy's RSS with three servers (once they are
up and listed, and again after every call above), each with its ratio against
the direct connection. The proxy runs the ``process`` backend with auditing
off, so the figures are the relay's own cost. Like a real client, each
connection lists the tools before it calls one. The p50 is measured again with
``pollMicroseconds: 0``, to show what the poll before each sleep buys. The
throughput rounds include a bare relay (``_bare_relay.py``: decode, new id,
encode, nothing else), the yardstick of what any relay in Python reaches on
the machine at the time.
"""

from __future__ import annotations

import time
from typing import Any

from _harness import (
    LineClient,
    bare_relay_argv,
    echo_argv,
    latencies_us,
    p50,
    percentile,
    proxy_argv,
    proxy_config,
    rss_kib,
    throughput,
)

CALLS = 3000
THROUGHPUT_CALLS = 5000
THROUGHPUT_ROUNDS = 7
WINDOW = 16
PAYLOAD_BYTES = 64 * 1024
STARTS = 9


def measure(client: LineClient, tool: str) -> dict[str, float]:
    assert tool in client.list_tools()
    latencies_us(client, tool, {"text": "warm"}, 300)
    small = latencies_us(client, tool, {"text": "ping"}, CALLS)
    large = latencies_us(client, tool, {"text": "", "pad": PAYLOAD_BYTES}, CALLS // 5)
    return {
        "p50_us": p50(small),
        "p99_us": percentile(small, 0.99),
        "p50_64k_us": p50(large),
    }


def interleaved_throughput(
    connections: dict[str, tuple[LineClient, str]],
) -> dict[str, float]:
    """Median calls/s of each connection (client, tool) over rounds taken in
    turn: this machine's speed drifts by a third within a minute, and taking
    turns spreads the drift over every side instead of biasing the ratios."""
    rounds: dict[str, list[float]] = {name: [] for name in connections}
    for _ in range(THROUGHPUT_ROUNDS):
        for name, (client, tool) in connections.items():
            rounds[name].append(
                throughput(client, tool, {"text": "t"}, THROUGHPUT_CALLS, WINDOW)
            )

    return {name: p50(figures) for name, figures in rounds.items()}


def servers() -> dict[str, Any]:
    """Three echo servers behind one proxy."""
    return {
        name: {"command": echo_argv()[0], "args": echo_argv()[1:]}
        for name in ("one", "two", "three")
    }


def start_time_ms(argv: list[str]) -> float:
    times = []
    for _ in range(STARTS):
        client = LineClient(argv)
        times.append(client.initialize() * 1000)
        client.close()

    return p50(times)


def main() -> None:
    direct = LineClient(echo_argv())
    direct.initialize()
    direct_figures = measure(direct, "echo")

    proxied = LineClient(proxy_argv(proxy_config(servers())))
    proxied.initialize()
    proxied.list_tools()
    time.sleep(0.2)
    idle_rss_mib = rss_kib(proxied.process.pid) / 1024
    proxy_figures = measure(proxied, "one__echo")
    bare = LineClient(bare_relay_argv())
    bare.initialize()
    calls_per_s = interleaved_throughput(
        {
            "direct": (direct, "echo"),
            "proxy": (proxied, "one__echo"),
            "bare": (bare, "echo"),
        }
    )
    direct_figures["calls_per_s"] = calls_per_s["direct"]
    proxy_figures["calls_per_s"] = calls_per_s["proxy"]
    time.sleep(0.2)
    rss_mib = rss_kib(proxied.process.pid) / 1024
    direct.close()
    proxied.close()
    bare.close()

    single = proxy_config(
        {"echo": {"command": echo_argv()[0], "args": echo_argv()[1:]}}
    )
    direct_start = start_time_ms(echo_argv())
    proxy_start = start_time_ms(proxy_argv(single))
    # The same calls with polling off: what the poll before each sleep buys.
    unpolled = LineClient(proxy_argv(proxy_config(servers(), poll_us=0)))
    unpolled.initialize()
    assert "one__echo" in unpolled.list_tools()
    latencies_us(unpolled, "one__echo", {"text": "warm"}, 300)
    unpolled_p50 = p50(latencies_us(unpolled, "one__echo", {"text": "ping"}, CALLS))
    unpolled.close()

    print(f"{'measure':<28}{'direct':>12}{'proxy':>12}{'ratio':>8}{'added':>12}")
    for key, label in (
        ("p50_us", "p50 latency (us)"),
        ("p99_us", "p99 latency (us)"),
        ("p50_64k_us", "p50 64 KiB result (us)"),
        ("calls_per_s", f"calls/s, {WINDOW} in flight"),
    ):
        d, p = direct_figures[key], proxy_figures[key]
        print(f"{label:<28}{d:>12.1f}{p:>12.1f}{p / d:>8.2f}{p - d:>12.1f}")

    d, b = direct_figures["calls_per_s"], calls_per_s["bare"]
    print(f"{'calls/s, bare relay':<28}{d:>12.1f}{b:>12.1f}{b / d:>8.2f}{b - d:>12.1f}")
    d = direct_figures["p50_us"]
    print(
        f"{'p50, polling off (us)':<28}{d:>12.1f}{unpolled_p50:>12.1f}"
        f"{unpolled_p50 / d:>8.2f}{unpolled_p50 - d:>12.1f}"
    )
    print(
        f"{'spawn to initialize (ms)':<28}{direct_start:>12.1f}{proxy_start:>12.1f}"
        f"{proxy_start / direct_start:>8.2f}{proxy_start - direct_start:>12.1f}"
    )
    print(f"{'RSS, 3 servers up (MiB)':<28}{'':>12}{idle_rss_mib:>12.1f}")
    print(f"{'RSS after the calls (MiB)':<28}{'':>12}{rss_mib:>12.1f}")


if __name__ == "__main__":
    main()
