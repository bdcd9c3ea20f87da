"""``doctor``: what this machine offers each sandbox backend, as a table or JSON.

It exits 0 when the default backend (``namespace``) can run servers here and 1 when
it cannot, so that a setup script can check a machine before trusting it.

``doctor --self-test --config FILE`` goes further: it runs escape probes inside the
sandbox each configured server would get (see ``selftest``) and exits 0 when all
were contained, 1 when any escaped and 2 when some could not run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict
from functools import partial
from typing import Any

import anyio

from mcp_sandbox_proxy.commands import Subparsers
from mcp_sandbox_proxy.commands.check import add_config_argument
from mcp_sandbox_proxy.config import load_config
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.logs import configure_logging
from mcp_sandbox_proxy.sandbox.backend import BackendCheck
from mcp_sandbox_proxy.sandbox.registry import BACKEND_NAMES, Backends

DEFAULT_BACKEND = "namespace"
EXIT_USABLE = 0
EXIT_UNUSABLE = 1
# Container runtimes Docker can be told to use instead of runc.
OCI_RUNTIMES = ("runc", "crun", "runsc", "youki", "kata-runtime")
COLUMNS = ("backend", "check", "status", "detail")


def register(subparsers: Subparsers) -> None:
    """Add ``doctor`` to the command line."""
    parser = subparsers.add_parser(
        "doctor",
        help="show what this machine offers each sandbox backend",
        description="Check bubblewrap, user namespaces, seccomp, cgroups, the Docker"
        " engine and OCI runtimes. Exits 0 when the default (namespace) backend can"
        " run servers here, 1 when it cannot. With --self-test, run escape probes"
        " in the sandbox each configured server would get instead: exit 0 when all"
        " were contained, 1 when any escaped, 2 when some could not run.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, not a table")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="run escape probes in each configured server's sandbox (needs --config)",
    )
    add_config_argument(parser, required=False)
    parser.add_argument(
        "--server", metavar="NAME", help="with --self-test: test this server only"
    )
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    """Run every backend's checks, print them, and return the exit status."""
    if args.self_test:
        return run_self_test(args)

    if args.config is not None or args.server is not None:
        raise ConfigError("--config and --server go with --self-test")

    report = collect()
    text = json.dumps(report, indent=2) + "\n" if args.json else render(report)
    sys.stdout.write(text)
    return EXIT_USABLE if report["usable"] else EXIT_UNUSABLE


def collect() -> dict[str, Any]:
    """Every backend's checks, whether each backend is usable, and the verdict."""
    backends: dict[str, Any] = {}
    for name in BACKEND_NAMES:
        checks = backend_checks(name)
        if name == "docker":
            checks.append(oci_runtimes_check())

        usable = all(c.ok for c in checks if c.required)
        backends[name] = {"usable": usable, "checks": [asdict(c) for c in checks]}

    usable = bool(backends[DEFAULT_BACKEND]["usable"])
    return {"default_backend": DEFAULT_BACKEND, "usable": usable, "backends": backends}


def backend_checks(name: str) -> list[BackendCheck]:
    """One backend's checks; a backend that cannot even be loaded is one failed row."""
    try:
        backend = Backends(instance="doctor").get(name)
    except ImportError as exc:
        return [BackendCheck("backend", False, f"not available here: {exc}")]

    try:
        return backend.checks()
    except Exception as exc:
        # doctor reports every failure instead of stopping at the first one.
        return [BackendCheck("checks", False, f"{type(exc).__name__}: {exc}")]


def oci_runtimes_check() -> BackendCheck:
    """Which OCI runtimes are installed (Docker may use any it is configured for)."""
    found = [
        f"{name} ({path})" for name in OCI_RUNTIMES if (path := shutil.which(name))
    ]
    detail = ", ".join(found) if found else "none found on PATH"
    return BackendCheck("OCI runtimes on PATH", bool(found), detail, required=False)


def render(report: dict[str, Any]) -> str:
    """The report as an aligned text table, then one line of verdict."""
    rows: list[tuple[str, ...]] = [COLUMNS]
    for backend, result in report["backends"].items():
        for check in result["checks"]:
            rows.append((backend, check["name"], _status(check), check["detail"]))

    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)), r[-1]])
        for r in rows
    ]
    verdict = "usable" if report["usable"] else "NOT usable"
    lines.append(f"\n{report['default_backend']} backend (the default): {verdict}")
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _status(check: dict[str, Any]) -> str:
    if check["ok"]:
        return "ok"

    return "FAIL" if check["required"] else "missing"


def run_self_test(args: argparse.Namespace) -> int:
    """Probe the configuration's sandboxes; progress on stderr, result on stdout."""
    # Imported here: the plain doctor needs none of the gateway behind these.
    from mcp_sandbox_proxy.selftest import report
    from mcp_sandbox_proxy.selftest.run import self_test

    if args.config is None:
        raise ConfigError(
            "--self-test needs --config FILE: the configuration whose sandboxes to test"
        )

    config = load_config(args.config)
    # Progress lines are the stderr output here; only warnings join them.
    configure_logging(level="warning", format=config.proxy.log_format)
    rows = anyio.run(partial(self_test, config, server=args.server, progress=_progress))
    if args.json:
        sys.stdout.write(json.dumps(report.as_json(rows), indent=2) + "\n")
    else:
        sys.stdout.write(report.render(rows))

    return report.exit_status(rows)


def _progress(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
