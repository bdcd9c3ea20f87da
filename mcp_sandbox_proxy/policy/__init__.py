"""Policies: what each tool server may reach, and the checks on every call."""

from mcp_sandbox_proxy.policy.pins import PinReport, ToolPins, default_pin_path
from mcp_sandbox_proxy.policy.policyset import PolicyChoice, PolicySet
from mcp_sandbox_proxy.policy.resolve import ResolvedPolicy
from mcp_sandbox_proxy.policy.results import sanitize_result
from mcp_sandbox_proxy.policy.rules import Decision

__all__ = [
    "Decision",
    "PinReport",
    "PolicyChoice",
    "PolicySet",
    "ResolvedPolicy",
    "ToolPins",
    "default_pin_path",
    "sanitize_result",
]
