"""The list requests: every server asked at once, its page merged into one.

``tools/list``, ``prompts/list``, ``resources/list`` and
``resources/templates/list`` go to every ready server that offers the kind; the
pages come back merged in server order, tools and prompts under their exposed
names (tools filtered by policy and pins first), resources entered in the routes
that later requests follow. The cursor the client gets holds each server's own
(see ``cursors``), so every server's pagination is kept.
"""

from __future__ import annotations

from typing import Any, cast

import anyio
import structlog

from mcp_sandbox_proxy.exceptions import DownstreamError
from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.catalog import NameTable, Origin, ResourceRoutes
from mcp_sandbox_proxy.gateway.cursors import decode_cursor, encode_cursor
from mcp_sandbox_proxy.gateway.downstream import Downstream
from mcp_sandbox_proxy.gateway.gate import CallGate
from mcp_sandbox_proxy.gateway.jsonrpc import Message

log = structlog.get_logger(__name__)

LIST_TIMEOUT_S = 30.0

# Each list method: the server capability it needs, and the key of its items.
LIST_KINDS = {
    "tools/list": ("tools", "tools"),
    "prompts/list": ("prompts", "prompts"),
    "resources/list": ("resources", "resources"),
    "resources/templates/list": ("resources", "resourceTemplates"),
}


class Lists:
    """Answers the list requests from every server, and fills the name tables
    and resource routes that the relay routes by."""

    def __init__(
        self,
        gate: CallGate,
        prefixes: dict[str, str],
        tools: NameTable,
        prompts: NameTable,
        resources: ResourceRoutes,
    ) -> None:
        self.gate = gate
        self.prefixes = prefixes
        self.tools = tools
        self.prompts = prompts
        self.resources = resources

    async def page(
        self, method: str, params: Message, ready: list[Downstream]
    ) -> Message:
        """One page of ``method`` from the ``ready`` instances; raises
        ``InvalidCursor`` for a cursor the proxy did not issue."""
        capability, key = LIST_KINDS[method]
        links = {link.server: link for link in ready if capability in link.capabilities}
        cursor = params.get("cursor")
        todo = (
            decode_cursor(cursor)
            if isinstance(cursor, str)
            else dict.fromkeys(links, "")
        )

        pages: dict[str, Any] = {}
        async with anyio.create_task_group() as group:
            for server, server_cursor in todo.items():
                if server in links:
                    group.start_soon(
                        self._fetch_page,
                        links[server],
                        method,
                        params,
                        server_cursor,
                        pages,
                    )

        items: list[Any] = []
        remaining: dict[str, str] = {}
        for server in sorted(pages):
            page = pages[server]
            items.extend(await self._expose(method, server, page.get(key, [])))
            if isinstance(page.get("nextCursor"), str):
                remaining[server] = page["nextCursor"]

        result: Message = {key: items}
        if remaining:
            result["nextCursor"] = encode_cursor(remaining)

        return result

    async def _fetch_page(
        self,
        link: Downstream,
        method: str,
        params: Message,
        cursor: str,
        pages: dict[str, Any],
    ) -> None:
        request = {k: v for k, v in params.items() if k != "cursor"}
        if cursor:
            request["cursor"] = cursor

        try:
            page = await link.request(method, request or None, LIST_TIMEOUT_S)
        except DownstreamError as exc:
            log.warning(
                "server_list_failed", server=link.server, method=method, error=str(exc)
            )
            return

        if isinstance(page, dict):
            pages[link.server] = page

    async def _expose(self, method: str, server: str, items: Any) -> list[Any]:
        listed = cast("list[Any]", items) if isinstance(items, list) else []
        entries = [jsonrpc.as_object(item) for item in listed if isinstance(item, dict)]
        if method == "tools/list":
            entries = await self.gate.visible_tools(server, entries)
            return self._renamed(self.tools, server, entries)

        if method == "prompts/list":
            return self._renamed(self.prompts, server, entries)

        if method == "resources/list":
            self.resources.add_uris(server, (str(e.get("uri")) for e in entries))
        else:
            self.resources.add_templates(
                server, (str(e.get("uriTemplate")) for e in entries)
            )

        return entries

    def _renamed(
        self, table: NameTable, server: str, entries: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        prefix = self.prefixes[server]
        renamed: list[dict[str, Any]] = []
        for entry in entries:
            name = entry.get("name")
            if isinstance(name, str):
                exposed = table.expose(prefix, Origin(server, name))
                renamed.append({**entry, "name": exposed})

        return renamed
