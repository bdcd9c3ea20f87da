"""``audit-log``: verify the chain of audit files, or show their records."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from mcp_sandbox_proxy.audit.chain import load_hmac_key
from mcp_sandbox_proxy.audit.show import (
    Filters,
    RecordReader,
    parse_time,
    render_json,
    render_table,
)
from mcp_sandbox_proxy.audit.verify import format_report, verify_files
from mcp_sandbox_proxy.commands import Subparsers

# Exit statuses of ``verify``: intact, tampered or damaged, could not check.
EXIT_VERIFIED = 0
EXIT_PROBLEMS = 1
EXIT_UNCHECKED = 2


def register(subparsers: Subparsers) -> None:
    """Add ``audit-log verify`` and ``audit-log show`` to the command line."""
    parser = subparsers.add_parser(
        "audit-log",
        help="verify or show audit log files",
        description="Verify the hash chain of audit log files, or show their records.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    _add_verify(actions)
    _add_show(actions)


def _add_verify(actions: Subparsers) -> None:
    verify = actions.add_parser(
        "verify",
        help="check that audit files are complete and unaltered",
        description="Check every record's hash (and HMAC), the chain between records"
        " and files, and the end of the last file. Exits 0 when intact, 1 when a"
        " record was edited, removed, reordered, forged or cut, 2 when the files"
        " could not be checked.",
    )
    verify.add_argument("files", nargs="+", type=Path, metavar="FILE")
    verify.add_argument(
        "--hmac-key-file",
        type=Path,
        help="the key the log was written with; without it HMACs are not checked",
    )
    verify.set_defaults(handler=run_verify)


def _add_show(actions: Subparsers) -> None:
    show = actions.add_parser(
        "show",
        help="list audit records as a table or JSON lines",
        description="List audit records in chain order. Showing does not verify.",
    )
    show.add_argument("files", nargs="+", type=Path, metavar="FILE")
    show.add_argument("--server", help="only this server (glob pattern)")
    show.add_argument("--tool", help="only this tool (glob pattern)")
    show.add_argument("--decision", help="only records with this decision")
    show.add_argument("--since", type=_time_argument, help="from this ISO 8601 time")
    show.add_argument("--until", type=_time_argument, help="up to this ISO 8601 time")
    show.add_argument("--json", action="store_true", help="one JSON record per line")
    show.set_defaults(handler=run_show)


def run_verify(args: argparse.Namespace) -> int:
    """Verify the files and print what was found."""
    key = load_hmac_key(args.hmac_key_file) if args.hmac_key_file else None
    try:
        report = verify_files(args.files, key=key)
    except OSError as exc:
        return _unreadable(exc)

    sys.stdout.write(format_report(report))
    return EXIT_VERIFIED if report.ok else EXIT_PROBLEMS


def run_show(args: argparse.Namespace) -> int:
    """Print the records that pass the filters."""
    filters = Filters(args.server, args.tool, args.decision, args.since, args.until)
    reader = RecordReader(list(args.files))
    records = (record for record in reader if filters.matches(record))
    render = render_json if args.json else render_table
    try:
        _write_all(render(records))
    except BrokenPipeError:
        # The reader (``head``, a pager) stopped early: not an error.
        _silence_stdout()
        return 0
    except OSError as exc:
        return _unreadable(exc)

    for path, line in reader.skipped:
        sys.stderr.write(f"{path}:{line}: not a valid record, skipped\n")

    return 0


def _unreadable(exc: OSError) -> int:
    sys.stderr.write(f"mcp-sandbox-proxy: error: {exc.filename}: {exc.strerror}\n")
    return EXIT_UNCHECKED


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _write_all(chunks: Iterable[str]) -> None:
    for chunk in chunks:
        sys.stdout.write(chunk)


def _time_argument(text: str) -> object:
    try:
        return parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
