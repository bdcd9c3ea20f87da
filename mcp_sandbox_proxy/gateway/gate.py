"""The interceptors of the relay: policy, pinning and audit around each call.

Every tools/call passes ``admit`` before it is forwarded and ``complete`` after its
response: the decision and its rule, the intent and outcome records, and the
sanitising of the result all happen here. A denial is a ``Denied`` value raised to
the relay, which turns it into the JSON-RPC error the client sees.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import anyio
import orjson
import structlog

from mcp_sandbox_proxy.audit import AuditLog
from mcp_sandbox_proxy.exceptions import AuditError
from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.downstream import Downstream
from mcp_sandbox_proxy.gateway.jsonrpc import Message, RequestId
from mcp_sandbox_proxy.policy import (
    Decision,
    PolicySet,
    ResolvedPolicy,
    sanitize_result,
)
from mcp_sandbox_proxy.policy.pins import ToolPins

log = structlog.get_logger(__name__)

CLIENT_REQUEST_RIGHTS = {
    "sampling/createMessage": ("sampling", "allow_sampling"),
    "elicitation/create": ("elicitation", "allow_elicitation"),
    "roots/list": ("roots", "allow_roots"),
}


class Denied(Exception):
    """A request refused before it reached any server."""

    def __init__(
        self, message: str, *, code: int = jsonrpc.POLICY_DENIED, data: Any = None
    ):
        super().__init__(message)
        self.code = code
        self.data = data


class Call:
    """One admitted tool call, from its intent record to its outcome record.

    A plain class with slots: one is made for every call, and a dataclass with
    a default factory costs more to make.
    """

    __slots__ = (
        "admitted_at",
        "client_id",
        "fields",
        "policy",
        "sent_at",
        "server",
        "tool",
    )

    def __init__(
        self,
        client_id: RequestId,
        server: str,
        tool: str,
        policy: ResolvedPolicy,
        admitted_at: float,
        sent_at: float = 0.0,
    ) -> None:
        self.client_id = client_id
        self.server = server
        self.tool = tool
        self.policy = policy
        self.admitted_at = admitted_at
        self.sent_at = sent_at
        # The fields that the intent record and the outcome record share, set
        # (never changed in place) when the intent is recorded.
        self.fields: Mapping[str, Any] = _NO_FIELDS

    @property
    def profile(self) -> str:
        return self.policy.profile

    @property
    def timeout_s(self) -> float:
        return self.policy.call_timeout_s


_NO_FIELDS: Mapping[str, Any] = MappingProxyType({})


class CallGate:
    """Applies policies, pins and audit to what crosses the relay."""

    def __init__(
        self,
        policies: PolicySet,
        pins: ToolPins | None,
        audit: AuditLog,
        *,
        session: str,
    ) -> None:
        self._policies = policies
        self._pins = pins
        self._audit = audit
        # Fixed for the log's life, and asked twice a call.
        self._records = audit.records
        self._session = session
        self._client = ""
        self._calls: dict[RequestId, Call] = {}
        self._running: dict[int, Downstream] = {}

    @property
    def writes_without_waiting(self) -> bool:
        """True when audit records are written without waiting for the disk."""
        return self._audit.writes_without_waiting

    async def client_connected(self, params: Message) -> None:
        info = params.get("clientInfo")
        if isinstance(info, dict):
            fields = jsonrpc.as_object(info)
            name, version = fields.get("name", ""), fields.get("version", "")
            self._client = f"{name} {version}".strip()

        await self._write("client_connected")

    def client_capabilities_for(
        self, server: str, capabilities: dict[str, Any]
    ) -> dict[str, Any]:
        """The client's capabilities less those the server's policy does not grant."""
        policy = self._policies.for_server(server)
        granted = dict(capabilities)
        for capability, right in CLIENT_REQUEST_RIGHTS.values():
            if not getattr(policy, right):
                granted.pop(capability, None)

        return granted

    async def visible_tools(
        self, server: str, tools: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        """The tools a client may see: not denied outright, not changed since pinned."""
        allowed = [
            t for t in tools if self._policies.tool_visible(server, str(t.get("name")))
        ]
        if self._pins is None:
            return allowed

        self._pins.refresh()
        report = self._pins.check(server, allowed)
        if report.new or report.hidden or report.renamed:
            await anyio.to_thread.run_sync(self._pins.save)
        for name, reason in report.hidden:
            log.warning("tool_hidden", server=server, tool=name, reason=reason)
            await self._write(
                "tool_pin_changed", server=server, tool=name, reason=reason
            )

        return report.visible

    async def admit(
        self, client_id: RequestId, server: str, tool: str, params: Message
    ) -> Call:
        """Decide on a call and record the intent; raises ``Denied``."""
        arguments = params.get("arguments")
        if self._pins is not None and self._pins.is_hidden(server, tool):
            await self._deny(
                server,
                tool,
                "pins.changed",
                "its definition changed since it was pinned",
                arguments,
            )

        decision = self._policies.check_call(server, tool, arguments)
        if not decision.allowed:
            await self._deny(
                server,
                tool,
                decision.rule,
                decision.message,
                arguments,
                decision.policy,
            )

        call = Call(client_id, server, tool, decision.policy, time.monotonic())
        if self._records:
            await self._write("call_intent", **self._intent(call, decision, arguments))

        return self._admitted(call)

    def plain_allowance(
        self, server: str, tool: str, params: Message
    ) -> Decision | None:
        """The decision on a call that ``admit_now`` can take: allowed by its name
        and arguments alone (see ``PolicySet.plain_allowance``), of a tool not held
        back by its pin, with the audit log taking records at once. None for any
        other call. Changes nothing."""
        if (self._pins is not None and self._pins.is_hidden(server, tool)) or (
            self._records and not self._audit.can_write_now()
        ):
            return None

        return self._policies.plain_allowance(server, tool, params.get("arguments"))

    def admit_now(
        self,
        client_id: RequestId,
        server: str,
        tool: str,
        params: Message,
        decision: Decision,
    ) -> Call | None:
        """``admit`` for a call given its ``plain_allowance``, with no wait: the
        call is counted against its rate limit and its intent recorded at once.
        None when the limit is reached (nothing counted) or the record failed;
        ``admit`` then decides again, and refuses the call."""
        policy = decision.policy
        if not self._policies.take_rate(server, tool, policy):
            return None

        now = time.monotonic()
        call = Call(client_id, server, tool, policy, now, now)
        if self._records:
            intent = self._intent(call, decision, params.get("arguments"))
            try:
                self._audit.write_now(
                    "call_intent", session=self._session, client=self._client, **intent
                )
            except AuditError:
                # ``admit`` counts the call once more: only a log that fails
                # closed gets here, and ``admit`` refuses unless it recovered.
                return None

            call.sent_at = time.monotonic()

        self._calls[client_id] = call
        return call

    def _intent(self, call: Call, decision: Decision, arguments: Any) -> Message:
        """The fields of a call's intent record; the outcome record repeats the
        first of them."""
        policy = decision.policy
        call.fields = {
            "request_id": call.client_id,
            "server": call.server,
            "tool": call.tool,
            "policy": policy.name,
            "policy_digest": policy.digest,
            "rule": decision.rule,
        }
        return {
            **call.fields,
            "decision": "allow",
            "arguments": arguments,
            "redact_names": list(policy.redact_names),
        }

    def _admitted(self, call: Call) -> Call:
        call.sent_at = time.monotonic()
        self._calls[call.client_id] = call
        return call

    async def _deny(
        self,
        server: str,
        tool: str,
        rule: str,
        message: str,
        arguments: Any,
        policy: ResolvedPolicy | None = None,
    ) -> None:
        policy = policy or self._policies.for_server(server)
        log.info("tool_call_denied", server=server, tool=tool, rule=rule)
        await self._write(
            "call_denied",
            server=server,
            tool=tool,
            policy=policy.name,
            policy_digest=policy.digest,
            decision="deny",
            rule=rule,
            arguments=arguments,
            redact_names=list(policy.redact_names),
        )
        if policy.name not in message:
            message = f"{message} (policy '{policy.name}', {rule})"

        raise Denied(f"Denied: {message}", data={"rule": rule, "policy": policy.name})

    async def complete(self, call: Call, response: Message) -> Message:
        """Sanitise the result and record the outcome; returns what the client gets."""
        response, outcome = self._finished(call, response)
        if outcome is not None:
            await self._write("call_outcome", **outcome)

        return response

    def complete_now(self, call: Call, response: Message) -> Message | None:
        """``complete`` with no wait; None, having done nothing, when the outcome
        cannot be recorded at once. Raises ``Denied``."""
        if self._records and not self._audit.can_write_now():
            return None

        response, outcome = self._finished(call, response)
        if outcome is not None:
            try:
                self._audit.write_now(
                    "call_outcome",
                    session=self._session,
                    client=self._client,
                    **outcome,
                )
            except AuditError as exc:
                raise _audit_refusal(exc) from exc

        return response

    def _finished(
        self, call: Call, response: Message
    ) -> tuple[Message, Message | None]:
        """What the client gets of ``response``, and the fields of the outcome
        record (None when nothing is recorded)."""
        self._calls.pop(call.client_id, None)
        records = self._records
        now = time.monotonic() if records else 0.0
        result = response.get("result")
        if isinstance(result, dict):
            cleaned = sanitize_result(result, call.policy)  # type: ignore[arg-type]
            if cleaned is not result:
                response = {**response, "result": cleaned}
                result = cleaned

        if not records:
            # The digest and sizes exist for the record alone.
            return response, None

        body = _canonical(result if result is not None else response.get("error"))
        is_error = (
            "error" in response or jsonrpc.as_object(result).get("isError") is True
        )
        return response, {
            **call.fields,
            "result_bytes": len(body),
            "is_error": is_error,
            "result_digest": hashlib.sha256(body).hexdigest(),
            "queued_ms": _ms(call.sent_at - call.admitted_at),
            "sandbox_ms": _ms(now - call.sent_at),
            "total_ms": _ms(now - call.admitted_at),
        }

    async def cancelled(self, client_id: RequestId | None) -> None:
        call = self._calls.pop(client_id, None) if client_id is not None else None
        if call is not None:
            await self._write(
                "call_outcome", **call.fields, is_error=True, cancelled=True
            )

    async def server_request_refusal(
        self, server: str, method: str, client_init: Message | None
    ) -> str | None:
        """Why a server may not send ``method`` to the client, or None if it may."""
        right = CLIENT_REQUEST_RIGHTS.get(method)
        if right is None:
            return None

        capability, attribute = right
        policy = self._policies.for_server(server)
        allowed = bool(getattr(policy, attribute))
        await self._write(
            "client_request",
            server=server,
            method=method,
            decision="allow" if allowed else "deny",
        )
        if not allowed:
            return (
                f"policy {policy.name!r} does not let server {server!r} send {method}"
            )

        capabilities = (client_init or {}).get("capabilities")
        if not isinstance(capabilities, dict) or capability not in capabilities:
            return f"the client does not support {method}"

        return None

    def running_calls(self, server: str, profile: str) -> list[dict[str, Any]]:
        """The calls in flight in one instance, to tie its connections to them."""
        return [
            {"tool": call.tool, "request_id": call.client_id}
            for call in self._calls.values()
            if call.server == server and call.profile == profile
        ]

    async def egress_attempt(
        self, server: str, profile: str, fields: dict[str, Any]
    ) -> None:
        """Record one connection attempt of a sandbox through its egress filter."""
        log.info(
            "egress_attempted",
            server=server,
            host=fields.get("host"),
            port=fields.get("port"),
            decision=fields.get("decision"),
        )
        try:
            await self._write(
                "egress_attempt", server=server, profile=profile, **fields
            )
        except Denied as exc:
            log.error("audit_record_lost", event_name="egress_attempt", error=str(exc))

    async def sandboxes_stopped(self) -> None:
        """Record the exit of every sandbox still running when the proxy stops
        (their own exit handling is cancelled with the relay)."""
        for link in list(self._running.values()):
            await self.sandbox_event("sandbox_exited", link, reason="proxy stopped")

    async def sandbox_event(self, event: str, link: Downstream, **fields: Any) -> None:
        if event == "sandbox_started":
            self._running[id(link)] = link
        else:
            self._running.pop(id(link), None)

        usage = link.process.resource_usage() if link.process else None
        try:
            await self._write(
                event,
                server=link.server,
                profile=link.profile,
                backend=link.backend.name,
                sandbox_id=link.sandbox_id,
                network=link.spec.network.mode,
                exit_status=link.process.returncode if link.process else None,
                cpu_seconds=usage.cpu_seconds if usage else None,
                peak_memory_bytes=usage.peak_memory_bytes if usage else None,
                **fields,
            )
        except Denied as exc:
            # A lifecycle record that cannot be written must not stop the relay;
            # the calls themselves are refused while the log is unwritable.
            log.error("audit_record_lost", event_name=event, error=str(exc))

    async def install_event(self, event: str, fields: dict[str, Any]) -> None:
        """Record a step of a package's sandboxed install."""
        try:
            await self._write(event, **fields)
        except Denied as exc:
            log.error("audit_record_lost", event_name=event, error=str(exc))

    async def _write(self, event: str, **fields: Any) -> None:
        try:
            await self._audit.write(
                event, session=self._session, client=self._client, **fields
            )
        except AuditError as exc:
            raise _audit_refusal(exc) from exc


def _audit_refusal(exc: AuditError) -> Denied:
    return Denied(
        f"the audit log cannot be written, so no call may run: {exc}",
        code=jsonrpc.AUDIT_UNAVAILABLE,
    )


def _canonical(value: Any) -> bytes:
    """Stable bytes of a result, for its digest in the audit record."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        # Text orjson refuses (lone surrogates, huge integers) still gets a digest.
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
