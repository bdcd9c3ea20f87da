"""Requests a server sends the client (sampling, elicitation, roots) and their answers.

Each such request reaches the client under an id of the proxy's own, and with a
progress token of its own, so that those of different servers cannot collide;
the client's answer goes back to the server that asked, under the server's id.
The server's policy must allow the request and the client must support it. A
server has at most ``MAX_SERVER_REQUESTS`` waiting, each for at most its
policy's call timeout: then the client is told to cancel it and the server gets
an error. A server that exits has its requests cancelled on the client's side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import structlog

from mcp_sandbox_proxy.exceptions import DownstreamError
from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.downstream import CANCEL_GRACE_S, Downstream
from mcp_sandbox_proxy.gateway.front import ClientChannel
from mcp_sandbox_proxy.gateway.gate import CallGate, Denied
from mcp_sandbox_proxy.gateway.jsonrpc import Message, RequestId

log = structlog.get_logger(__name__)

# Requests one server may have waiting for the client's answer at once; past this,
# the server's new requests are refused.
MAX_SERVER_REQUESTS = 32


@dataclass
class ServerRequestRoute:
    """A request a server sent the client, under the id the client sees."""

    link: Downstream
    server_id: RequestId
    method: str
    deadline: float
    token: int | None = None


class ServerRequests:
    """The table of server requests waiting for the client's answer."""

    def __init__(
        self,
        front: ClientChannel,
        gate: CallGate,
        ids: Iterator[int],
        client_init: Callable[[], Message | None],
    ) -> None:
        self.front = front
        self.gate = gate
        self._ids = ids
        self._client_init = client_init
        self._routes: dict[int, ServerRequestRoute] = {}
        self._client_progress: dict[int, tuple[Downstream, Any]] = {}

    async def forward(self, link: Downstream, message: Message) -> None:
        """Pass a server's request to the client, or answer it (a ping, a refusal)."""
        server_id = jsonrpc.valid_id(message)
        if server_id is None:
            return

        method: str = message["method"]
        if method == "ping":
            await send_safely(link, jsonrpc.result_response(server_id, {}))
            return

        refusal = await self._refusal(link, method)
        if refusal is not None:
            code, text = refusal
            await send_safely(link, jsonrpc.error_response(server_id, code, text))
            return

        client_facing = next(self._ids)
        deadline = anyio.current_time() + link.bounds.client_answer_timeout_s
        route = ServerRequestRoute(link, server_id, method, deadline)
        self._routes[client_facing] = route
        message = self._map_progress(route, message)
        await self.front.send({**message, "id": client_facing})

    async def answer(self, message: Message) -> None:
        """Take the client's answer back to the server that asked."""
        request_id = message.get("id")
        route = self._routes.pop(request_id, None) if type(request_id) is int else None
        if route is None:
            log.warning("client_response_unmatched", id=str(request_id)[:40])
            return

        self._forget(route)
        await send_safely(route.link, {**message, "id": route.server_id})

    def client_progress(self, token: Any) -> tuple[Downstream, Any] | None:
        """The server and its own token for a progress token the client was given."""
        return self._client_progress.get(token) if type(token) is int else None

    def cancelled_by_server(self, link: Downstream, message: Message) -> Message:
        """A server's cancellation of one of its requests, in the client's ids;
        empty when the request is not waiting (any more)."""
        params = jsonrpc.as_object(message.get("params"))
        for client_facing, route in list(self._routes.items()):
            if route.link is link and route.server_id == params.get("requestId"):
                del self._routes[client_facing]
                self._forget(route)
                return {**message, "params": {**params, "requestId": client_facing}}

        return {}

    async def server_exited(self, link: Downstream) -> None:
        """Tell the client to cancel what the exited server asked."""
        for route_id, route in list(self._routes.items()):
            if route.link is link:
                del self._routes[route_id]
                self._forget(route)
                await self.front.send(cancel_notice(route_id, "the server exited"))

    async def expire(self, now: float, group: anyio.abc.TaskGroup) -> None:
        """The client did not answer in time: it is told to cancel, and the server
        gets an error, sent from ``group`` so that a server that takes no input
        does not hold the caller up."""
        for client_facing, route in list(self._routes.items()):
            if route.deadline > now:
                continue

            del self._routes[client_facing]
            self._forget(route)
            await self.front.send(cancel_notice(client_facing, "no answer in time"))
            timeout_s = route.link.bounds.client_answer_timeout_s
            error = jsonrpc.error_response(
                route.server_id,
                jsonrpc.REQUEST_TIMEOUT,
                f"the client did not answer {route.method} within {timeout_s:g} s",
            )
            group.start_soon(_send_bounded, route.link, error)

    async def _refusal(self, link: Downstream, method: str) -> tuple[int, str] | None:
        try:
            refusal = await self.gate.server_request_refusal(
                link.server, method, self._client_init()
            )
        except Denied as exc:
            return exc.code, str(exc)

        if refusal is not None:
            return jsonrpc.POLICY_DENIED, refusal

        waiting = sum(1 for r in self._routes.values() if r.link is link)
        if waiting >= MAX_SERVER_REQUESTS:
            return jsonrpc.SERVER_UNAVAILABLE, (
                f"{MAX_SERVER_REQUESTS} requests of server {link.server!r} wait for"
                " the client's answer already"
            )

        return None

    def _map_progress(self, route: ServerRequestRoute, message: Message) -> Message:
        """Give the client a token of the proxy's own for the server's, so that
        tokens of different servers cannot collide."""
        params = jsonrpc.as_object(message.get("params"))
        meta = jsonrpc.as_object(params.get("_meta"))
        if "progressToken" not in meta:
            return message

        route.token = next(self._ids)
        self._client_progress[route.token] = (route.link, meta["progressToken"])
        new_params = {**params, "_meta": {**meta, "progressToken": route.token}}
        return {**message, "params": new_params}

    def _forget(self, route: ServerRequestRoute) -> None:
        if route.token is not None:
            self._client_progress.pop(route.token, None)


async def send_safely(link: Downstream, message: Message) -> None:
    """Send to a server; one that is gone is logged, not raised."""
    try:
        await link.send(message)
    except DownstreamError as exc:
        log.warning("server_unreachable", server=link.server, error=str(exc))


async def _send_bounded(link: Downstream, message: Message) -> None:
    with anyio.move_on_after(CANCEL_GRACE_S):
        await send_safely(link, message)


def cancel_notice(request_id: RequestId, reason: str) -> Message:
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": reason},
    }
