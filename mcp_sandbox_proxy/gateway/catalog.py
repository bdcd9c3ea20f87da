"""One namespace for the tools, prompts and resources of every downstream server.

Tool and prompt names get a per-server prefix so that they stay unique; the result
must still be a valid MCP tool name (letters, digits, ``_``, ``-``, ``.``; at most
128 characters). A collision left after prefixing is resolved deterministically: the
first name listed keeps it, a later one gets a suffix made from a hash of its server
and original name, and the collision is logged. Resources keep their URIs; the
catalog remembers which server listed each URI and template, to route reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MAX_NAME_LENGTH = 128
SUFFIX_HEX_DIGITS = 8
# Unlisted names already parsed by prefix, kept so that a client that calls
# without listing first pays the parse once. Names come from the client, so the
# table is bounded: past this it starts over.
MAX_PARSED_NAMES = 1024
_INVALID_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Origin:
    """Where an exposed name comes from: a server and the name it uses."""

    server: str
    name: str


def _suffix(origin: Origin) -> str:
    digest = hashlib.sha256(f"{origin.server}/{origin.name}".encode()).hexdigest()
    return "_" + digest[:SUFFIX_HEX_DIGITS]


def make_name(prefix: str, name: str) -> str:
    """``prefix + name`` made valid: odd characters replaced, length bounded."""
    candidate = _INVALID_NAME_CHARS.sub("_", prefix + name)
    if len(candidate) <= MAX_NAME_LENGTH:
        return candidate

    tail = _suffix(Origin(prefix, name))
    return candidate[: MAX_NAME_LENGTH - len(tail)] + tail


@dataclass
class NameTable:
    """Exposed names of one kind (tools or prompts) and where they come from;
    ``prefixes`` maps each server to the prefix of its names."""

    kind: str
    prefixes: dict[str, str] = field(default_factory=lambda: {})
    _by_exposed: dict[str, Origin] = field(default_factory=lambda: {})
    _by_origin: dict[Origin, str] = field(default_factory=lambda: {})
    _parsed: dict[str, Origin | None] = field(default_factory=lambda: {})

    def expose(self, prefix: str, origin: Origin) -> str:
        """The name the client sees for ``origin``, stable once given."""
        known = self._by_origin.get(origin)
        if known is not None:
            return known

        exposed = make_name(prefix, origin.name)
        holder = self._by_exposed.get(exposed)
        if holder is not None and holder != origin:
            tail = _suffix(origin)
            exposed = exposed[: MAX_NAME_LENGTH - len(tail)] + tail
            log.warning(
                "name_collided",
                kind=self.kind,
                name=origin.name,
                server=origin.server,
                held_by=holder.server,
                exposed_as=exposed,
            )

        self._by_exposed[exposed] = origin
        self._by_origin[origin] = exposed
        return exposed

    def resolve(self, exposed: str) -> Origin | None:
        """The origin of an exposed name; unlisted names are parsed by prefix."""
        origin = self._by_exposed.get(exposed)
        if origin is not None:
            return origin

        if exposed in self._parsed:
            return self._parsed[exposed]

        if len(self._parsed) >= MAX_PARSED_NAMES:
            self._parsed.clear()

        origin = self._parsed[exposed] = self._parse(exposed)
        return origin

    def _parse(self, exposed: str) -> Origin | None:
        # A client may call a name it has not listed in this connection: take the
        # longest prefix that matches, as the names were built that way.
        matches = [
            (len(prefix), server)
            for server, prefix in self.prefixes.items()
            if exposed.startswith(prefix) and len(exposed) > len(prefix)
        ]
        if not matches:
            return None

        _, server = max(matches)
        return Origin(server, exposed[len(self.prefixes[server]) :])

    def forget_server(self, server: str) -> None:
        """Drop the names of ``server`` (it went away); others keep theirs."""
        for origin in [o for o in self._by_origin if o.server == server]:
            del self._by_exposed[self._by_origin.pop(origin)]


@lru_cache(maxsize=256)
def _compiled_template(template: str) -> Callable[[str], Any] | None:
    # The SDK's matcher is imported on first use: it is not needed to start.
    from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

    try:
        return UriTemplate.parse(template).match
    except InvalidUriTemplate:
        return None


@dataclass
class ResourceRoutes:
    """Which server listed which resource URI and URI template."""

    _uris: dict[str, str] = field(default_factory=lambda: {})
    _templates: dict[str, str] = field(default_factory=lambda: {})

    def add_uris(self, server: str, uris: Iterable[str]) -> None:
        for uri in uris:
            self._uris.setdefault(uri, server)

    def add_templates(self, server: str, templates: Iterable[str]) -> None:
        for template in templates:
            self._templates.setdefault(template, server)

    def route(self, uri: str) -> str | None:
        """The server that owns ``uri``, by exact URI first, then by template."""
        server = self._uris.get(uri)
        if server is not None:
            return server

        for template, owner in self._templates.items():
            match = _compiled_template(template)
            if match is not None and match(uri) is not None:
                return owner

        return None

    def forget_server(self, server: str) -> None:
        self._uris = {u: s for u, s in self._uris.items() if s != server}
        self._templates = {t: s for t, s in self._templates.items() if s != server}
