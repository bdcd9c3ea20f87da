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
COMMANDS = (
    "run", "check", "explain", "audit", "pins", "audit_log", "doctor", "wrap",
    "install",
)  # fmt: skip
COMMAND_MODULES = {"audit": "policy_audit"}
# The command names that may stand first on the command line; ``unwrap`` lives
# in the module of ``wrap``.
_MODULES = frozenset(COMMANDS)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every subcommand, or of ``only`` that one: each subcommand's
    module imports what it needs, and ``run`` should not pay for the others."""
    parser = argparse.ArgumentParser(
        prog="mcp-sandbox-proxy",
        description="A sandboxing MCP gateway: every tool server isolated, every call"
        " checked and audited.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS if only is None else (only,):
        module_name = COMMAND_MODULES.get(command, command)
        module = importlib.import_module(f"mcp_sandbox_proxy.commands.{module_name}")
        module.register(subparsers)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; errors meant for the user end in exit status 2."""
    configure_logging()
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argv[0].replace("-", "_") if argv else ""
    args = build_parser(first if first in _MODULES else None).parse_args(argv)
    try:
        return int(args.handler(args))
    except ProxyError as exc:
        sys.stderr.write(f"mcp-sandbox-proxy: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        return 130
