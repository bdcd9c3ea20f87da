"""Egress through the filter, against a small network this module builds itself.

Each test host is a network namespace joined to this one by a veth pair on its own
10.199.x.0/24: its addresses exist only inside the namespaces made here and on
their host ends, so nothing reaches beyond this machine. A host serves HTTP (8080,
logging every request path), TCP echo (9000), UDP echo (5353) and answers UDP on
port 53 like a name server would; names are resolved by the filter's own static
resolver. The probes run sandboxed with a network namespace of their own, the
filter's socket bound in and the bridge started by ``egress_launch``: in plain
bubblewrap, through the project's namespace backend, and in Docker containers with
network ``none`` (a Python image, and a Node image with neither Python nor a shell).

The test hosts' addresses are private, so the policies that should reach them set
``allowPrivate``; with it off, the same allowed name is refused, and so is one
that leads to loopback.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import socket
import subprocess
import sys
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from mcp_sandbox_proxy.policy.models import Network
from mcp_sandbox_proxy.sandbox.docker import DockerBackend
from mcp_sandbox_proxy.sandbox.egress import (
    EgressAttempt,
    EgressFilter,
    static_resolver,
)
from mcp_sandbox_proxy.sandbox.egress_bridge import (
    BRIDGE_PORT,
    SANDBOX_EGRESS_SOCKET,
    egress_launch,
    proxy_env,
)
from mcp_sandbox_proxy.sandbox.namespace import NamespaceBackend
from mcp_sandbox_proxy.sandbox.spec import NetworkSpec, SandboxSpec
from tests.support.proxy_client import direct_session

pytestmark = pytest.mark.anyio

# Bounds on every wait in this module.
IP_TIMEOUT_S = 10.0
READY_TIMEOUT_S = 10.0
EXCHANGE_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 60.0
CONTROL_TIMEOUT_S = 2.0
HTTP_PORT, ECHO_PORT, UDP_ECHO_PORT, DNS_PORT = 8080, 9000, 5353, 53
# A DNS question for web.test, type A: what a resolver would send.
DNS_QUERY = (
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    b"\x03web\x04test\x00\x00\x01\x00\x01"
)

# Run in each test host's namespace: argv is its name and its request log.
HOST_SERVERS = r"""
import http.server, socketserver, sys, threading
name, log_path = sys.argv[1], sys.argv[2]

class Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with open(log_path, "a") as log:
            log.write(self.path + "\n")
        if self.path == "/robots.txt":
            self.send_error(404)
            return
        body = f"<html><body><p>hello from {name}</p></body></html>".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while data := self.request.recv(65536):
            self.request.sendall(data)

class UdpEcho(socketserver.BaseRequestHandler):
    def handle(self):
        data, sock = self.request
        sock.sendto(data, self.client_address)

servers = [
    http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Page),
    socketserver.ThreadingTCPServer(("0.0.0.0", 9000), Echo),
    socketserver.UDPServer(("0.0.0.0", 5353), UdpEcho),
    socketserver.UDPServer(("0.0.0.0", 53), UdpEcho),
]
for server in servers:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""

# Run inside the sandbox with the system python3; prints what each way out gave.
PROBE = r"""
import json, socket, sys, urllib.error, urllib.request
web, bridge, query = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])

def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return [response.status, response.read().decode()]
    except urllib.error.HTTPError as exc:
        return [exc.code, exc.read().decode()]

def outcome(action):
    try:
        action()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "succeeded"

def tcp():
    socket.create_connection((web, 8080), timeout=5).close()

def udp(address, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        sock.sendto(query, (address, port))
        sock.recv(512)

def socks_udp_associate():
    with socket.create_connection(("127.0.0.1", bridge), timeout=5) as sock:
        sock.sendall(b"\x05\x01\x00")
        sock.recv(2)
        sock.sendall(b"\x05\x03\x00\x01" + bytes(6))
        return sock.recv(10)[1]

print(json.dumps({
    "interfaces": [name for _, name in socket.if_nameindex()],
    "allowed": fetch("http://web.test:8080/probe"),
    "other_host": fetch("http://other.test:8080/probe"),
    "other_port": fetch("http://web.test:9000/probe"),
    "by_ip": fetch(f"http://{web}:8080/probe"),
    "socks_udp": socks_udp_associate(),
    "direct_tcp": outcome(tcp),
    "direct_udp": outcome(lambda: udp(web, 5353)),
    "dns_lookup": outcome(lambda: socket.getaddrinfo("web.test", 8080)),
    "dns_query": outcome(lambda: udp(web, 53)),
    "local_dns_query": outcome(lambda: udp("127.0.0.1", 53)),
}))
"""


# The same idea for a container with node and no python: raw proxy requests.
NODE_PROBE = r"""
const net = require("net");
const [web, bridge] = [process.argv[1], Number(process.argv[2])];
function exchange(host, port, data) {
  return new Promise((resolve) => {
    const chunks = [];
    const conn = net.createConnection(port, host, () => conn.write(data));
    conn.on("data", (chunk) => chunks.push(chunk));
    conn.on("error", (error) => resolve(error.code));
    conn.on("close", () => resolve(Buffer.concat(chunks).toString()));
  });
}
const get = (url) => exchange("127.0.0.1", bridge,
  "GET " + url + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
(async () => {
  console.log(JSON.stringify({
    allowed: await get("http://web.test:8080/node-probe"),
    other_host: await get("http://other.test:8080/node-probe"),
    direct_tcp: await exchange(web, 8080, "GET / HTTP/1.0\r\n\r\n"),
  }));
})();
"""
PYTHON_IMAGE = "mcp-sandbox-proxy-test/python:latest"
NODE_IMAGE = "mcp-sandbox-proxy-test/node:latest"
ALLOW_SKIP_DOCKER_ENV = "MCP_SANDBOX_PROXY_ALLOW_SKIP_DOCKER"


@dataclass(frozen=True)
class NetHost:
    """One host of the test network, reachable from this namespace only."""

    name: str
    address: str
    log: Path

    def requests(self) -> list[str]:
        """The request paths its HTTP server has seen."""
        return self.log.read_text().splitlines() if self.log.exists() else []


def _ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")

    return done.stdout


def _free_octets(count: int) -> list[int]:
    """Third octets of 10.199.x.0/24 that no interface or route here uses."""
    used = _ip("-4", "-o", "addr") + _ip("-4", "route")
    free = [n for n in range(100, 250) if f"10.199.{n}." not in used]
    start = os.getpid() % (len(free) - count)
    return free[start : start + count]


def _wait_ready(process: subprocess.Popen[bytes]) -> None:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(READY_TIMEOUT_S):
            raise TimeoutError("a test host's servers did not start in time")

    line = process.stdout.readline()
    if line != b"ready\n":
        assert process.stderr is not None
        raise RuntimeError(f"test host failed: {process.stderr.read().decode()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    try:
        process.wait(timeout=READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _make_host(
    name: str, octet: int, folder: Path, cleanups: list[Callable[[], Any]]
) -> NetHost:
    tag = f"{octet}{os.getpid() % 10000}"
    namespace, outside, inside = f"msp-egress-{tag}", f"mse{tag}o", f"mse{tag}i"
    _ip("netns", "add", namespace)
    cleanups.append(lambda: _ip("netns", "del", namespace, check=False))
    _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
    cleanups.append(lambda: _ip("link", "del", outside, check=False))
    _ip("link", "set", inside, "netns", namespace)
    _ip("addr", "add", f"10.199.{octet}.1/24", "dev", outside)
    _ip("link", "set", outside, "up")
    _ip("-n", namespace, "addr", "add", f"10.199.{octet}.2/24", "dev", inside)
    _ip("-n", namespace, "link", "set", inside, "up")
    _ip("-n", namespace, "link", "set", "lo", "up")

    log = folder / f"{name}.log"
    argv = ["ip", "netns", "exec", namespace, sys.executable, "-c", HOST_SERVERS]
    process = subprocess.Popen(
        [*argv, name, str(log)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    cleanups.append(lambda: _stop(process))
    _wait_ready(process)
    return NetHost(name, f"10.199.{octet}.2", log)


@pytest.fixture(scope="module")
def test_hosts(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, NetHost]]:
    """web.test and other.test, each in a namespace of its own; removed after."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("building network namespaces needs root and iproute2")

    folder = tmp_path_factory.mktemp("test-hosts")
    cleanups: list[Callable[[], Any]] = []
    try:
        names = ("web.test", "other.test")
        hosts = [
            _make_host(name, octet, folder, cleanups)
            for name, octet in zip(names, _free_octets(len(names)), strict=True)
        ]
        yield {host.name: host for host in hosts}
    finally:
        for cleanup in reversed(cleanups):
            cleanup()


def _tcp_answers(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=CONTROL_TIMEOUT_S).close()
    except OSError:
        return False

    return True


def _udp_answers(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(CONTROL_TIMEOUT_S)
        sock.sendto(DNS_QUERY, (address, port))
        try:
            return sock.recv(512) == DNS_QUERY
        except OSError:
            return False


class Audit:
    """The attempts the filter reported, as the relay's audit would receive them."""

    def __init__(self) -> None:
        self.attempts: list[EgressAttempt] = []
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

    def summary(self) -> list[tuple[str, int, str]]:
        """Host, port and decision of each attempt, sorted: a connection is
        reported when it ends, so the order of reports is not the order of
        requests."""
        return sorted((a.host, a.port, a.decision) for a in self.attempts)


def _filter(
    audit: Audit,
    allow: list[str],
    table: Mapping[str, Sequence[str]],
    *,
    private: bool,
    context: Callable[[], Mapping[str, Any]] | None = None,
) -> EgressFilter:
    network = Network.model_validate({"allow": allow, "allowPrivate": private})
    return EgressFilter(
        sandbox="egress-test",
        rules=network.rules,
        allow_private=network.allow_private,
        on_attempt=audit.on_attempt,
        call_context=context,
        resolver=static_resolver(table),
    )


def _names(hosts: dict[str, NetHost]) -> dict[str, list[str]]:
    return {name: [host.address] for name, host in hosts.items()}


@asynccontextmanager
async def serving(egress: EgressFilter) -> AsyncGenerator[Path, None]:
    """The filter serving; its socket path while it runs."""
    async with anyio.create_task_group() as group:
        yield await group.start(egress.serve)
        group.cancel_scope.cancel()


async def talk(path: Path, data: bytes) -> bytes:
    """Send ``data`` to the filter and read until the exchange ends."""
    with anyio.fail_after(EXCHANGE_TIMEOUT_S):
        async with await anyio.connect_unix(path) as stream:
            await stream.send(data)
            return b"".join([chunk async for chunk in stream])


def _bwrap(
    socket_path: Path,
    command: list[str],
    *,
    binds: Sequence[Path] = (),
    search_path: str = "/usr/bin:/bin",
) -> list[str]:
    """``command`` in a bubblewrap sandbox with only loopback and the egress socket."""
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")

    env = {"PATH": search_path, "HOME": "/tmp", **proxy_env(BRIDGE_PORT)}
    env["MCP_EGRESS_SOCKET"] = SANDBOX_EGRESS_SOCKET
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session"]
    argv += ["--cap-drop", "ALL", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "sbin", "lib", "lib64"):
        argv += ["--symlink", f"usr/{link}", f"/{link}"]

    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for path in binds:
        argv += ["--ro-bind", str(path), str(path)]

    argv += ["--ro-bind", str(socket_path), SANDBOX_EGRESS_SOCKET, "--clearenv"]
    for name, value in env.items():
        argv += ["--setenv", name, value]

    return [*argv, "--", *egress_launch(command, BRIDGE_PORT)]


def _docker(socket_path: Path, image: str, command: list[str]) -> list[str]:
    """``command`` in a container with network ``none`` and the egress socket."""
    inspected = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, timeout=30
    )
    if inspected.returncode != 0:
        reason = f"{image} is not available (scripts/build-test-images.sh builds it)"
        if os.environ.get(ALLOW_SKIP_DOCKER_ENV) == "1":
            pytest.skip(reason)

        pytest.fail(f"{reason}; set {ALLOW_SKIP_DOCKER_ENV}=1 to skip")

    env = {**proxy_env(BRIDGE_PORT), "MCP_EGRESS_SOCKET": SANDBOX_EGRESS_SOCKET}
    argv = ["docker", "run", "--rm", "--network", "none", "--read-only", "--init"]
    argv += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    argv += ["--user", "65534:65534", "-v", f"{socket_path}:{SANDBOX_EGRESS_SOCKET}:ro"]
    for name, value in env.items():
        argv += ["-e", f"{name}={value}"]

    return [*argv, image, *egress_launch(command, BRIDGE_PORT)]


def _assert_only_the_bridge_leads_out(
    seen: dict[str, Any], audit: Audit, web: NetHost
) -> None:
    """What the probe saw inside, and what the filter saw of it."""
    assert seen["interfaces"] == ["lo"]
    assert seen["allowed"][0] == 200 and "hello from web.test" in seen["allowed"][1]
    assert seen["other_host"][0] == 403 and "no allow rule" in seen["other_host"][1]
    assert seen["other_port"][0] == 403 and seen["by_ip"][0] == 403
    assert seen["socks_udp"] == 0x07
    for way in ("direct_tcp", "direct_udp", "dns_query"):
        assert "Network is unreachable" in seen[way], way

    assert seen["dns_lookup"].startswith("gaierror")
    assert seen["local_dns_query"].startswith(
        ("ConnectionRefusedError", "TimeoutError")
    )
    assert audit.summary() == sorted(
        [
            ("web.test", 8080, "allow"),
            ("other.test", 8080, "deny"),
            ("web.test", 9000, "deny"),
            (web.address, 8080, "deny"),
            ("0.0.0.0", 0, "deny"),
        ]
    )
    udp = next(a for a in audit.attempts if a.protocol == "socks5")
    assert "udp-associate" in udp.reason


def _probe_argv(web: NetHost, python: str = "/usr/bin/python3") -> list[str]:
    return [python, "-I", "-c", PROBE, web.address, str(BRIDGE_PORT), DNS_QUERY.hex()]


async def test_the_allowed_host_answers_and_every_other_destination_is_refused(
    test_hosts: dict[str, NetHost],
) -> None:
    """Allowed: web.test:8080 by plain HTTP and by CONNECT. Refused, though each is
    up: another host, another port, the allowed host by its IP address."""
    web, other = test_hosts["web.test"], test_hosts["other.test"]
    assert _tcp_answers(other.address, HTTP_PORT)
    assert _tcp_answers(web.address, ECHO_PORT)
    audit = Audit()
    egress = _filter(audit, ["web.test:8080"], _names(test_hosts), private=True)

    async with serving(egress) as path:
        page = await talk(path, b"GET http://web.test:8080/t1-page HTTP/1.1\r\n\r\n")
        tunnel = await talk(
            path,
            b"CONNECT web.test:8080 HTTP/1.1\r\n\r\n"
            b"GET /t1-tunnel HTTP/1.1\r\nHost: web.test\r\nConnection: close\r\n\r\n",
        )
        targets = ("other.test:8080", "web.test:9000", f"{web.address}:8080")
        refused = [
            await talk(path, f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
            for target in targets
        ]
        await audit.settle(5)

    assert page.startswith(b"HTTP/1.0 200 OK") and b"hello from web.test" in page
    assert b"200 Connection established" in tunnel and b"hello from web.test" in tunnel
    assert all(response.startswith(b"HTTP/1.1 403 Forbidden") for response in refused)
    assert audit.summary() == sorted(
        [
            ("web.test", 8080, "allow"),
            ("web.test", 8080, "allow"),
            ("other.test", 8080, "deny"),
            ("web.test", 9000, "deny"),
            (web.address, 8080, "deny"),
        ]
    )
    first = next(a for a in audit.attempts if a.protocol == "http")
    assert first.bytes_down == len(page) and first.addresses == (web.address,)
    assert {"/t1-page", "/t1-tunnel"} <= set(web.requests())
    assert not other.requests()


@pytest.mark.parametrize("leads_to", ["loopback", "a private host"])
async def test_without_the_opt_in_an_allowed_name_leading_inward_is_refused(
    test_hosts: dict[str, NetHost], leads_to: str
) -> None:
    """allowPrivate off: web.test resolving to 127.0.0.1, or to the (private) test
    host, is refused though something listens there."""
    with socket.create_server(("127.0.0.1", 0)) as local:
        port = local.getsockname()[1] if leads_to == "loopback" else HTTP_PORT
        address = (
            "127.0.0.1" if leads_to == "loopback" else test_hosts["web.test"].address
        )
        assert _tcp_answers(address, port)
        audit = Audit()
        egress = _filter(
            audit, [f"web.test:{port}"], {"web.test": [address]}, private=False
        )
        async with serving(egress) as path:
            response = await talk(
                path, f"CONNECT web.test:{port} HTTP/1.1\r\n\r\n".encode()
            )
            await audit.settle(1)

    label = b"loopback" if leads_to == "loopback" else b"private network"
    assert response.startswith(b"HTTP/1.1 403") and label in response
    assert audit.summary() == [("web.test", port, "deny")]
    assert audit.attempts[0].addresses == (address,)


@pytest.mark.bwrap
async def test_inside_a_sandbox_only_the_bridge_leads_out(
    test_hosts: dict[str, NetHost],
) -> None:
    """In a sandbox with its own network namespace: the allowed host answers through
    the bridge; other hosts, ports and IPs are refused by the filter; direct TCP,
    UDP, DNS lookups and queries, and SOCKS5 UDP all fail. The audit holds exactly
    the attempts that went through the filter."""
    web = test_hosts["web.test"]
    assert _tcp_answers(web.address, HTTP_PORT)
    assert _udp_answers(web.address, UDP_ECHO_PORT) and _udp_answers(
        web.address, DNS_PORT
    )
    audit = Audit()
    egress = _filter(audit, ["web.test:8080"], _names(test_hosts), private=True)

    async with serving(egress) as path:
        argv = _bwrap(path, _probe_argv(web))
        with anyio.fail_after(PROBE_TIMEOUT_S):
            done = await anyio.run_process(argv, check=False)

        await audit.settle(5)

    assert done.returncode == 0, done.stderr.decode()
    _assert_only_the_bridge_leads_out(json.loads(done.stdout), audit, web)


@pytest.mark.bwrap
async def test_the_namespace_backend_gives_the_same_guarantee(
    test_hosts: dict[str, NetHost],
) -> None:
    """The project's namespace backend, given only the egress socket, wraps the
    command behind the bridge and sets the proxy variables itself: the same probe
    sees the same."""
    web = test_hosts["web.test"]
    audit = Audit()
    egress = _filter(audit, ["web.test:8080"], _names(test_hosts), private=True)
    async with serving(egress) as path:
        argv = _probe_argv(web)
        spec = SandboxSpec(
            name="egress-probe",
            command=argv[0],
            args=tuple(argv[1:]),
            env={"PATH": "/usr/bin:/bin"},
            network=NetworkSpec("egress", path),
        )
        with anyio.fail_after(PROBE_TIMEOUT_S):
            process = await NamespaceBackend().start(spec)
            output = b"".join([chunk async for chunk in _chunks(process.receive)])
            status = await process.wait()

        await audit.settle(5)

    assert status == 0
    _assert_only_the_bridge_leads_out(json.loads(output), audit, test_hosts["web.test"])


@pytest.mark.docker
async def test_the_docker_backend_gives_the_same_guarantee(
    test_hosts: dict[str, NetHost],
) -> None:
    """The project's docker backend, given only the egress socket, binds it in,
    starts the bridge with the image's own python and sets the proxy variables:
    the same probe sees the same as in the namespace sandbox."""
    web = test_hosts["web.test"]
    _docker(Path("/"), PYTHON_IMAGE, ["true"])  # fails or skips without the image
    audit = Audit()
    egress = _filter(audit, ["web.test:8080"], _names(test_hosts), private=True)
    backend = DockerBackend(instance=f"egress-test-{os.getpid()}")
    try:
        async with serving(egress) as path:
            argv = _probe_argv(web, python="python3")
            spec = SandboxSpec(
                name="egress-probe",
                command=argv[0],
                args=tuple(argv[1:]),
                network=NetworkSpec("egress", path),
                image=PYTHON_IMAGE,
            )
            with anyio.fail_after(PROBE_TIMEOUT_S):
                process = await backend.start(spec)
                output = b"".join([chunk async for chunk in _chunks(process.receive)])
                status = await process.wait()

            await audit.settle(5)
    finally:
        await backend.aclose()

    assert status == 0
    _assert_only_the_bridge_leads_out(json.loads(output), audit, web)


async def _chunks(
    receive: Callable[[], Awaitable[bytes]],
) -> AsyncGenerator[bytes, None]:
    while chunk := await receive():
        yield chunk


@pytest.mark.docker
async def test_in_a_python_container_only_the_bridge_leads_out(
    test_hosts: dict[str, NetHost],
) -> None:
    """Docker with network none and the socket bound in: the same probe, with the
    bridge started by the server's own interpreter (the image has no shell)."""
    web = test_hosts["web.test"]
    audit = Audit()
    egress = _filter(audit, ["web.test:8080"], _names(test_hosts), private=True)
    async with serving(egress) as path:
        argv = _docker(path, PYTHON_IMAGE, _probe_argv(web, python="python3"))
        with anyio.fail_after(PROBE_TIMEOUT_S):
            done = await anyio.run_process(argv, check=False)

        await audit.settle(5)

    assert done.returncode == 0, done.stderr.decode()
    _assert_only_the_bridge_leads_out(json.loads(done.stdout), audit, web)


@pytest.mark.docker
async def test_in_a_node_container_the_node_bridge_leads_out(
    test_hosts: dict[str, NetHost],
) -> None:
    """A container with node and neither python nor a shell: the JavaScript bridge
    carries the allowed request; another host is refused; direct TCP fails."""
    web = test_hosts["web.test"]
    audit = Audit()
    egress = _filter(audit, ["web.test:8080"], _names(test_hosts), private=True)
    async with serving(egress) as path:
        probe = ["node", "-e", NODE_PROBE, "--", web.address, str(BRIDGE_PORT)]
        with anyio.fail_after(PROBE_TIMEOUT_S):
            done = await anyio.run_process(
                _docker(path, NODE_IMAGE, probe), check=False
            )

        await audit.settle(2)

    assert done.returncode == 0, done.stderr.decode()
    seen = json.loads(done.stdout)
    assert (
        seen["allowed"].startswith("HTTP/1.0 200")
        and "hello from web.test" in seen["allowed"]
    )
    assert seen["other_host"].startswith("HTTP/1.1 403")
    assert seen["direct_tcp"] == "ENETUNREACH"
    assert audit.summary() == [
        ("other.test", 8080, "deny"),
        ("web.test", 8080, "allow"),
    ]


@pytest.mark.bwrap
async def test_mcp_server_fetch_reaches_the_allowed_host_only(
    test_hosts: dict[str, NetHost], fetch_server: Path
) -> None:
    """The real fetch server, sandboxed, fetches from web.test through the bridge and
    is refused other.test; the audit ties each attempt to the running call."""
    venv = fetch_server.parent.parent
    config = (venv / "pyvenv.cfg").read_text().splitlines()
    home = next(
        line.split("=", 1)[1].strip() for line in config if line.startswith("home")
    )
    running: dict[str, Any] = {}
    audit = Audit()
    egress = _filter(
        audit, ["web.test:8080"], _names(test_hosts), private=True, context=running.copy
    )

    async with serving(egress) as path:
        binds = [venv, Path(home).parent]
        argv = _bwrap(
            path,
            [str(fetch_server)],
            binds=binds,
            search_path=f"{venv}/bin:/usr/bin:/bin",
        )
        with anyio.fail_after(PROBE_TIMEOUT_S):
            async with direct_session(argv[0], argv[1:]) as session:
                running["call"] = "fetch web.test"
                page = await session.call_tool(
                    "fetch", {"url": "http://web.test:8080/fetched", "raw": True}
                )
                running["call"] = "fetch other.test"
                refused = await session.call_tool(
                    "fetch", {"url": "http://other.test:8080/fetched", "raw": True}
                )

        await audit.settle(3)

    assert not page.is_error
    assert "hello from web.test" in page.content[0].text  # type: ignore[union-attr]
    assert refused.is_error
    calls = sorted((a.host, a.decision, a.context.get("call")) for a in audit.attempts)
    assert calls == [
        ("other.test", "deny", "fetch other.test"),
        ("web.test", "allow", "fetch web.test"),
        ("web.test", "allow", "fetch web.test"),
    ]
    assert {"/robots.txt", "/fetched"} <= set(test_hosts["web.test"].requests())
    assert not test_hosts["other.test"].requests()
