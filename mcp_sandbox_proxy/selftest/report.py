"""The self-test's result for people (a table and a verdict) or as JSON, and its
exit status: 0 when every probe was contained, 1 when any escaped, 2 when some
could not run (and none escaped)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from mcp_sandbox_proxy.selftest.judge import Row, summary

EXIT_CONTAINED = 0
EXIT_ESCAPED = 1
EXIT_INCOMPLETE = 2
COLUMNS = ("server", "backend", "probe", "status", "detail")
SAME_AS_ABOVE = "(same as above)"


def exit_status(rows: list[Row]) -> int:
    """Escapes outweigh probes that could not run; granted rights are no failure."""
    if any(row.status == "ESCAPED" for row in rows):
        return EXIT_ESCAPED

    if any(row.status == "not run" for row in rows):
        return EXIT_INCOMPLETE

    return EXIT_CONTAINED


def verdict(rows: list[Row]) -> str:
    """One paragraph: what happened overall, and what to do next."""
    escaped = _servers(rows, "ESCAPED")
    if escaped:
        return f"ESCAPED: {summary(rows)}. {_next_for_escapes(rows, escaped)}"

    if _servers(rows, "not run"):
        return (
            f"INCOMPLETE: {summary(rows)}. Some probes could not run, so containment"
            " is not shown; the detail column says why and what to do."
        )

    servers = len({row.server for row in rows})
    return f"All contained: {summary(rows)}, across {servers} server(s)."


def _servers(rows: list[Row], status: str) -> list[str]:
    return list(dict.fromkeys(row.server for row in rows if row.status == status))


def _next_for_escapes(rows: list[Row], servers: list[str]) -> str:
    unisolated = sorted({r.server for r in rows if r.backend == "process"})
    if unisolated:
        names = ", ".join(repr(name) for name in unisolated)
        return (
            f"Server(s) {names} use the process backend, which isolates nothing: give"
            " them a policy with 'backend: namespace' (or docker)."
        )

    names = ", ".join(repr(name) for name in servers)
    return (
        f"The sandbox of {names} let the escapes above through: do not run these"
        " servers until `mcp-sandbox-proxy doctor` shows what this machine lacks."
    )


def render(rows: list[Row]) -> str:
    """The rows as an aligned table, then the verdict."""
    table: list[tuple[str, ...]] = [COLUMNS]
    for index, row in enumerate(rows):
        repeated = index > 0 and _same_reason(rows[index - 1], row)
        detail = SAME_AS_ABOVE if repeated else row.detail
        table.append((row.server, row.backend, row.probe, row.status, detail))

    widths = [max(len(cells[i]) for cells in table) for i in range(len(COLUMNS) - 1)]
    lines = [_aligned(cells, widths) for cells in table]
    return "\n".join(lines) + f"\n\n{verdict(rows)}\n"


def _same_reason(previous: Row, row: Row) -> bool:
    """A reason repeated for every probe of a server is written out once."""
    return previous.server == row.server and previous.detail == row.detail


def _aligned(cells: tuple[str, ...], widths: list[int]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return "  ".join([*padded, cells[-1]]).rstrip()


def as_json(rows: list[Row]) -> dict[str, Any]:
    """The rows and the verdict as plain data."""
    return {
        "exitStatus": exit_status(rows),
        "verdict": verdict(rows),
        "rows": [asdict(row) for row in rows],
    }
