"""``audit``: what every tool may read, write and reach, with risky grants flagged.

Printed as a table, JSON or Markdown; ``--fail-on`` gives scripts an exit status.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mcp_sandbox_proxy.commands import Subparsers
from mcp_sandbox_proxy.commands.check import add_config_argument
from mcp_sandbox_proxy.config import load_config
from mcp_sandbox_proxy.policy import PolicySet, ToolPins, default_pin_path
from mcp_sandbox_proxy.policy.review import (
    SEVERITIES,
    audit_rows,
    render_json,
    render_markdown,
    render_table,
    worst_severity,
)

RENDERERS = {"table": render_table, "json": render_json, "markdown": render_markdown}
EXIT_PASSED = 0
EXIT_FINDINGS = 1


def register(subparsers: Subparsers) -> None:
    """Add ``audit`` to the command line."""
    parser = subparsers.add_parser(
        "audit",
        help="review what each server and tool may do, and flag risky grants",
        description="For every server and tool (tools known from the pin file, else"
        " the server and each configured tool glob): what it can read, write and"
        " reach, its environment, limits and backend, and risky grants by severity.",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--format", choices=sorted(RENDERERS), default="table", help="output format"
    )
    parser.add_argument(
        "--fail-on",
        choices=SEVERITIES,
        metavar="SEVERITY",
        help=f"exit 1 if a finding is this severe or worse ({', '.join(SEVERITIES)})",
    )
    parser.add_argument("--pin-file", type=Path, help="the pin file to take tools from")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Print the audit; with ``--fail-on``, the exit status tells a script."""
    config = load_config(args.config)
    policies = PolicySet.load(config)
    pin_path = args.pin_file or default_pin_path(config, os.environ)
    pins = ToolPins.load(pin_path) if pin_path.exists() else None
    rows = audit_rows(policies, pins, os.environ)
    sys.stdout.write(RENDERERS[args.format](rows))
    worst = worst_severity(rows)
    if args.fail_on is None or worst is None:
        return EXIT_PASSED

    failed = SEVERITIES.index(worst) >= SEVERITIES.index(args.fail_on)
    return EXIT_FINDINGS if failed else EXIT_PASSED
