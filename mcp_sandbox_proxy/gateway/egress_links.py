"""One egress filter per sandboxed instance whose policy lists destinations.

The filter runs in the proxy, outside the sandbox; its Unix socket goes into the
instance's spec, and every connection attempt becomes an audit record that names
the tool calls running in that instance at the time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio.abc

from mcp_sandbox_proxy.gateway.gate import CallGate
from mcp_sandbox_proxy.policy import ResolvedPolicy
from mcp_sandbox_proxy.sandbox.spec import NetworkSpec, SandboxSpec

if TYPE_CHECKING:
    from mcp_sandbox_proxy.sandbox.egress import EgressAttempt


async def with_egress(
    group: anyio.abc.TaskGroup,
    key: tuple[str, str],
    spec: SandboxSpec,
    policy: ResolvedPolicy,
    gate: CallGate,
    hosts: Mapping[str, Sequence[str]],
) -> SandboxSpec:
    """``spec`` with its egress socket, after starting its filter in ``group``;
    ``spec`` unchanged when the instance has no network at all."""
    if spec.network.mode != "egress":
        return spec

    # Imported here: most configurations have no egress, and the filter's
    # modules add about 10 ms to every start.
    from mcp_sandbox_proxy.sandbox.egress import EgressFilter, hosts_first_resolver

    server, profile = key
    network = policy.policy.isolation.network

    async def record(attempt: EgressAttempt) -> None:
        await gate.egress_attempt(server, profile, _fields(attempt))

    def running_calls() -> Mapping[str, Any]:
        return {"calls": gate.running_calls(server, profile)}

    egress = EgressFilter(
        sandbox=spec.name,
        rules=network.rules,
        allow_private=network.allow_private,
        on_attempt=record,
        call_context=running_calls,
        resolver=hosts_first_resolver(hosts),
    )
    socket = await group.start(egress.serve)
    return dataclasses.replace(spec, network=NetworkSpec("egress", socket))


def _fields(attempt: EgressAttempt) -> dict[str, Any]:
    fields = dataclasses.asdict(attempt)
    fields["addresses"] = list(attempt.addresses)
    fields["calls"] = list(attempt.context.get("calls", []))
    del fields["context"], fields["sandbox"]
    return fields
