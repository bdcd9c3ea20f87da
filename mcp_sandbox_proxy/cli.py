"""The ``mcp-sandbox-proxy`` command line: one subcommand per module in ``commands``."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mcp_sandbox_proxy import __version__
from mcp_sandbox_proxy.exceptions import ProxyError
from mcp_sandbox_proxy.logs import configure_logging

# Modules under ``mcp_sandbox_proxy.commands``, in the order ``--help`` lists them.
COMMANDS = ("run", "check", "explain", "audit", "pins", "audit_log", "doctor", "wrap")
COMMAND_MODULES = {"audit": "policy_audit"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-sandbox-proxy",
        description="A sandboxing MCP gateway: every tool server isolated, every call"
        " checked and audited.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        module_name = COMMAND_MODULES.get(command, command)
        try:
            module = importlib.import_module(
                f"mcp_sandbox_proxy.commands.{module_name}"
            )
        except ModuleNotFoundError as exc:
            if exc.name != f"mcp_sandbox_proxy.commands.{module_name}":
                raise

            continue

        module.register(subparsers)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; errors meant for the user end in exit status 2."""
    configure_logging()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ProxyError as exc:
        sys.stderr.write(f"mcp-sandbox-proxy: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
