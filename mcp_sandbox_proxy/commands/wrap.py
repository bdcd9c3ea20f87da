"""``wrap`` and ``unwrap``: put Claude Desktop's servers behind the proxy, and back.

The plans come from :mod:`mcp_sandbox_proxy.wrap`; this module reads the files,
shows or makes the changes (each write atomic, permissions kept) and reports.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import structlog

from mcp_sandbox_proxy.claude_desktop import default_claude_path
from mcp_sandbox_proxy.commands import Subparsers
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.policy.loader import SHIPPED_POLICIES, PolicyLibrary
from mcp_sandbox_proxy.wrap import (
    DEFAULT_POLICY,
    Change,
    Existing,
    Files,
    UnwrapPlan,
    WrapPlan,
    WrapRecord,
    WrapRequest,
    backup_path,
    default_proxy_config_path,
    load_record,
    plan_unwrap,
    plan_wrap,
    record_path,
    unified_diff,
)

log = structlog.get_logger(__name__)


def register(subparsers: Subparsers) -> None:
    """Add ``wrap`` and ``unwrap`` to the command line."""
    wrap = subparsers.add_parser(
        "wrap",
        help="put every server of Claude Desktop's configuration behind the proxy",
        description="Move the servers of Claude Desktop's configuration into a proxy"
        " configuration, each under a policy, and leave Claude Desktop one server"
        " that starts the proxy. The original is kept; running it again changes"
        " nothing.",
    )
    _add_common(wrap)
    wrap.add_argument(
        "--proxy-config",
        type=Path,
        metavar="PATH",
        help="where to write the proxy configuration (default: proxy.yaml in the"
        " per-user configuration folder of mcp-sandbox-proxy)",
    )
    wrap.add_argument(
        "--policy",
        default=DEFAULT_POLICY,
        metavar="NAME",
        help="the policy of every server without its own (default: %(default)s)",
    )
    wrap.add_argument(
        "--server-policy",
        action="append",
        default=[],
        type=_server_policy,
        metavar="SERVER=NAME",
        help="the policy of one server; repeatable",
    )
    wrap.add_argument(
        "--force",
        action="store_true",
        help="overwrite a backup or proxy configuration left by an earlier wrap,"
        " losing what they hold",
    )
    wrap.set_defaults(handler=run_wrap)
    _add_unwrap(subparsers)


def _add_unwrap(subparsers: Subparsers) -> None:
    unwrap = subparsers.add_parser(
        "unwrap",
        help="restore Claude Desktop's configuration as it was before wrap",
        description="Restore the exact bytes wrap kept, then remove the backup, the"
        " record of the wrap and the proxy configuration (kept if edited since)."
        " Refuses when the Claude file or the backup changed since wrap.",
    )
    _add_common(unwrap)
    unwrap.add_argument(
        "--force",
        action="store_true",
        help="restore the backup even if the Claude file changed since wrap,"
        " dropping those changes",
    )
    unwrap.set_defaults(handler=run_unwrap)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--claude-config",
        type=Path,
        metavar="PATH",
        help="Claude Desktop's claude_desktop_config.json (default: where Claude"
        " Desktop keeps it on this system)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the changes as unified diffs and write nothing",
    )


def _server_policy(text: str) -> tuple[str, str]:
    server, equals, policy = text.partition("=")
    if not (equals and server and policy):
        raise argparse.ArgumentTypeError(f"{text!r}: expected SERVER=NAME")

    return server, policy


def run_wrap(args: argparse.Namespace) -> int:
    """Wrap the Claude file, or show what wrapping would change."""
    claude_path = _claude_path(args)
    proxy_path = args.proxy_config or default_proxy_config_path(
        sys.platform, os.environ, Path.home()
    )
    request = WrapRequest(
        claude_path,
        proxy_path.expanduser().resolve(),
        sys.executable,
        args.policy,
        dict(args.server_policy),
        args.force,
    )
    plan = plan_wrap(request, _files(claude_path, request.proxy_config_path))
    if plan.already_wrapped:
        _report_already_wrapped(claude_path, plan)
        return 0

    _warn_missing_policies(plan.policies)
    if args.dry_run:
        _show(plan.changes, [claude_path, request.proxy_config_path])
        return 0

    apply_changes(plan.changes)
    _report_wrapped(claude_path, plan)
    return 0


def run_unwrap(args: argparse.Namespace) -> int:
    """Restore the Claude file as it was, or show what restoring would change."""
    claude_path = _claude_path(args)
    existing_record = read_existing(record_path(claude_path))
    record = load_record(claude_path, existing_record, force=args.force)
    proxy_path = record.proxy_config if record else None
    files = _files(claude_path, proxy_path)
    plan = plan_unwrap(claude_path, record, files, force=args.force)
    if args.dry_run:
        _show(plan.changes, [claude_path, *([proxy_path] if proxy_path else [])])
        return 0

    apply_changes(plan.changes)
    _report_unwrapped(claude_path, record, plan)
    return 0


def _claude_path(args: argparse.Namespace) -> Path:
    given: Path | None = args.claude_config
    path = given or default_claude_path(sys.platform, os.environ, Path.home())
    return path.expanduser().resolve()


def _files(claude_path: Path, proxy_path: Path | None) -> Files:
    return Files(
        claude=read_existing(claude_path),
        backup=read_existing(backup_path(claude_path)),
        record=read_existing(record_path(claude_path)),
        proxy_config=read_existing(proxy_path) if proxy_path else None,
    )


def read_existing(path: Path) -> Existing | None:
    """The bytes and permission bits of ``path``; None if there is no such file."""
    try:
        with path.open("rb") as file:
            return Existing(file.read(), stat.S_IMODE(os.fstat(file.fileno()).st_mode))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(
            f"cannot read the file: {exc.strerror}", source=str(path)
        ) from exc


def apply_changes(changes: Sequence[Change]) -> None:
    """Make the changes in order; each write is atomic, so files are never torn."""
    for change in changes:
        if change.before == change.after:
            continue

        try:
            if change.after is None:
                change.path.unlink(missing_ok=True)
                _sync_folder(change.path.parent)
            else:
                write_atomically(change.path, change.after, change.mode)
        except OSError as exc:
            raise ConfigError(
                f"cannot write the file: {exc.strerror}", source=str(change.path)
            ) from exc

        log.debug(
            "wrap_file_changed", path=str(change.path), removed=change.after is None
        )


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write a temporary file beside ``path``, sync it, then rename it over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())

        temp.chmod(mode)
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise

    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    # A rename survives a crash once its folder is synced; Windows has no such call.
    if os.name != "posix":
        return

    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _show(changes: Sequence[Change], shown: Sequence[Path]) -> None:
    by_path = {change.path: change for change in changes}
    for path in shown:
        if path in by_path:
            change = by_path[path]
            sys.stdout.write(unified_diff(path, change.before, change.after))

    others = [
        f"{'remove' if c.after is None else 'write'} {c.path}"
        for c in changes
        if c.path not in shown
    ]
    sys.stderr.write(f"dry run: nothing was written (would also {', '.join(others)})\n")


def _warn_missing_policies(policies: dict[str, str]) -> None:
    library = PolicyLibrary([SHIPPED_POLICIES])
    for policy in sorted(set(policies.values())):
        if library.find(policy) is None:
            servers = ", ".join(s for s, p in policies.items() if p == policy)
            _warn(
                f"policy {policy!r} (of {servers}) is not in the shipped library;"
                " the proxy will not start until the proxy configuration names a"
                " folder holding it under proxy.policyPaths"
            )


def _warn(message: str) -> None:
    sys.stderr.write(f"mcp-sandbox-proxy: warning: {message}\n")


def _report_wrapped(claude_path: Path, plan: WrapPlan) -> None:
    width = max(len(name) for name in plan.policies)
    servers = "".join(
        f"  {name:<{width}}  policy {policy}\n"
        for name, policy in plan.policies.items()
    )
    sys.stdout.write(
        f"Wrapped {len(plan.policies)} server(s) of {claude_path}:\n{servers}"
        f"Proxy configuration: {plan.proxy_config}\n"
        f"Original kept in: {backup_path(claude_path)}\n"
        "Restart Claude Desktop to start the proxy;"
        " `mcp-sandbox-proxy unwrap` undoes this.\n"
    )
    if plan.installed_first:
        sys.stdout.write(
            f"{', '.join(plan.installed_first)} start(s) with npx, uvx or pipx run:"
            " the proxy installs each package in a sandbox on its first start;"
            f" `mcp-sandbox-proxy install -c {plan.proxy_config}` does it now.\n"
        )


def _report_already_wrapped(claude_path: Path, plan: WrapPlan) -> None:
    sys.stdout.write(
        f"{claude_path} is already wrapped (proxy configuration:"
        f" {plan.proxy_config}); nothing changed.\n"
    )
    if plan.beside_proxy:
        _warn(
            f"{', '.join(plan.beside_proxy)} in {claude_path} run beside the proxy,"
            f" unsandboxed: move them into {plan.proxy_config}"
        )


def _report_unwrapped(
    claude_path: Path, record: WrapRecord | None, plan: UnwrapPlan
) -> None:
    lines = [f"Restored {claude_path} as it was before wrap."]
    removed = {c.path for c in plan.changes if c.after is None}
    if record and record.proxy_config in removed:
        lines.append(f"Removed the proxy configuration {record.proxy_config}.")

    if plan.kept:
        lines.append(f"Kept {plan.kept}: it was edited since wrap.")

    sys.stdout.write("\n".join(lines) + "\n")
