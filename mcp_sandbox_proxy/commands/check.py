"""``check``: validate the configuration and every policy it can reach.

Reports every problem it finds, not only the first: invalid policy files in the
library, policies a server names that do not exist, variables not set, granted
folders or secrets missing, an unreadable pin file. Exits 0 when all is well.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TypeVar

from mcp_sandbox_proxy.commands import Subparsers
from mcp_sandbox_proxy.config import ProxyConfig, load_config
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.install.servers import Instance, server_launches
from mcp_sandbox_proxy.policy import PolicySet, ToolPins
from mcp_sandbox_proxy.policy.loader import PolicyLibrary

T = TypeVar("T")

REGISTRY_NAMES = {"npm": "the npm registry", "pypi": "the Python package index"}
EXIT_VALID = 0
EXIT_INVALID = 1


def register(subparsers: Subparsers) -> None:
    """Add ``check`` to the command line."""
    parser = subparsers.add_parser(
        "check",
        help="validate the configuration and its policies",
        description="Validate the configuration file, every policy file in the"
        " library, and what each server's policies need from this machine"
        " (variables, granted folders, secrets). Exits 0 when valid, 1 if not.",
    )
    add_config_argument(parser)
    parser.set_defaults(handler=run)


def add_config_argument(
    parser: argparse.ArgumentParser, *, required: bool = True
) -> None:
    """The ``--config`` option every policy command takes."""
    parser.add_argument(
        "--config",
        "-c",
        type=Path,
        required=required,
        help="configuration file (YAML or JSON)",
    )


def run(args: argparse.Namespace) -> int:
    """Check everything and print one line per problem."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _report([str(exc)])

    problems, summary = check_config(config, os.environ)
    if not problems:
        sys.stdout.write("".join(f"{line}\n" for line in summary))

    return _report(problems)


def check_config(
    config: ProxyConfig, environ: Mapping[str, str]
) -> tuple[list[str], list[str]]:
    """The problems found (deduplicated, in order) and a summary of what is valid."""
    try:
        library = PolicyLibrary.for_config(config)
    except ConfigError as exc:
        return [str(exc)], []

    problems: list[str] = []
    files = library.files()
    for path in files:
        _collect(problems, partial(library.load_file, path))

    policies = PolicySet(config, library, environ, time.monotonic)
    summary = [f"ok: {len(files)} policy files in {len(library.folders)} folders"]
    for name, server in config.enabled_servers().items():
        profiles = _collect(problems, partial(policies.profiles, name)) or []
        instances: list[Instance] = []
        for policy in profiles:
            spec = _collect(
                problems, partial(policy.sandbox_spec, name, server, environ)
            )
            if spec is not None:
                instances.append(((name, policy.profile), spec, policy))

        names = ", ".join(sorted({p.name for p in profiles}))
        count = f"{len(profiles)} sandbox profile{'' if len(profiles) == 1 else 's'}"
        summary.append(f"ok: server {name}: {count} ({names})")
        launches = _collect(problems, partial(server_launches, config, instances))
        for launch in (launches or {}).values():
            summary.append(
                f"ok: server {name}: {launch.runner} installs {launch.describe()}"
                f" from {REGISTRY_NAMES[launch.ecosystem]}, in a sandbox of its own"
            )

    _collect(problems, partial(ToolPins.for_config, config, environ))
    return list(dict.fromkeys(problems)), summary


def _collect(problems: list[str], step: Callable[[], T]) -> T | None:
    try:
        return step()
    except ConfigError as exc:
        problems.append(str(exc))
        return None


def _report(problems: list[str]) -> int:
    for problem in problems:
        sys.stderr.write(f"error: {problem}\n")

    if not problems:
        return EXIT_VALID

    sys.stderr.write(f"{len(problems)} problem(s) found\n")
    return EXIT_INVALID
