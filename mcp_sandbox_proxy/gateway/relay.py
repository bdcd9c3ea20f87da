"""The relay: every message between the client and the servers passes here.

The relay answers what belongs to the connection itself (``initialize``, ``ping``,
``logging/setLevel``), fans list requests out to every server (see ``lists``),
routes each call to the instance its tool's policy maps to, and maps request ids
and progress tokens both ways; a server's own requests to the client go through
``server_requests``. Anything it does not need to understand is passed on as it
came.

Every table it keeps is bounded: requests in flight each way have a cap and a
deadline, and an entry goes when its request is answered, cancelled, expired or
its server exits.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import anyio
import structlog

from mcp_sandbox_proxy import __version__
from mcp_sandbox_proxy.exceptions import DownstreamError
from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.catalog import NameTable, Origin, ResourceRoutes
from mcp_sandbox_proxy.gateway.cursors import InvalidCursor
from mcp_sandbox_proxy.gateway.downstream import Awaited, Downstream, Pending
from mcp_sandbox_proxy.gateway.front import ClientChannel
from mcp_sandbox_proxy.gateway.gate import Call, CallGate, Denied
from mcp_sandbox_proxy.gateway.jsonrpc import Message, RequestId
from mcp_sandbox_proxy.gateway.lists import Lists
from mcp_sandbox_proxy.gateway.pool import Pool
from mcp_sandbox_proxy.gateway.server_requests import ServerRequests, send_safely

log = structlog.get_logger(__name__)

# Protocol revisions negotiated by the initialize handshake, oldest first. Kept
# here rather than imported from the SDK's types, whose import alone costs about
# 0.4 s of start-up.
HANDSHAKE_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
# Requests the proxy sends a server for the client (lists, reads) get this long
# unless a policy sets a call timeout.
DEFAULT_REQUEST_TIMEOUT_S = 120.0
# How often deadlines of calls in flight are checked.
DEADLINE_TICK_S = 0.1
# Notifications one server may send per second (a burst may borrow a second's
# worth); the excess is dropped and counted.
NOTIFICATIONS_PER_S = 500
# Requests of the client in flight at once; past this, new ones are refused, which
# bounds what a client that never waits for its answers can make the proxy hold.
MAX_CLIENT_REQUESTS = 1024


@dataclass
class ProgressRoute:
    """A progress token the proxy gave a server, and the client's own token."""

    client_token: Any
    link: Downstream


class Forwarded(Pending):
    """A client's request forwarded to a server: its entry among the requests in
    flight, and what brings its answer back to the client (through the gate,
    when it is a tool ``call``)."""

    __slots__ = ("_relay", "call", "down_id", "link", "token")
    client_id: RequestId  # a forwarded request always has the client's id

    def __init__(
        self,
        relay: Relay,
        method: str,
        client_id: RequestId,
        link: Downstream,
        down_id: int,
        token: int | None,
        call: Call | None,
    ) -> None:
        super().__init__(method, client_id)
        self._relay = relay
        self.link = link
        self.down_id = down_id
        self.token = token
        self.call = call

    async def deliver(self, response: Message) -> None:
        relay = self._relay
        relay.release(self)
        # Every response handed here is the relay's own, decoded or built for it
        # alone: its id is set in place rather than copied.
        response["id"] = self.client_id
        if self.call is not None:
            response = await relay.completed(self.call, response)

        await relay.front.send(response)

    def deliver_now(self, response: Message) -> bool:
        """``deliver`` without a wait, when the client takes output and the
        outcome is recorded at once; else nothing is done."""
        relay, call = self._relay, self.call
        if not relay.front.output_ready:
            return False

        response["id"] = self.client_id
        if call is not None:
            answer = relay.completed_now(call, response)
            if answer is None:
                return False

            response = answer

        relay.release(self)
        relay.front.send_now(response)
        return True


class RateBucket:
    """A token bucket: ``rate`` events a second, bursts up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._tokens = rate
        self._updated = anyio.current_time()
        self.dropped = 0

    def take(self) -> bool:
        now = anyio.current_time()
        self._tokens = min(
            self._rate, self._tokens + (now - self._updated) * self._rate
        )
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True

        self.dropped += 1
        return False


class Relay:
    """Joins one client to every downstream instance."""

    def __init__(
        self,
        front: ClientChannel,
        gate: CallGate,
        prefixes: dict[str, str],
        default_profiles: dict[str, str],
    ) -> None:
        self.front = front
        self.gate = gate
        self.pool: Pool | None = None
        self.prefixes = prefixes
        self.default_profiles = default_profiles
        self.tools = NameTable("tool", prefixes)
        self.prompts = NameTable("prompt", prefixes)
        self.resources = ResourceRoutes()
        self.lists = Lists(gate, prefixes, self.tools, self.prompts, self.resources)
        self.client_init: Message | None = None
        self.protocol_version = HANDSHAKE_VERSIONS[-1]
        self._ids = itertools.count(1)
        # Client requests being handled, and those of them cancelled before
        # they were forwarded; then the forwarded ones.
        self._handling: set[RequestId] = set()
        self._cancelled: set[RequestId] = set()
        self._inflight: dict[RequestId, Forwarded] = {}
        self._progress: dict[int, ProgressRoute] = {}
        self.server_requests = ServerRequests(
            front, gate, self._ids, lambda: self.client_init
        )
        self._buckets: dict[Downstream, RateBucket] = {}
        self._group: anyio.abc.TaskGroup | None = None
        self._handlers = self._request_handlers()
        # Fixed by the audit settings, and asked of every call.
        self._audit_never_waits = gate.writes_without_waiting

    # -- client to servers -------------------------------------------------------

    def take_now(self, message: Message) -> bool:
        """Relay a tools/call at once, in the callback that read it, when nothing
        on its way needs a wait: a tool of a server that is up and takes input, a
        call its policy allows by name and arguments and within its rate limit,
        and an audit log that records at once. That is most calls; any other
        message is left, untouched, to ``on_client_message`` (False)."""
        if message.get("method") != "tools/call" or self.client_init is None:
            return False

        # JSON gives an id exactly one of these types; anything else is the
        # task's to refuse.
        request_id = message.get("id")
        if (
            type(request_id) is not int and type(request_id) is not str
        ) or self._request_refusal(request_id) is not None:
            return False

        params = _params(message)
        origin = self._tool_origin(params)
        if origin is None:
            return False

        decision = self.gate.plain_allowance(origin.server, origin.name, params)
        if decision is None:
            return False

        assert self.pool is not None
        link = self.pool.ready_link((origin.server, decision.policy.profile))
        if link is None or not link.input_ready():
            return False

        call = self.gate.admit_now(
            request_id, origin.server, origin.name, params, decision
        )
        if call is None:
            return False

        # Decoded for this call alone, the message is forwarded changed in place.
        params["name"] = origin.name
        outgoing, forwarded = self._route(link, message, call)
        link.send_request_now(outgoing, forwarded, call.timeout_s, forwarded.down_id)
        return True

    async def on_client_message(self, message: Message) -> None:
        if jsonrpc.is_request(message):
            refusal = self._request_refusal(message["id"])
            if refusal is not None:
                await self._reply_error(message, jsonrpc.INVALID_REQUEST, refusal)
                return

            self._handling.add(message["id"])
            origin = self._inline_tool(message)
            if origin is not None:
                await self._handle_request(message, origin)
            else:
                assert self._group is not None
                self._group.start_soon(self._handle_request, message)
        elif jsonrpc.is_notification(message):
            await self._handle_client_notification(message)
        elif jsonrpc.is_response(message):
            await self.server_requests.answer(message)
        else:
            await self.front.send(
                jsonrpc.error_response(
                    jsonrpc.valid_id(message),
                    jsonrpc.INVALID_REQUEST,
                    "Invalid Request: neither a request, a notification nor a response",
                )
            )

    def _request_refusal(self, request_id: RequestId) -> str | None:
        if request_id in self._handling or request_id in self._inflight:
            return "Invalid Request: a request with this id is in flight already"

        if len(self._handling) + len(self._inflight) >= MAX_CLIENT_REQUESTS:
            return (
                f"Invalid Request: {MAX_CLIENT_REQUESTS} requests are in flight"
                " already; wait for their answers"
            )

        return None

    def _inline_tool(self, message: Message) -> Origin | None:
        """The tool of a call that can be relayed without making the reader wait
        (its instance is up and the audit log does not wait for the disk), so
        that the call is resolved once; None for any other request."""
        if (
            message["method"] != "tools/call"
            or self.client_init is None
            or not self._audit_never_waits
        ):
            return None

        origin = self._tool_origin(_params(message))
        assert self.pool is not None
        if origin is None or not self.pool.server_ready(origin.server):
            return None

        return origin

    async def _handle_request(
        self, message: Message, origin: Origin | None = None
    ) -> None:
        """Answer one request; ``origin`` is the tool of a call resolved already."""
        method: str = message["method"]
        handler = self._handlers.get(method)
        if self.client_init is None and method not in ("initialize", "ping"):
            handler = self._refuse_before_initialize

        try:
            if handler is None:
                await self._reply_error(
                    message, jsonrpc.METHOD_NOT_FOUND, f"Method not found: {method}"
                )
            elif origin is not None:
                await self._call_tool(message, origin)
            else:
                await handler(message)
        except DownstreamError as exc:
            await self._reply_error(message, jsonrpc.SERVER_UNAVAILABLE, str(exc))
        except Denied as exc:
            await self._reply_error(message, exc.code, str(exc), exc.data)
        except Exception as exc:
            # A bug must cost one request, never the connection: answer, and log
            # the traceback on stderr.
            log.exception("request_failed", method=method)
            await self._reply_error(
                message, jsonrpc.INTERNAL_ERROR, f"Internal error: {type(exc).__name__}"
            )
        finally:
            self._handling.discard(message["id"])
            self._cancelled.discard(message["id"])

    def _request_handlers(self) -> dict[str, Callable[[Message], Awaitable[None]]]:
        return {
            "initialize": self._initialize,
            "ping": self._ping,
            "logging/setLevel": self._set_level,
            "tools/list": self._list,
            "prompts/list": self._list,
            "resources/list": self._list,
            "resources/templates/list": self._list,
            "tools/call": self._call_tool,
            "prompts/get": self._get_prompt,
            "resources/read": self._by_uri,
            "resources/subscribe": self._by_uri,
            "resources/unsubscribe": self._by_uri,
            "completion/complete": self._complete,
        }

    async def _refuse_before_initialize(self, message: Message) -> None:
        await self._reply_error(
            message, jsonrpc.INVALID_REQUEST, "Invalid Request: initialize first"
        )

    async def _reply(self, message: Message, result: Any) -> None:
        await self.front.send(jsonrpc.result_response(message["id"], result))

    async def _reply_error(
        self, message: Message, code: int, text: str, data: Any = None
    ) -> None:
        await self.front.send(jsonrpc.error_response(message["id"], code, text, data))

    async def _initialize(self, message: Message) -> None:
        params = _params(message)
        requested = params.get("protocolVersion")
        if requested in HANDSHAKE_VERSIONS:
            self.protocol_version = requested

        first = self.client_init is None
        self.client_init = params
        assert self.pool is not None
        if first:
            self.pool.client_initialized()
            await self.gate.client_connected(params)

        links = await self._default_links()
        await self._reply(message, self._initialize_result(links))

    def initialize_params(self, server: str) -> Message:
        """What a server is told in its own initialize: the client's own words."""
        assert self.client_init is not None
        params = dict(self.client_init)
        params["protocolVersion"] = self.protocol_version
        capabilities = params.get("capabilities")
        if isinstance(capabilities, dict):
            params["capabilities"] = self.gate.client_capabilities_for(
                server,
                capabilities,  # type: ignore[arg-type]
            )

        return params

    async def _default_links(self) -> list[Downstream]:
        assert self.pool is not None
        links: list[Downstream] = []
        for server, profile in self.default_profiles.items():
            # A server whose first start failed is left out, not waited for: it
            # joins with a list_changed once a restart brings it up.
            await self.pool.settle((server, profile))
            link = self.pool.ready_link((server, profile))
            if link is None:
                log.error(
                    "server_left_out",
                    server=server,
                    reason=self.pool.why(server, profile),
                )
            else:
                links.append(link)

        return links

    def _initialize_result(self, links: list[Downstream]) -> Message:
        capabilities: dict[str, Any] = {"logging": {}}
        instructions: list[str] = []
        for link in links:
            offered = link.capabilities
            for kind in ("tools", "prompts"):
                if kind in offered:
                    capabilities[kind] = {"listChanged": True}

            if "resources" in offered:
                resources = capabilities.setdefault("resources", {"listChanged": True})
                if _flag(offered["resources"], "subscribe"):
                    resources["subscribe"] = True

            if "completions" in offered:
                capabilities["completions"] = {}

            text = (link.initialize_result or {}).get("instructions")
            if isinstance(text, str) and text.strip():
                instructions.append(f"## {link.server}\n{text.strip()}")

        result: Message = {
            "protocolVersion": self.protocol_version,
            "capabilities": capabilities,
            "serverInfo": {"name": "mcp-sandbox-proxy", "version": __version__},
        }
        if instructions:
            result["instructions"] = "\n\n".join(instructions)

        return result

    async def _ping(self, message: Message) -> None:
        await self._reply(message, {})

    async def _set_level(self, message: Message) -> None:
        await self._reply(message, {})
        for link in self._links():
            if "logging" in link.capabilities:
                await self._send_quietly(link, "logging/setLevel", _params(message))

    async def _send_quietly(self, link: Downstream, method: str, params: Any) -> None:
        async def ignore(_: Message) -> None:
            return None

        request: Message = {"jsonrpc": "2.0", "method": method, "params": params}
        try:
            await link.send_request(request, Awaited(method, ignore), timeout_s=30.0)
        except DownstreamError as exc:
            log.warning("server_unreachable", server=link.server, error=str(exc))

    def _links(self) -> list[Downstream]:
        """The ready instance of each server's own profile."""
        assert self.pool is not None
        return [
            link
            for link in self.pool.links()
            if self.default_profiles.get(link.server) == link.profile
        ]

    # -- lists -------------------------------------------------------------------

    async def _list(self, message: Message) -> None:
        try:
            result = await self.lists.page(
                message["method"], _params(message), self._links()
            )
        except InvalidCursor as exc:
            await self._reply_error(
                message, jsonrpc.INVALID_PARAMS, f"Invalid params: {exc}"
            )
            return

        await self._reply(message, result)

    # -- routed requests ---------------------------------------------------------

    async def _call_tool(self, message: Message, origin: Origin | None = None) -> None:
        params = _params(message)
        if origin is None:
            origin = self._tool_origin(params)

        if origin is None:
            await self._reply_error(
                message, jsonrpc.INVALID_PARAMS, f"Unknown tool: {params.get('name')}"
            )
            return

        call = await self.gate.admit(message["id"], origin.server, origin.name, params)
        outgoing = {**message, "params": {**params, "name": origin.name}}
        assert self.pool is not None
        try:
            # The call's deadline bounds the wait for a restarting server too.
            link = await self.pool.get((origin.server, call.profile), call.timeout_s)
            await self._forward(link, outgoing, call, call.timeout_s)
        except DownstreamError as exc:
            error = jsonrpc.error_response(
                message["id"], jsonrpc.SERVER_UNAVAILABLE, str(exc)
            )
            await self.front.send(await self.completed(call, error))

    def _tool_origin(self, params: Message) -> Origin | None:
        """The server and own name of the tool a call names, if one of ours."""
        name = params.get("name")
        origin = self.tools.resolve(name) if isinstance(name, str) else None
        if origin is None or origin.server not in self.default_profiles:
            return None

        return origin

    async def _get_prompt(self, message: Message) -> None:
        params = _params(message)
        name = params.get("name")
        origin = self.prompts.resolve(name) if isinstance(name, str) else None
        if origin is None or origin.server not in self.default_profiles:
            await self._reply_error(
                message, jsonrpc.INVALID_PARAMS, f"Unknown prompt: {name}"
            )
            return

        link = await self._default_link(origin.server)
        outgoing = {**message, "params": {**params, "name": origin.name}}
        await self._forward(link, outgoing)

    async def _by_uri(self, message: Message) -> None:
        uri = _params(message).get("uri")
        link = self._resource_owner(uri) if isinstance(uri, str) else None
        if link is None:
            await self._reply_error(
                message, jsonrpc.INVALID_PARAMS, f"Resource not found: {uri}"
            )
            return

        await self._forward(link, message)

    async def _complete(self, message: Message) -> None:
        params = _params(message)
        ref = jsonrpc.as_object(params.get("ref"))
        name, uri = ref.get("name"), ref.get("uri")
        link: Downstream | None = None
        if ref.get("type") == "ref/prompt" and isinstance(name, str):
            origin = self.prompts.resolve(name)
            if origin is not None and origin.server in self.default_profiles:
                link = await self._default_link(origin.server)
                params = {**params, "ref": {**ref, "name": origin.name}}
        elif ref.get("type") == "ref/resource" and isinstance(uri, str):
            link = self._resource_owner(uri)

        if link is None:
            await self._reply_error(
                message,
                jsonrpc.INVALID_PARAMS,
                "Invalid params: unknown completion ref",
            )
            return

        await self._forward(link, {**message, "params": params})

    def _resource_owner(self, uri: str) -> Downstream | None:
        links = {link.server: link for link in self._links()}
        server = self.resources.route(uri)
        if server is not None:
            return links.get(server)

        # Not listed yet: if only one server offers resources, it is the owner.
        owners = [link for link in links.values() if "resources" in link.capabilities]
        return owners[0] if len(owners) == 1 else None

    async def _default_link(self, server: str) -> Downstream:
        assert self.pool is not None
        return await self.pool.get((server, self.default_profiles[server]))

    async def _forward(
        self,
        link: Downstream,
        message: Message,
        call: Call | None = None,
        timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        """Send a client's request on to ``link``; its answer goes back through
        the gate when it is the tool ``call``."""
        client_id: RequestId = message["id"]
        if client_id in self._cancelled:
            await self._record_cancelled(client_id)
            return

        outgoing, forwarded = self._route(link, message, call)
        try:
            await link.send_request(
                outgoing, forwarded, timeout_s=timeout_s, request_id=forwarded.down_id
            )
        except DownstreamError:
            self.release(forwarded)
            raise

    def _route(
        self, link: Downstream, message: Message, call: Call | None
    ) -> tuple[Message, Forwarded]:
        """Enter a client's request in the tables before it leaves for ``link``
        (its answer may come back before the send returns): the message to send,
        and what awaits its answer, which is also its entry among the requests
        in flight."""
        client_id: RequestId = message["id"]
        outgoing, token = message, None
        params = message.get("params")
        if type(params) is dict and "_meta" in params:
            outgoing, token = self._map_progress(link, message)

        forwarded = Forwarded(
            self, message["method"], client_id, link, link.next_id(), token, call
        )
        self._inflight[client_id] = forwarded
        return outgoing, forwarded

    def release(self, forwarded: Forwarded) -> None:
        """Drop what a forwarded request held in the tables."""
        self._inflight.pop(forwarded.client_id, None)
        if forwarded.token is not None:
            self._progress.pop(forwarded.token, None)

    async def completed(self, call: Call, response: Message) -> Message:
        """``response`` through the gate; a refusal there becomes the answer."""
        try:
            return await self.gate.complete(call, response)
        except Exception as exc:
            return _refused_answer(response, exc)

    def completed_now(self, call: Call, response: Message) -> Message | None:
        """``completed`` without a wait; None, having done nothing, when the
        outcome cannot be recorded at once."""
        try:
            return self.gate.complete_now(call, response)
        except Exception as exc:
            return _refused_answer(response, exc)

    def _map_progress(
        self, link: Downstream, message: Message
    ) -> tuple[Message, int | None]:
        params = _params(message)
        meta = params.get("_meta")
        if type(meta) is not dict or "progressToken" not in meta:
            return message, None

        fields = cast("dict[str, Any]", meta)
        token = next(self._ids)
        self._progress[token] = ProgressRoute(fields["progressToken"], link)
        new_params = {**params, "_meta": {**fields, "progressToken": token}}
        return {**message, "params": new_params}, token

    # -- client notifications and responses ----------------------------------------

    async def _handle_client_notification(self, message: Message) -> None:
        method: str = message["method"]
        params = _params(message)
        if method == "notifications/initialized":
            return

        if method == "notifications/cancelled":
            await self._client_cancelled(params)
        elif method == "notifications/progress":
            route = self.server_requests.client_progress(params.get("progressToken"))
            if route is not None:
                link, server_token = route
                params = {**params, "progressToken": server_token}
                await send_safely(link, {**message, "params": params})
        else:
            for link in self._all_links():
                await send_safely(link, message)

    async def _client_cancelled(self, params: Message) -> None:
        request_id = jsonrpc.as_request_id(params.get("requestId"))
        if request_id is None:
            return

        route = self._inflight.pop(request_id, None)
        if route is None:
            # Not forwarded yet: remembered until its handler forwards it. Ids
            # of no request in flight are ignored, as the protocol says.
            if request_id in self._handling:
                self._cancelled.add(request_id)

            return

        if route.token is not None:
            self._progress.pop(route.token, None)

        pending = route.link.pending.pop(route.down_id, None)
        if pending is not None:
            await self._record_cancelled(pending.client_id)

        reason = params.get("reason")
        reason = reason if isinstance(reason, str) else "cancelled by the client"
        assert self._group is not None
        self._group.start_soon(route.link.cancel, [route.down_id], reason)

    async def _record_cancelled(self, client_id: RequestId | None) -> None:
        try:
            await self.gate.cancelled(client_id)
        except Denied as exc:
            log.error("audit_record_lost", event_name="call_outcome", error=str(exc))

    def _all_links(self) -> list[Downstream]:
        assert self.pool is not None
        return self.pool.links()

    # -- servers to client -------------------------------------------------------

    async def on_server_message(self, link: Downstream, message: Message) -> None:
        if "id" in message:
            await self.server_requests.forward(link, message)
            return

        bucket = self._buckets.get(link)
        if bucket is None:
            bucket = self._buckets[link] = RateBucket(NOTIFICATIONS_PER_S)

        if not bucket.take():
            if bucket.dropped % 1000 == 1:
                log.warning(
                    "server_notifications_dropped",
                    server=link.server,
                    count=bucket.dropped,
                )

            return

        method: str = message["method"]
        params = _params(message)
        if method == "notifications/progress":
            token = params.get("progressToken")
            route = self._progress.get(token) if type(token) is int else None
            if route is None or route.link is not link:
                return

            message = {
                **message,
                "params": {**params, "progressToken": route.client_token},
            }
        elif method == "notifications/cancelled":
            message = self.server_requests.cancelled_by_server(link, message)
            if not message:
                return

        await self.front.send(message)

    async def on_server_ready(self, link: Downstream) -> None:
        await self.gate.sandbox_event("sandbox_started", link)
        if self.client_init is not None and link.profile == self.default_profiles.get(
            link.server
        ):
            await self._announce_lists_changed(link.capabilities)

    async def on_server_exit(self, link: Downstream, reason: str) -> None:
        log.warning(
            "server_exited", server=link.server, profile=link.profile, reason=reason
        )
        await self.gate.sandbox_event("sandbox_exited", link, reason=reason)
        await self.server_requests.server_exited(link)

        self._progress = {t: r for t, r in self._progress.items() if r.link is not link}
        bucket = self._buckets.pop(link, None)
        if bucket is not None and bucket.dropped:
            log.warning(
                "server_notifications_dropped", server=link.server, count=bucket.dropped
            )

        if self.client_init is not None and link.profile == self.default_profiles.get(
            link.server
        ):
            self.tools.forget_server(link.server)
            self.prompts.forget_server(link.server)
            self.resources.forget_server(link.server)
            await self._announce_lists_changed(link.capabilities)

    async def _announce_lists_changed(self, capabilities: dict[str, Any]) -> None:
        for kind in ("tools", "prompts", "resources"):
            if kind in capabilities:
                await self.front.send(
                    {"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"}
                )

    # -- deadlines -----------------------------------------------------------------

    async def watch_deadlines(self) -> None:
        """Answer requests whose deadline passed, each way, and cancel them."""
        while True:
            await anyio.sleep(DEADLINE_TICK_S)
            try:
                await self._expire(anyio.current_time())
            except Exception:
                # The watcher must outlive a bug: log it and keep watching.
                log.exception("deadline_check_failed")

    async def _expire(self, now: float) -> None:
        assert self._group is not None
        for link in self._all_links():
            expired = await link.expire(now)
            for _, pending in expired:
                error = jsonrpc.error_response(
                    pending.client_id,
                    jsonrpc.REQUEST_TIMEOUT,
                    f"{pending.method} to server {link.server!r} exceeded its deadline",
                )
                await pending.deliver(error)

            if expired:
                down_ids = [down_id for down_id, _ in expired]
                self._group.start_soon(link.cancel, down_ids, "deadline exceeded")

        await self.server_requests.expire(now, self._group)

    def bind(self, group: anyio.abc.TaskGroup, pool: Pool) -> None:
        self._group = group
        self.pool = pool


def _refused_answer(response: Message, exc: Exception) -> Message:
    """What the client gets when the gate refused a response, or failed on it."""
    if isinstance(exc, Denied):
        return jsonrpc.error_response(response.get("id"), exc.code, str(exc), exc.data)

    # A bug in an interceptor must cost this answer, not the call: the client
    # hears of it rather than waiting forever.
    log.error("response_finish_failed", exc_info=exc)
    return jsonrpc.error_response(
        response.get("id"),
        jsonrpc.INTERNAL_ERROR,
        f"Internal error: {type(exc).__name__}",
    )


def _params(message: Message) -> Message:
    params = message.get("params")
    return params if type(params) is dict else {}  # type: ignore[return-value]


def _flag(value: Any, key: str) -> bool:
    return jsonrpc.as_object(value).get(key) is True
