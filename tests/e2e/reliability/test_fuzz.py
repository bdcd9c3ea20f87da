"""Malformed and adversarial JSON-RPC at both sides of one running proxy.

Hypothesis writes lines to the proxy's stdin (the client side) and has a puppet
server write lines to the proxy (the downstream side). Whatever comes, the proxy
must answer or ignore each line as JSON-RPC says: one error with a null id for a
line that is no message, one answer per request, nothing for a notification or a
response; everything it writes must be a well-formed message; and it must keep
serving. Each test stops drawing examples once its time budget is spent.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import yaml
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.reliability.conftest import (
    RELIABILITY_POLICY,
    Message,
    Proxy,
    hostile,
    running_proxy,
)

# Each test draws examples for at most this long, which keeps the whole file
# within about a minute together with the proxy's start.
BUDGET_S = 20.0
MAX_EXAMPLES = 1000
# Fewer than this within the budget would mean the proxy answers far too slowly.
MIN_EXAMPLES = 100
# Every example's answers are in well within this, or the proxy hangs.
EXAMPLE_TIMEOUT_S = 10.0
# The relay refuses lines nested deeper than this, as its module states.
MAX_NESTING = 200
PROTOCOL_VERSIONS = ["2024-11-05", "2025-06-18", "2025-11-25", "1999-01-01"]
SAFE_TOOLS = ["puppet__echo", "puppet__unknown_ids", "puppet__duplicate", "nope__x"]
KNOWN_METHODS = [
    "initialize",
    "ping",
    "logging/setLevel",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "completion/complete",
]
NOTIFICATIONS = [
    "notifications/cancelled",
    "notifications/progress",
    "notifications/initialized",
    "notifications/roots/list_changed",
]

_counter = itertools.count(1)

# -- strategies -------------------------------------------------------------------

texts = st.text(st.characters(exclude_categories=()), max_size=12)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=10,
)
objects = st.dictionaries(st.text(max_size=6), values, max_size=4)
invalid_ids = st.none() | st.booleans() | st.floats() | st.lists(leaves, max_size=2)
garbage = st.binary(max_size=48).map(lambda b: b.replace(b"\n", b""))
deep = st.integers(MAX_NESTING - 5, 5000).flatmap(
    lambda n: st.sampled_from([b"[" * n + b"]" * n, b'{"a":' * n, b"[" * n])
)


def fresh_id(draw: st.DrawFn) -> Any:
    """An id no other request in this run uses: odd in form, unique in value."""
    serial = next(_counter)
    if draw(st.booleans()):
        base = draw(st.sampled_from([0, 2**40, 2**63, 2**64 + 1, -(2**70)]))
        return base + serial

    return f"{draw(texts)}#{serial}"


@st.composite
def params_for(draw: st.DrawFn, method: str) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(values)

    if method == "tools/call":
        params: dict[str, Any] = {
            "name": draw(st.sampled_from(SAFE_TOOLS) | texts),
            "arguments": draw(objects | values),
        }
        if draw(st.booleans()):
            params["_meta"] = {"progressToken": draw(leaves)}

        return params

    if method.endswith("/list"):
        return {"cursor": draw(texts | st.just("msp1.") | texts.map("msp1.".__add__))}

    shapes = {
        "initialize": st.fixed_dictionaries(
            {
                "protocolVersion": st.sampled_from(PROTOCOL_VERSIONS) | texts,
                "capabilities": objects,
                "clientInfo": values,
            }
        ),
        "resources/read": st.fixed_dictionaries({"uri": texts}),
        "prompts/get": st.fixed_dictionaries({"name": texts}),
        "completion/complete": st.fixed_dictionaries(
            {
                "ref": st.fixed_dictionaries(
                    {
                        "type": st.sampled_from(["ref/prompt", "ref/resource"]) | texts,
                        "name": st.sampled_from(["puppet__p"]) | texts,
                        "uri": texts,
                    }
                ),
                "argument": values,
            }
        ),
    }
    return draw(shapes.get(method, objects))


@dataclass
class Plan:
    """Lines to send and what the proxy owes for them."""

    lines: list[bytes] = field(default_factory=lambda: [])
    null_errors: int = 0
    answers: Counter[Any] = field(default_factory=lambda: Counter())
    cancelled: set[Any] = field(default_factory=lambda: set())


def client_request(draw: st.DrawFn, request_ids: list[Any]) -> bytes:
    method = draw(st.sampled_from(KNOWN_METHODS) | texts)
    message: Message = {"jsonrpc": "2.0", "id": fresh_id(draw), "method": method}
    message["params"] = draw(params_for(method))
    request_ids.append(message["id"])
    return encode(mutated(draw, message))


def client_notification(draw: st.DrawFn, request_ids: list[Any]) -> bytes:
    """A notification; a cancellation may name a request of the same example."""
    method = draw(st.sampled_from(NOTIFICATIONS) | texts)
    target = draw(st.sampled_from(request_ids) | leaves) if request_ids else None
    params = {"requestId": target, "progressToken": draw(leaves)}
    params["reason"] = draw(values)
    message = {"jsonrpc": "2.0", "method": method, "params": params}
    return encode(mutated(draw, message))


def client_other(draw: st.DrawFn, _: list[Any]) -> bytes:
    """A response to nothing, an object of no known shape, or any JSON value."""
    shape = draw(st.sampled_from(["response", "shapeless", "value"]))
    if shape == "response":
        message = {"jsonrpc": "2.0", "id": draw(leaves)}
        message[draw(st.sampled_from(["result", "error"]))] = draw(values)
        return encode(message)

    if shape == "shapeless":
        return encode({"jsonrpc": "2.0", **draw(objects)})

    return encode(draw(values))


CLIENT_KINDS = (
    [client_request] * 4
    + [client_notification] * 2
    + [client_other, lambda draw, _: draw(garbage), lambda draw, _: draw(deep)]
)


@st.composite
def client_lines(draw: st.DrawFn) -> list[bytes]:
    """One to eight lines of any kind; requests carry ids unique in the run."""
    request_ids: list[Any] = []
    return [
        draw(st.sampled_from(CLIENT_KINDS))(draw, request_ids)
        for _ in range(draw(st.integers(1, 8)))
    ]


def mutated(draw: st.DrawFn, message: Message) -> Message:
    """Now and then a field of the wrong kind, or missing."""
    choice = draw(st.integers(0, 11))
    if choice == 0:
        message["jsonrpc"] = draw(st.sampled_from(["1.0", 2.0]) | st.none())
    elif choice == 1:
        message["id"] = draw(invalid_ids)
    elif choice == 2:
        message["method"] = draw(leaves)
    elif choice == 3:
        del message["jsonrpc"]

    return message


def encode(message: Any) -> bytes:
    return json.dumps(message).encode()


# -- what the proxy owes ---------------------------------------------------------


def nesting(line: bytes) -> int:
    """The deepest bracket nesting of ``line``, strings skipped."""
    depth = deepest = 0
    in_string = escaped = False
    for char in line.decode("latin-1"):
        if in_string:
            escaped = not escaped and char == "\\"
            in_string = escaped or char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1

    return deepest


def valid_id(value: Any) -> Any:
    ok = isinstance(value, str | int) and not isinstance(value, bool)
    return value if ok else None


def refuse(name: str) -> Any:
    raise ValueError(name)


def owed(line: bytes) -> tuple[str, Any]:
    """What JSON-RPC 2.0 says the proxy owes for one line: ``("none", None)``,
    ``("null", None)`` for an error without an id, or ``("id", id)``."""
    if not line.strip():
        return "none", None

    try:
        message = json.loads(line, parse_constant=refuse)
    except (ValueError, RecursionError):
        return "null", None

    if nesting(line) > MAX_NESTING or not isinstance(message, dict):
        return "null", None

    own_id = valid_id(message.get("id"))
    answer = ("id", own_id) if own_id is not None else ("null", None)
    method = message.get("method", "")
    if message.get("jsonrpc") != "2.0" or not isinstance(method, str):
        return answer

    if "id" in message and own_id is None:
        return "null", None

    if "method" in message:
        return answer if "id" in message else ("none", None)

    return ("none", None) if "result" in message or "error" in message else answer


def plan_for(lines: list[bytes]) -> Plan:
    plan = Plan(lines=lines)
    for line in lines:
        kind, request_id = owed(line)
        if kind == "null":
            plan.null_errors += 1
        elif kind == "id":
            plan.answers[request_id] += 1

        message = _object_or_none(line)
        if message is not None and message.get("method") == "notifications/cancelled":
            params: Any = message.get("params")
            if isinstance(params, dict):
                plan.cancelled.add(_hashable(params.get("requestId")))

    return plan


def _object_or_none(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line, parse_constant=refuse)
    except (ValueError, RecursionError):
        return None

    return value if isinstance(value, dict) else None


def _hashable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | None) else repr(value)


# -- what the proxy wrote ----------------------------------------------------------


def well_formed(message: Any) -> bool:
    """A JSON-RPC 2.0 request, notification or response as MCP has them."""
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return False

    if "method" in message:
        params = message.get("params", {})
        ids_ok = "id" not in message or valid_id(message["id"]) is not None
        return (
            isinstance(message["method"], str) and isinstance(params, dict) and ids_ok
        )

    if "result" in message:
        return "error" not in message and isinstance(message["result"], dict)

    error = message.get("error")
    return (
        isinstance(error, dict)
        and type(error.get("code")) is int
        and isinstance(error.get("message"), str)
    )


async def exchange(proxy: Proxy, plan: Plan) -> list[Message]:
    """Send the plan's lines, then read until every owed answer and a closing
    ping's are in; server requests are answered on the way."""
    start = len(proxy.received)
    await proxy.send_bytes(b"".join(line + b"\n" for line in plan.lines))
    control = f"control-{next(_counter)}"
    await proxy.send({"jsonrpc": "2.0", "id": control, "method": "ping"})
    required = {i for i in plan.answers if _hashable(i) not in plan.cancelled}
    with anyio.fail_after(EXAMPLE_TIMEOUT_S):
        while True:
            message = await proxy.receive(EXAMPLE_TIMEOUT_S)
            if "method" in message and valid_id(message.get("id")) is not None:
                await proxy.send({"jsonrpc": "2.0", "id": message["id"], "result": {}})

            answered = {
                m.get("id") for m in proxy.received[start:] if "method" not in m
            }
            if control in answered and required <= answered:
                return proxy.received[start:]


def check(plan: Plan, written: list[Message], late: set[Any]) -> None:
    """Every message well formed; one null-id error per line that is no message;
    one answer per request, and at most one for a cancelled request, which may
    come after its example ended (its id waits in ``late``); nothing more."""
    bad = [m for m in written if not well_formed(m)]
    assert not bad, bad
    responses = [m for m in written if "method" not in m]
    got = Counter(_hashable(m.get("id")) for m in responses if m.get("id") is not None)
    assert sum(1 for m in responses if m.get("id") is None) == plan.null_errors, written
    for request_id, count in plan.answers.items():
        key = _hashable(request_id)
        if key not in plan.cancelled:
            assert got[key] == count, (request_id, written)
        elif got[key] == 0:
            late.add(key)
        else:
            assert got[key] == 1, (request_id, written)

    owed_here = {_hashable(i) for i in plan.answers}
    for key in set(got) - owed_here:
        if not str(key).startswith("control-"):
            assert key in late and got[key] == 1, (key, written)
            late.discard(key)


# -- the running proxy -----------------------------------------------------------


@dataclass
class Harness:
    portal: BlockingPortal
    proxy: Proxy
    ends_at: float = 0.0
    late: set[Any] = field(default_factory=lambda: set())
    examples: int = 0

    def run(self, plan: Plan) -> None:
        self.examples += 1
        written = self.portal.call(exchange, self.proxy, plan)
        check(plan, written, self.late)
        assert self.proxy.process.returncode is None, "the proxy exited"
        self.proxy.received.clear()

    def out_of_time(self) -> bool:
        return time.monotonic() > self.ends_at


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One proxy for the whole file, with the puppet server and a bystander."""
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "policies").mkdir()
    policy_file = folder / "policies" / "reliability.yaml"
    policy_file.write_text(yaml.safe_dump(RELIABILITY_POLICY))
    servers = {
        name: {**hostile(), "policy": "reliability"} for name in ("puppet", "bystander")
    }
    settings_ = {
        "policyPaths": [str(folder / "policies")],
        "pinFile": str(folder / "pins.json"),
        "audit": {"path": str(folder / "audit.jsonl"), "durability": "batch"},
    }
    config = folder / "proxy.yaml"
    config.write_text(yaml.safe_dump({"mcpServers": servers, "proxy": settings_}))
    with (
        start_blocking_portal() as portal,
        portal.wrap_async_context_manager(running_proxy(config)) as proxy,
    ):
        yield Harness(portal, proxy)


def still_serving(harness: Harness) -> None:
    """Both servers answer a plain call after the run."""
    for server in ("puppet", "bystander"):
        answer = harness.portal.call(proxy_call, harness.proxy, f"{server}__echo")
        assert answer["result"]["content"][0]["text"] == "after the fuzz"


async def proxy_call(proxy: Proxy, tool: str) -> Message:
    return await proxy.call(
        tool, {"text": "after the fuzz"}, timeout_s=EXAMPLE_TIMEOUT_S
    )


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_the_client_side_answers_or_ignores_every_line(harness: Harness) -> None:
    """Requests, notifications, responses, broken shapes, bytes that are no
    JSON and deep nesting, from the client: each is owed what JSON-RPC says."""
    harness.ends_at, harness.examples = time.monotonic() + BUDGET_S, 0

    @FUZZ_SETTINGS
    @given(lines=client_lines())
    def fuzz(lines: list[bytes]) -> None:
        if not harness.out_of_time():
            harness.run(plan_for(lines))

    fuzz()
    assert harness.examples >= MIN_EXAMPLES
    still_serving(harness)


def server_notification(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from([*NOTIFICATIONS, "notifications/message"]))
    params = draw(objects) | {"progressToken": draw(leaves)}
    params["requestId"] = draw(leaves)
    message = {"jsonrpc": "2.0", "method": method, "params": params}
    return encode(mutated(draw, message))


def server_request(draw: st.DrawFn) -> bytes:
    """A request to the client: one it may allow, one it may not, or any."""
    asks = st.sampled_from(["roots/list", "ping", "sampling/createMessage"])
    message = {"jsonrpc": "2.0", "id": draw(leaves), "method": draw(asks | texts)}
    message["params"] = draw(objects)
    return encode(mutated(draw, message))


def server_response(draw: st.DrawFn, own: bool) -> bytes:
    """An answer of any shape, under the call's own id or another."""
    message = {"jsonrpc": "2.0", "id": "@OWN@" if own else draw(leaves)}
    message[draw(st.sampled_from(["result", "error"]))] = draw(values)
    return encode(message).replace(b'"@OWN@"', b"@ID@")


SERVER_KINDS = [
    server_notification,
    server_request,
    lambda draw: server_response(draw, own=False),
    lambda draw: server_response(draw, own=True),
    lambda draw: encode(draw(values)),
    lambda draw: draw(garbage),
    lambda draw: draw(deep),
]


@st.composite
def server_lines(draw: st.DrawFn) -> list[bytes]:
    """What the puppet writes: the call's own id is ``@ID@`` in a line."""
    return [
        draw(st.sampled_from(SERVER_KINDS))(draw)
        for _ in range(draw(st.integers(1, 10)))
    ]


def test_the_downstream_side_cannot_break_a_call(harness: Harness) -> None:
    """Whatever the puppet writes before its answer (stray notifications and
    requests, answers of any shape under the call's own id or others, bytes that
    are no JSON), the call gets exactly one well-formed answer."""
    harness.ends_at, harness.examples = time.monotonic() + BUDGET_S, 0

    @FUZZ_SETTINGS
    @given(lines=server_lines())
    def fuzz(lines: list[bytes]) -> None:
        if harness.out_of_time():
            return

        encoded = [base64.b64encode(line).decode() for line in lines]
        params = {"name": "puppet__emit", "arguments": {"lines": encoded}}
        call = {
            "jsonrpc": "2.0",
            "id": f"emit-{next(_counter)}",
            "method": "tools/call",
        }
        harness.run(plan_for([encode({**call, "params": params})]))

    fuzz()
    assert harness.examples >= MIN_EXAMPLES
    still_serving(harness)


def test_the_fuzz_left_its_traces_in_the_log(harness: Harness) -> None:
    """The proxy logged what it ignored, and nothing crashed any part of it."""
    log = harness.proxy.log_text()
    assert "server_output_ignored" in log and "client_message_refused" in log
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]


@pytest.mark.parametrize(
    ("line", "owes"),
    [
        (b"not json", ("null", None)),
        (b"[]", ("null", None)),
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', ("id", 1)),
        (b'{"jsonrpc":"2.0","id":true,"method":"ping"}', ("null", None)),
        (b'{"jsonrpc":"2.0","method":"x"}', ("none", None)),
        (b'{"jsonrpc":"2.0","id":3,"result":{}}', ("none", None)),
        (b'{"jsonrpc":"1.0","id":4,"method":"ping"}', ("id", 4)),
        (b'{"jsonrpc":"2.0","id":5}', ("id", 5)),
        (b"[" * (MAX_NESTING + 1) + b"]" * (MAX_NESTING + 1), ("null", None)),
    ],
)
def test_the_oracle_owes_what_json_rpc_says(line: bytes, owes: tuple[str, Any]) -> None:
    """The fuzz's own model of JSON-RPC, checked on lines with known answers."""
    assert owed(line) == owes
