"""``explain SERVER TOOL``: which policy, why, and every key of it."""

from __future__ import annotations

import json
from pathlib import Path

from mcp_sandbox_proxy.policy.loader import SHIPPED_POLICIES
from tests.unit.commands.conftest import Configure, Run, server


def files_config(configure: Configure) -> Path:
    return configure(
        {"files": server("read-only-folder", tools={"write_*": "read-write-folder"})}
    )


def test_explain_names_the_policy_the_key_that_chose_it_and_its_files(
    configure: Configure, run: Run
) -> None:
    """The header says what decided; the body is the resolved policy."""
    outcome = run("explain", "-c", str(files_config(configure)), "files", "write_file")

    lines = outcome.out.splitlines()
    assert outcome.status == 0
    assert lines[:5] == [
        "server   files",
        "tool     write_file",
        "policy   read-write-folder (chosen by mcpServers.files.tools.write_*.policy)",
        f"files    {SHIPPED_POLICIES / 'read-write-folder.yaml'} extends"
        f" {SHIPPED_POLICIES / 'strict.yaml'}",
        "calls    allowed (tools.default)",
    ]
    assert lines[5].startswith("sandbox  files:")
    assert "effective policy:" in lines
    assert "      memory: 512MiB" in lines


def test_explain_says_a_denied_tool_is_hidden(configure: Configure, run: Run) -> None:
    """A tool its policy denies is shown as denied, by which rule."""
    outcome = run("explain", "-c", str(files_config(configure)), "files", "move_file")

    assert "calls    denied (tools.deny[move_file]): hidden from the client" in (
        outcome.out.splitlines()
    )


def test_explain_as_json_carries_the_same_facts(
    configure: Configure, run: Run, tmp_path: Path
) -> None:
    """Machines get the facts and the resolved policy as JSON."""
    path = files_config(configure)

    outcome = run("explain", "-c", str(path), "files", "read_file", "--json")

    document = json.loads(outcome.out)
    assert document["policy"] == "read-only-folder"
    assert document["chosenBy"] == "mcpServers.files.policy"
    assert document["calls"] == "allowed"
    assert document["effective"]["isolation"]["filesystem"]["read"] == [
        str(tmp_path / "ws")
    ]
    assert len(document["digest"]) == 64


def test_explain_of_an_unknown_server_is_an_error(
    configure: Configure, run: Run
) -> None:
    """A name not in the configuration ends with status 2 and says so."""
    outcome = run("explain", "-c", str(files_config(configure)), "fils", "read_file")

    assert outcome.status == 2
    assert "no server named 'fils' in the configuration" in outcome.err
