"""``run``: serve MCP on stdin/stdout in front of the configured servers."""

from __future__ import annotations

import argparse
from pathlib import Path

import anyio

from mcp_sandbox_proxy.commands import Subparsers
from mcp_sandbox_proxy.config import load_config
from mcp_sandbox_proxy.logs import configure_logging
from mcp_sandbox_proxy.policy import PolicySet


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="serve MCP on stdin/stdout, fronting the configured servers",
        description="Serve MCP on stdin/stdout. Diagnostics go to stderr only.",
    )
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        required=True,
        help="configuration file (YAML or JSON)",
    )
    parser.add_argument(
        "--log-format", choices=("console", "json"), help="stderr log format"
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from mcp_sandbox_proxy.fdio import relay_loop
    from mcp_sandbox_proxy.gateway.startup import Startup

    config = load_config(args.config)
    settings = config.proxy
    configure_logging(
        level=args.log_level or settings.log_level,
        format=args.log_format or settings.log_format,
    )
    policies = PolicySet.load(config)
    startup = Startup.begin(config, policies)
    # Imported once the servers are starting: the imports overlap their starts.
    from mcp_sandbox_proxy.gateway.serve import serve

    loop = {"loop_factory": relay_loop(settings.poll_microseconds / 1e6)}
    return anyio.run(serve, config, policies, startup, backend_options=loop)
