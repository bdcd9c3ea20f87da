"""``explain SERVER TOOL``: the effective policy of one tool, and why it is that one."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from typing import Any

import yaml

from mcp_sandbox_proxy.commands import Subparsers
from mcp_sandbox_proxy.commands.check import add_config_argument
from mcp_sandbox_proxy.config import load_config
from mcp_sandbox_proxy.policy import PolicySet
from mcp_sandbox_proxy.policy.review import format_size
from mcp_sandbox_proxy.policy.rules import tool_rule

SIZE_LIMITS = ("memory", "fileSize", "tmpfs", "output")


def register(subparsers: Subparsers) -> None:
    """Add ``explain`` to the command line."""
    parser = subparsers.add_parser(
        "explain",
        help="print the effective policy of one tool",
        description="Print which policy a tool of a server gets and why, the files"
        " it comes from, whether calls are allowed, its sandbox instance, and every"
        " key of the policy as resolved for that server.",
    )
    add_config_argument(parser)
    parser.add_argument("server", help="the server's name in the configuration")
    parser.add_argument("tool", help="the tool's name as the server offers it")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the explanation; a server not in the configuration is an error."""
    policies = PolicySet.load(load_config(args.config))
    explanation = explain(policies, args.server, args.tool)
    if args.json:
        sys.stdout.write(json.dumps(explanation, indent=2, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(render(explanation))

    return 0


def explain(policies: PolicySet, server: str, tool: str) -> dict[str, Any]:
    """Everything ``explain`` prints, as plain data."""
    choice = policies.choice(server, tool)
    policy = policies.for_tool(server, tool)
    allowed, rule = tool_rule(policy.policy.tools, tool)
    sharing = [p.name for p in policies.profiles(server) if p.profile == policy.profile]
    effective = policy.policy.model_dump(
        mode="json", by_alias=True, exclude={"extends"}
    )
    return {
        "server": server,
        "tool": tool,
        "policy": policy.name,
        "chosenBy": choice.key_path,
        "files": [str(path) for path in policy.files],
        "calls": "allowed" if allowed else "denied",
        "rule": rule,
        "sandbox": f"{server}:{policy.profile}",
        "profile": policy.profile,
        "sharedWith": [name for name in sharing if name != policy.name],
        "digest": policy.digest,
        "effective": effective,
    }


def render(explanation: dict[str, Any]) -> str:
    """The explanation for people: a header of facts, then the policy as YAML."""
    calls = f"{explanation['calls']} ({explanation['rule']})"
    if explanation["calls"] == "denied":
        calls += ": hidden from the client"

    shared = ", ".join(explanation["sharedWith"])
    sandbox = explanation["sandbox"] + (f" (shared with {shared})" if shared else "")
    facts = [
        ("server", explanation["server"]),
        ("tool", explanation["tool"]),
        ("policy", f"{explanation['policy']} (chosen by {explanation['chosenBy']})"),
        ("files", " extends ".join(explanation["files"])),
        ("calls", calls),
        ("sandbox", sandbox),
        ("digest", explanation["digest"]),
    ]
    header = "".join(f"{name:<8} {value}\n" for name, value in facts)
    # The stubs leave one parameter of safe_dump untyped; the call returns str.
    body = yaml.safe_dump(  # pyright: ignore[reportUnknownMemberType]
        readable(explanation["effective"]), sort_keys=False, allow_unicode=True
    )
    indented = "".join(f"  {line}\n" for line in body.splitlines())
    return f"{header}\neffective policy:\n{indented}"


def readable(effective: dict[str, Any]) -> dict[str, Any]:
    """The dumped policy with sizes as people write them and unset checks left out."""
    data = copy.deepcopy(effective)
    limits = data["isolation"]["limits"]
    for key in SIZE_LIMITS:
        if isinstance(limits[key], int):
            limits[key] = format_size(limits[key])

    data["results"]["maxBytes"] = format_size(data["results"]["maxBytes"])
    for rules in data["arguments"].values():
        for name, rule in rules.items():
            if rule["maxBytes"] is not None:
                rule["maxBytes"] = format_size(rule["maxBytes"])

            rules[name] = {k: v for k, v in rule.items() if v not in (None, [])}

    return data
