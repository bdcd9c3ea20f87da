"""``install``: install, list or upgrade the packages of npx, uvx and pipx servers.

The proxy installs such a package on a server's first start anyway; running this
beforehand makes that first start quick, and ``--upgrade`` is the one way a
recorded version changes. Each install runs in its own sandbox and is audited,
exactly as when the proxy does it.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import anyio

from mcp_sandbox_proxy.commands import Subparsers
from mcp_sandbox_proxy.commands.check import add_config_argument
from mcp_sandbox_proxy.config import ProxyConfig, load_config
from mcp_sandbox_proxy.exceptions import ConfigError, SandboxError
from mcp_sandbox_proxy.install.launchers import Launch

EXIT_DONE = 0
EXIT_FAILED = 1


def register(subparsers: Subparsers) -> None:
    """Add ``install`` to the command line."""
    parser = subparsers.add_parser(
        "install",
        help="install the packages of npx, uvx and pipx servers, sandboxed",
        description="Install the package of each server the configuration starts"
        " with npx, uvx or pipx run, each in a sandbox that reaches only the"
        " registry, and record the installed version. A recorded version is"
        " kept until --upgrade. Exits 1 if any install failed.",
    )
    add_config_argument(parser)
    parser.add_argument(
        "servers", nargs="*", metavar="SERVER", help="only these servers"
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument(
        "--upgrade",
        action="store_true",
        help="install the newest version each server's requirement allows",
    )
    action.add_argument(
        "--list", action="store_true", help="show what is installed; change nothing"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    launches = _chosen(config, args.servers)
    if args.list:
        return _list(config, launches)

    return anyio.run(_install_all, config, launches, args.upgrade)


def _chosen(config: ProxyConfig, names: list[str]) -> dict[str, Launch]:
    from mcp_sandbox_proxy.gateway.startup import sandbox_specs
    from mcp_sandbox_proxy.install.servers import server_launches
    from mcp_sandbox_proxy.policy import PolicySet

    policies = PolicySet.load(config)
    servers = config.enabled_servers()
    launches = server_launches(config, sandbox_specs(policies, servers))
    for name in names:
        if name not in servers:
            raise ConfigError(f"no enabled server named {name!r} in the configuration")

        if name not in launches:
            raise ConfigError(
                f"server {name!r} is not started with npx, uvx or pipx run;"
                " there is nothing to install"
            )

    return {n: launches[n] for n in names} if names else launches


def _list(config: ProxyConfig, launches: dict[str, Launch]) -> int:
    from mcp_sandbox_proxy.install.installer import default_cache_dir
    from mcp_sandbox_proxy.install.store import PackageStore

    settings = config.proxy.install
    store = PackageStore(settings.cache_dir or default_cache_dir(os.environ))
    recorded = store.all()
    rows = [("SERVER", "RUNNER", "PACKAGE", "VERSION", "INSTALLED")]
    for server, launch in launches.items():
        entry = recorded.get(launch.key)
        usable = entry is not None and entry.usable()
        version, when = (entry.version, entry.installed_at) if entry else ("-", "")
        version, when = (version, when) if usable else ("-", "not yet")
        rows.append((server, launch.runner, launch.describe(), version, when))

    _print_table(rows)
    sys.stdout.write(f"cache: {store.root}\n")
    return EXIT_DONE


async def _install_all(
    config: ProxyConfig, launches: dict[str, Launch], upgrade: bool
) -> int:
    from mcp_sandbox_proxy.audit import AuditLog
    from mcp_sandbox_proxy.install.installer import Installer
    from mcp_sandbox_proxy.sandbox.registry import Backends

    instance = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    audit = AuditLog.open(config.proxy.audit, instance=instance)
    backends = Backends(instance=instance)

    async def record(event: str, fields: dict[str, object]) -> None:
        await audit.write(event, **fields)

    installer = Installer(
        config.proxy.install,
        backend=backends.get("namespace"),
        record=record,
        egress_hosts=config.proxy.egress_hosts,
    )
    failed = 0
    try:
        for server, launch in launches.items():
            before = installer.store.get(launch.key)
            was = before.version if before is not None and before.usable() else None
            try:
                if upgrade:
                    installed = await installer.upgrade(server, launch)
                else:
                    installed = await installer.ensure(server, launch)
            except SandboxError as exc:
                failed += 1
                sys.stdout.write(f"{server}: {launch.describe()} FAILED: {exc}\n")
                continue

            if was is None:
                what = "installed"
            elif was != installed.version:
                what = f"upgraded from {was}"
            elif upgrade:
                what = "is the newest version allowed"
            else:
                what = "already installed"

            sys.stdout.write(
                f"{server}: {launch.describe()} {installed.version} {what}\n"
            )
    finally:
        with anyio.CancelScope(shield=True):
            await backends.aclose()
            await audit.aclose()

    return EXIT_FAILED if failed else EXIT_DONE


def _print_table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        sys.stdout.write("  ".join(cells).rstrip() + "\n")
