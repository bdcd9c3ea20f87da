"""``pins``: review tool definitions changed since they were pinned, and accept them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mcp_sandbox_proxy.commands import Subparsers
from mcp_sandbox_proxy.commands.check import add_config_argument
from mcp_sandbox_proxy.config import load_config
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.policy import ToolPins

EXIT_DONE = 0
EXIT_NOTHING_PENDING = 1


def register(subparsers: Subparsers) -> None:
    """Add ``pins diff`` and ``pins accept`` to the command line."""
    parser = subparsers.add_parser(
        "pins",
        help="review and accept changed tool definitions",
        description="A tool whose definition changed since it was pinned is hidden"
        " from clients until its new definition is accepted.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    diff = actions.add_parser(
        "diff",
        help="show how held-back tools changed",
        description="Show, for each held-back tool, its pinned and offered"
        " definitions as a unified diff.",
    )
    diff.add_argument("server", nargs="?", help="only this server")
    diff.set_defaults(handler=run_diff)
    accept = actions.add_parser(
        "accept",
        help="pin the offered definitions of a server's held-back tools",
        description="Pin the offered definition of one held-back tool of SERVER, or"
        " of all of them, so that clients see the tools again.",
    )
    accept.add_argument("server", help="the server's name")
    accept.add_argument("tool", nargs="?", help="only this tool")
    accept.set_defaults(handler=run_accept)
    for action in (diff, accept):
        _add_location(action)


def _add_location(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, required=False)
    parser.add_argument(
        "--pin-file",
        type=Path,
        help="the pin file; without it, the one the configuration names",
    )


def _pins(args: argparse.Namespace) -> ToolPins:
    if args.pin_file is not None:
        return ToolPins.load(args.pin_file)

    if args.config is None:
        raise ConfigError("give --config (to find the pin file) or --pin-file")

    return ToolPins.for_config(load_config(args.config))


def run_diff(args: argparse.Namespace) -> int:
    """Print each pending change as a unified diff."""
    changes = _pins(args).pending(args.server)
    if not changes:
        sys.stdout.write("No tool definitions are waiting for review.\n")
        return EXIT_DONE

    for change in changes:
        fields = ", ".join(change.changed_fields())
        sys.stdout.write(f"{change.server}/{change.tool}: changed {fields}\n")
        sys.stdout.write(change.diff() + "\n")

    return EXIT_DONE


def run_accept(args: argparse.Namespace) -> int:
    """Pin the pending definitions and save the file."""
    pins = _pins(args)
    accepted = pins.accept(args.server, args.tool)
    if not accepted:
        what = f"tool {args.tool!r} of " if args.tool else ""
        sys.stderr.write(
            f"nothing to accept: {what}server {args.server!r} has no"
            " tool definition waiting for review\n"
        )
        return EXIT_NOTHING_PENDING

    pins.save()
    for tool in accepted:
        sys.stdout.write(f"accepted: {args.server}/{tool}\n")

    return EXIT_DONE
