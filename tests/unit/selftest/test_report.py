"""The self-test's table, verdict, JSON and exit status."""

from __future__ import annotations

from mcp_sandbox_proxy.selftest.judge import Row, Status
from mcp_sandbox_proxy.selftest.report import (
    EXIT_CONTAINED,
    EXIT_ESCAPED,
    EXIT_INCOMPLETE,
    SAME_AS_ABOVE,
    as_json,
    exit_status,
    render,
    verdict,
)


def row(status: Status, *, server: str = "files", backend: str = "namespace") -> Row:
    return Row(server, backend, "shadow-read", status, f"{status} because")


def test_all_contained_exits_0_and_granted_rights_do_not_count_against() -> None:
    """Contained and granted probes only: exit 0."""
    assert exit_status([row("contained"), row("granted")]) == EXIT_CONTAINED


def test_an_escape_exits_1_even_when_other_probes_did_not_run() -> None:
    """Escapes outweigh probes that could not run."""
    assert exit_status([row("not run"), row("ESCAPED")]) == EXIT_ESCAPED


def test_probes_that_did_not_run_exit_2() -> None:
    """Containment not shown for every probe: exit 2."""
    assert exit_status([row("contained"), row("not run")]) == EXIT_INCOMPLETE


def test_the_verdict_tells_a_process_backend_server_to_use_a_sandbox() -> None:
    """Escapes under the process backend point at the backend to choose."""
    text = verdict([row("ESCAPED", server="dev", backend="process")])

    assert text.startswith("ESCAPED: 1 ESCAPED.")
    assert "'dev' use the process backend" in text
    assert "'backend: namespace'" in text


def test_the_verdict_on_a_sandbox_that_leaked_sends_to_doctor() -> None:
    """Escapes from a real sandbox: do not run the server, run doctor."""
    text = verdict([row("ESCAPED", server="files"), row("contained")])

    assert "The sandbox of 'files' let the escapes above through" in text
    assert "`mcp-sandbox-proxy doctor`" in text


def test_the_table_aligns_columns_and_writes_a_repeated_reason_once() -> None:
    """Columns line up; a server's repeated detail shows once, then a marker."""
    rows = [
        Row("git", "docker", "home-file-read", "not run", "no engine"),
        Row("git", "docker", "shadow-read", "not run", "no engine"),
        Row("time-server", "namespace", "shadow-read", "contained", "ENOENT"),
    ]

    lines = render(rows).splitlines()

    assert lines[0].split() == ["server", "backend", "probe", "status", "detail"]
    column = lines[0].index("status")
    for line, shown in zip(lines[1:4], rows, strict=True):
        assert line[column:].startswith(shown.status)

    assert lines[1].endswith("no engine") and lines[2].endswith(SAME_AS_ABOVE)
    assert lines[-1].startswith("INCOMPLETE: 2 not run, 1 contained.")


def test_the_json_has_the_rows_the_verdict_and_the_exit_status() -> None:
    """``--json``: plain data with every row's fields."""
    data = as_json([row("contained")])

    assert data["exitStatus"] == EXIT_CONTAINED
    assert data["verdict"].startswith("All contained: 1 contained")
    assert data["rows"] == [
        {
            "server": "files",
            "backend": "namespace",
            "probe": "shadow-read",
            "status": "contained",
            "detail": "contained because",
        }
    ]
