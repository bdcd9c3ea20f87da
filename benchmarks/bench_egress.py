"""Egress overhead: the same pages fetched directly and through filter and bridge.

A test host in a network namespace of its own (joined by a veth pair on a private
10.199.x.0/24 that exists only on this machine) serves a 1 KiB and a 1 MiB page.
Each fetch opens a new connection, as fetch servers do. Printed: p50 and p99 of
the small page directly, through the bridge's HTTP proxy and through a CONNECT
tunnel, then the large page's p50; each with its ratio to the direct fetch.

Needs root (``ip netns``). Run: ``python benchmarks/bench_egress.py``.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Callable, Generator
from contextlib import ExitStack, contextmanager

import anyio.from_thread
from _harness import p50, percentile

from mcp_sandbox_proxy.logs import configure_logging
from mcp_sandbox_proxy.policy.models import Network
from mcp_sandbox_proxy.sandbox import egress_bridge
from mcp_sandbox_proxy.sandbox.egress import EgressFilter, static_resolver

SMALL_FETCHES = 500
LARGE_FETCHES = 40
WARM_UP = 50
HOST_NAME = "bench.test"
HTTP_PORT = 8080
SMALL_BYTES = 1024
LARGE_BYTES = 1024 * 1024
BRIDGE_PORT = 18128
READY_TIMEOUT_S = 10.0

HOST_SERVER = r"""
import http.server, sys
pages = {"/small": b"s" * int(sys.argv[1]), "/large": b"l" * int(sys.argv[2])}

class Page(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = pages.get(self.path, b"")
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Page)
print("ready", flush=True)
server.serve_forever()
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@contextmanager
def test_host() -> Generator[str, None, None]:
    """A namespace serving the pages; its address while it runs."""
    octet = 100 + os.getpid() % 150
    namespace, outside, inside = f"msp-bench-{octet}", f"msb{octet}o", f"msb{octet}i"
    address = f"10.199.{octet}.2"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", namespace)
        _ip("addr", "add", f"10.199.{octet}.1/24", "dev", outside)
        _ip("link", "set", outside, "up")
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", inside)
        _ip("-n", namespace, "link", "set", inside, "up")
        with _started(
            ["ip", "netns", "exec", namespace, sys.executable, "-c", HOST_SERVER,
             str(SMALL_BYTES), str(LARGE_BYTES)]
        ):  # fmt: skip
            yield address
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", namespace], check=False)


@contextmanager
def _started(
    argv: list[str], env: dict[str, str] | None = None
) -> Generator[None, None, None]:
    """A process that says ``ready`` on stdout once it serves; killed after."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    try:
        if process.stdout.readline() != b"ready\n":
            raise RuntimeError(f"{argv[0]} did not start")

        yield
    finally:
        process.kill()
        process.wait()


def fetch(host: str, port: int, target: str, tunnel: bool = False) -> float:
    """Seconds for one GET on a new connection, the body read to its end."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection(host, port, timeout=10)
    if tunnel:
        conn.set_tunnel(HOST_NAME, HTTP_PORT)

    conn.request("GET", target)
    conn.getresponse().read()
    conn.close()
    return time.perf_counter() - start


def timings(
    actions: dict[str, Callable[[], float]], count: int
) -> dict[str, list[float]]:
    """Milliseconds per fetch for each way, taken in turns so drift hits all alike."""
    for _ in range(WARM_UP):
        for action in actions.values():
            action()

    figures: dict[str, list[float]] = {label: [] for label in actions}
    for _ in range(count):
        for label, action in actions.items():
            figures[label].append(action() * 1e3)

    return figures


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench_egress needs root to build its network namespace")

    configure_logging(level="warning")
    network = Network.model_validate(
        {"allow": [f"{HOST_NAME}:{HTTP_PORT}"], "allowPrivate": True}
    )
    with ExitStack() as stack:
        address = stack.enter_context(test_host())
        portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
        egress = EgressFilter(
            sandbox="bench",
            rules=network.rules,
            allow_private=True,
            resolver=static_resolver({HOST_NAME: [address]}),
        )
        serving, socket_path = portal.start_task(egress.serve)
        stack.callback(serving.cancel)
        bridge = [
            sys.executable,
            "-I",
            egress_bridge.__file__,
            "bridge",
            str(BRIDGE_PORT),
        ]
        env = {"MCP_EGRESS_SOCKET": str(socket_path)}
        stack.enter_context(_started(bridge, env))
        report(address)


def report(address: str) -> None:
    url = f"http://{HOST_NAME}:{HTTP_PORT}"
    small = timings(
        {
            "direct": lambda: fetch(address, HTTP_PORT, "/small"),
            "HTTP proxy": lambda: fetch("127.0.0.1", BRIDGE_PORT, f"{url}/small"),
            "CONNECT tunnel": lambda: fetch("127.0.0.1", BRIDGE_PORT, "/small", True),
        },
        SMALL_FETCHES,
    )
    large = timings(
        {
            "direct": lambda: fetch(address, HTTP_PORT, "/large"),
            "HTTP proxy": lambda: fetch("127.0.0.1", BRIDGE_PORT, f"{url}/large"),
        },
        LARGE_FETCHES,
    )
    for title, figures in (("1 KiB page", small), ("1 MiB page", large)):
        base = p50(figures["direct"])
        print(
            f"{title + ', new connection':<28}{'p50 ms':>10}{'p99 ms':>10}{'ratio':>8}"
        )
        for label, values in figures.items():
            middle, tail = p50(values), percentile(values, 0.99)
            print(f"{label:<28}{middle:>10.3f}{tail:>10.3f}{middle / base:>8.2f}")


if __name__ == "__main__":
    main()
