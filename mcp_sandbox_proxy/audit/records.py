"""The schema of audit records: the envelope, the event kinds and their fields.

A record is one flat JSON object on one line. Every record starts with the same
envelope (``v``, ``seq``, ``ts``, ``instance``, ``event``), carries the fields of
its event kind, and ends with the chain fields (``prev``, ``hash``, optional
``mac``). The typed dicts below document the fields each event kind is written
with; fields not listed are kept as given, after redaction.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict

# Raised when a field is renamed, removed or changes meaning; readers check it.
SCHEMA_VERSION = 1

# The first record of every file: a new chain, or the continuation of one.
HEADER_EVENT = "audit_opened"
# Written when the proxy closes the log cleanly; its absence marks an abrupt stop.
CLOSE_EVENT = "audit_closed"

ENVELOPE_FIELDS = ("v", "seq", "ts", "instance", "event")
CHAIN_FIELDS = ("prev", "hash", "mac")
RESERVED_FIELDS = frozenset(ENVELOPE_FIELDS + CHAIN_FIELDS)

# Fields the caller cannot set by value but that steer how a record is written:
# ``redact_names`` lists more argument names to redact; it is not recorded.
REDACT_NAMES_FIELD = "redact_names"

# Fields whose values the proxy itself sets (names, ids, digests, numbers):
# written as given when they are plain scalars; every other field is redacted.
TRUSTED_FIELDS = frozenset(
    {
        "backend",
        "client",
        "config_digest",
        "config_path",
        "cpu_seconds",
        "decision",
        "exit_status",
        "host",
        "is_error",
        "limit",
        "method",
        "network",
        "peak_memory_bytes",
        "pinned_digest",
        "policy",
        "policy_digest",
        "port",
        "profile",
        "queued_ms",
        "request_id",
        "result_bytes",
        "result_digest",
        "rule",
        "sandbox_id",
        "sandbox_ms",
        "seen_digest",
        "server",
        "session",
        "tool",
        "total_ms",
        "value",
    }
)

HeaderReason = Literal["new", "appended", "rotated"]


class CallFields(TypedDict, total=False):
    """Who made a call, to what, and under which policy."""

    session: str
    client: str
    server: str
    tool: str
    request_id: str | int
    policy: str
    policy_digest: str


class CallIntent(CallFields, total=False):
    """A call was allowed and is about to be forwarded (written before it is)."""

    decision: str
    rule: str
    arguments: dict[str, Any]


class CallDenied(CallFields, total=False):
    """A call was refused by policy and never reached the server."""

    decision: str
    rule: str
    reason: str
    arguments: dict[str, Any]


class SandboxFields(TypedDict, total=False):
    """Which sandbox did the work."""

    server: str
    backend: str
    sandbox_id: str


class SandboxStarted(SandboxFields, total=False):
    """A sandbox started; ``network`` is its mode (none, egress or host)."""

    profile: str
    network: str


class CallOutcome(CallFields, SandboxFields, total=False):
    """A forwarded call completed, failed or timed out."""

    result_bytes: int
    is_error: bool
    result_digest: str
    error: str
    queued_ms: float
    sandbox_ms: float
    total_ms: float


class SandboxExited(SandboxFields, total=False):
    """A sandbox stopped (``sandbox_exited``) or died unasked (``sandbox_crashed``)."""

    exit_status: int
    cpu_seconds: float
    peak_memory_bytes: int
    reason: str


class LimitHit(SandboxFields, total=False):
    """A sandbox ran into one of its resource bounds."""

    limit: str
    value: int | float


class ConfigLoaded(TypedDict, total=False):
    """The proxy read its configuration."""

    config_path: str
    config_digest: str
    servers: list[str]


class ClientRequest(CallFields, total=False):
    """A client request that is audited without being a tool call."""

    method: str


class ToolPinChanged(CallFields, total=False):
    """A server's definition of a tool differs from the pinned one."""

    pinned_digest: str
    seen_digest: str


class EgressAttempt(SandboxFields, total=False):
    """A sandbox tried to reach a host through its egress filter."""

    host: str
    port: int
    addresses: list[str]
    decision: str
    reason: str
    rule: str | None
    bytes_up: int
    bytes_down: int
    duration_ms: float
    protocol: str
    error: str | None
    calls: list[dict[str, Any]]


class PackageInstall(TypedDict, total=False):
    """A step of installing a server's package in its install sandbox:
    ``package_install_started``, ``package_installed``, ``package_install_failed``,
    and ``package_ready`` when a server starts from a recorded installation."""

    server: str
    profile: str
    runner: str
    ecosystem: str
    package: str
    registry: list[str]
    version: str
    program: str
    seconds: float
    error: str


class ClientConnected(TypedDict, total=False):
    """A client completed its initialize; ``client`` names it."""

    session: str
    client: str


class Header(TypedDict, total=False):
    """The first record of a file, starting or continuing the chain."""

    reason: HeaderReason
    durability: str
    hmac: bool
    key_id: str
    previous_file: str
    discarded_tail_bytes: int
    discarded_tail_sha256: str


class Closing(TypedDict, total=False):
    """The last record the proxy writes when it shuts down cleanly."""

    records: int


EVENT_FIELDS: dict[str, type[Any]] = {
    "config_loaded": ConfigLoaded,
    "client_connected": ClientConnected,
    "call_intent": CallIntent,
    "call_outcome": CallOutcome,
    "call_denied": CallDenied,
    "sandbox_started": SandboxStarted,
    "sandbox_exited": SandboxExited,
    "sandbox_crashed": SandboxExited,
    "sandbox_restarted": SandboxFields,
    "limit_hit": LimitHit,
    "client_request": ClientRequest,
    "tool_pin_changed": ToolPinChanged,
    "egress_attempt": EgressAttempt,
    "package_install_started": PackageInstall,
    "package_installed": PackageInstall,
    "package_install_failed": PackageInstall,
    "package_ready": PackageInstall,
    HEADER_EVENT: Header,
    CLOSE_EVENT: Closing,
}
EVENTS = frozenset(EVENT_FIELDS)
# Only the log itself writes these.
INTERNAL_EVENTS = frozenset({HEADER_EVENT, CLOSE_EVENT})


def check_event(event: str, fields: dict[str, Any]) -> None:
    """Refuse an unknown event kind or a field that would shadow the envelope."""
    if event not in EVENTS or event in INTERNAL_EVENTS:
        raise ValueError(
            f"unknown audit event {event!r}; known events:"
            f" {', '.join(sorted(EVENTS - INTERNAL_EVENTS))}"
        )

    if not RESERVED_FIELDS.isdisjoint(fields):
        clash = ", ".join(sorted(RESERVED_FIELDS.intersection(fields)))
        raise ValueError(f"audit event {event!r} sets reserved field(s) {clash}")
