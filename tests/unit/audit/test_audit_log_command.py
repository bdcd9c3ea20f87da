"""The ``audit-log verify`` and ``audit-log show`` subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from mcp_sandbox_proxy.commands import audit_log
from mcp_sandbox_proxy.exceptions import ConfigError

from .conftest import WriteLog, read_lines, write_lines


def run(*argv: str | Path) -> int:
    """Parse ``audit-log ARGV`` as the command line does and run its handler."""
    parser = argparse.ArgumentParser(prog="mcp-sandbox-proxy")
    audit_log.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["audit-log", *map(str, argv)])
    return args.handler(args)


def test_verify_exits_zero_on_an_intact_log(
    write_log: WriteLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """An untouched log verifies, and the output says so."""
    path = write_log(calls=2)

    assert run("verify", path) == 0
    assert capsys.readouterr().out.startswith("ok: 6 records")


@pytest.mark.parametrize(
    ("tamper", "kind", "line"),
    [
        (lambda lines: lines[:2] + lines[3:], "gap", 3),
        (lambda lines: [lines[0], lines[2], lines[1], *lines[3:]], "gap", 2),
        (lambda lines: [*lines[:3], lines[3].replace(b"allow", b"Allow")], "edited", 4),
        (lambda lines: [*lines[:-1], lines[-1][:20]], "truncated", 6),
    ],
    ids=["removed", "reordered", "edited", "truncated"],
)
def test_verify_exits_one_and_names_the_line_of_tampering(
    write_log: WriteLog,
    capsys: pytest.CaptureFixture[str],
    tamper: object,
    kind: str,
    line: int,
) -> None:
    """Each kind of tampering gives a non-zero exit and ``file:line: kind``."""
    path = write_log(calls=2)
    write_lines(path, tamper(read_lines(path)))  # type: ignore[operator]

    assert run("verify", path) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{path}:{line}: {kind}: ")
    assert "FAILED" in out


def test_verify_checks_hmacs_with_the_key_file(
    tmp_path: Path, write_log: WriteLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--hmac-key-file`` checks every MAC; a wrong key fails the check."""
    key_file, wrong = tmp_path / "key", tmp_path / "wrong"
    key_file.write_bytes(b"k" * 32)
    wrong.write_bytes(b"w" * 32)
    path = write_log(calls=1, hmac_key_file=key_file)

    assert run("verify", path, "--hmac-key-file", key_file) == 0
    assert run("verify", path, "--hmac-key-file", wrong) == 1
    assert "wrong_key" in capsys.readouterr().out


def test_verify_of_a_missing_file_exits_two(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that cannot be read is not a verdict on the log."""
    assert run("verify", tmp_path / "absent.jsonl") == 2
    assert "absent.jsonl: No such file" in capsys.readouterr().err


def test_verify_with_an_unusable_key_file_is_a_config_error(
    tmp_path: Path, write_log: WriteLog
) -> None:
    """A short key is refused before anything is checked."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"short")

    with pytest.raises(ConfigError, match="at least 16 are needed"):
        run("verify", write_log(calls=1), "--hmac-key-file", key_file)


def test_show_prints_the_filtered_records_as_json(
    write_log: WriteLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """``show --tool --json`` prints only the matching records, one per line."""
    path = write_log(calls=2)

    assert run("show", path, "--tool", "read_*", "--json") == 0
    events = [
        json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()
    ]
    assert events == ["call_intent", "call_outcome"] * 2


def test_show_prints_a_table_and_reports_skipped_lines(
    write_log: WriteLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """The table has a heading; unreadable lines are named on stderr."""
    path = write_log(calls=1)
    write_lines(path, [*read_lines(path), b"junk\n"])

    assert run("show", path, "--decision", "allow") == 0
    captured = capsys.readouterr()
    assert captured.out.split()[:3] == ["SEQ", "TIME", "EVENT"]
    assert f"{path}:5: not a valid record, skipped" in captured.err


def test_show_refuses_a_time_that_is_not_iso_8601(
    write_log: WriteLog, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad ``--since`` is a usage error naming the option and the value."""
    with pytest.raises(SystemExit) as exit_info:
        run("show", write_log(calls=1), "--since", "last tuesday")

    assert exit_info.value.code == 2
    assert "--since: 'last tuesday' is not an ISO 8601" in capsys.readouterr().err
