"""``check``: the configuration and every policy it reaches, all problems at once."""

from __future__ import annotations

from pathlib import Path

from mcp_sandbox_proxy.policy.loader import SHIPPED_POLICIES
from tests.unit.commands.conftest import Configure, Run, server


def test_a_valid_configuration_passes_with_a_summary(
    configure: Configure, run: Run
) -> None:
    """Exit 0, and one line per server with its sandbox profiles."""
    path = configure(
        {
            "files": server("read-only-folder", tools={"write_*": "read-write-folder"}),
            "time": server("compute-only"),
        }
    )

    outcome = run("check", "--config", str(path))

    assert outcome.status == 0
    assert outcome.out.splitlines() == [
        "ok: 6 policy files in 2 folders",
        "ok: server files: 2 sandbox profiles (read-only-folder, read-write-folder)",
        "ok: server time: 1 sandbox profile (compute-only)",
    ]
    assert "error" not in outcome.err


def test_every_problem_is_reported_not_only_the_first(
    configure: Configure, run: Run, tmp_path: Path
) -> None:
    """A broken unused policy, an unknown policy and a missing secret: all three."""
    path = configure(
        {"a": server("nope"), "b": server("needs-secret")},
        {
            "broken": "tools: {default: perhaps}\n",
            "needs-secret": "isolation: {env: {secrets: {TOKEN: {fromEnv: NOPE}}}}\n",
        },
    )
    policies = tmp_path / "policies"

    outcome = run("check", "-c", str(path))

    assert outcome.status == 1
    assert outcome.out == ""
    assert outcome.err.splitlines()[-4:] == [
        f"error: {policies / 'broken.yaml'}: line 1: tools.default: expected one of"
        " 'allow' or 'deny', got 'perhaps'",
        f"error: {path}: line 7: mcpServers.a.policy: no policy named 'nope' in the"
        f" library (searched: {policies}, {SHIPPED_POLICIES})",
        f"error: {policies / 'needs-secret.yaml'}: isolation.env.secrets.TOKEN: the"
        " proxy's environment has no NOPE",
        "3 problem(s) found",
    ]


def test_an_invalid_configuration_file_is_reported(tmp_path: Path, run: Run) -> None:
    """The configuration itself is checked first."""
    path = tmp_path / "proxy.yaml"
    path.write_text("mcpServers: {a: {comand: x}}\n")

    outcome = run("check", "-c", str(path))

    assert outcome.status == 1
    assert outcome.err.splitlines()[-2:] == [
        f"error: {path}: mcpServers.a.command: required key is missing;"
        " mcpServers.a.comand: unknown key",
        "1 problem(s) found",
    ]


def test_servers_started_by_a_package_runner_are_checked_too(
    configure: Configure, run: Run
) -> None:
    """What each runner line installs is summed up; an option the sandboxed
    install cannot honour is a problem with its key path."""
    good = configure(
        {
            "files": server("strict", command="npx", args=["-y", "@scope/files@2"]),
            "time": server("strict", command="uvx", args=["mcp-server-time"]),
        }
    )

    outcome = run("check", "--config", str(good))

    assert outcome.status == 0
    assert outcome.out.splitlines()[1:] == [
        "ok: server files: 1 sandbox profile (strict)",
        "ok: server files: npx installs @scope/files@2 from the npm registry,"
        " in a sandbox of its own",
        "ok: server time: 1 sandbox profile (strict)",
        "ok: server time: uvx installs mcp-server-time from the Python package"
        " index, in a sandbox of its own",
    ]

    bad = configure({"files": server("strict", command="npx", args=["-x", "pkg"])})

    refused = run("check", "--config", str(bad))

    assert refused.status == 1
    assert "mcpServers.files.args: npx option '-x' is not supported" in refused.err
