"""One server, two sandboxes: read tools cannot write, whatever the server tries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import WriteConfig
from tests.e2e.sandbox.test_real_servers_in_namespace import nobody_folder, text_of
from tests.support.proxy_client import proxy_session

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio]


async def test_read_and_write_tools_of_one_server_run_in_separate_sandboxes(
    write_config: WriteConfig, filesystem_server: Path, tmp_path: Path
) -> None:
    """server-filesystem runs twice: its read tools in a read-only sandbox, its
    write tools in one with the folder writable. ``edit_file`` is mapped to a
    policy with the read-only isolation whose call rules let it through, so the
    server really tries to write: the kernel refuses, not the proxy."""
    folder = nobody_folder(tmp_path / "notes", {"todo.txt": "buy milk\n"})
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "read-only-but-callable.yaml").write_text(
        yaml.safe_dump({"extends": "read-only-folder", "tools": {"deny": []}})
    )
    config = write_config(
        {
            "files": {
                "command": str(filesystem_server),
                "args": [str(folder)],
                "policy": "read-only-folder",
                "vars": {"WORKSPACE": str(folder)},
                "tools": {
                    "write_file": "read-write-folder",
                    "edit_file": "read-only-but-callable",
                },
            }
        },
        policyPaths=[str(policies)],
    )
    async with proxy_session(config) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        read = await session.call_tool(
            "files__read_text_file", {"path": str(folder / "todo.txt")}
        )
        wrote = await session.call_tool(
            "files__write_file", {"path": str(folder / "new.txt"), "content": "hi"}
        )
        edit = {"oldText": "milk", "newText": "tea"}
        edited = await session.call_tool(
            "files__edit_file", {"path": str(folder / "todo.txt"), "edits": [edit]}
        )

    assert {"files__read_text_file", "files__write_file", "files__edit_file"} <= names
    assert "files__create_directory" not in names
    assert "buy milk" in text_of(read)
    assert not wrote.is_error and (folder / "new.txt").read_text() == "hi"
    assert edited.is_error and "read-only file system" in text_of(edited).lower()
    assert (folder / "todo.txt").read_text() == "buy milk\n"

    records = [
        json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()
    ]
    started: list[dict[str, Any]] = [
        r for r in records if r["event"] == "sandbox_started"
    ]
    intents = {r["tool"]: r["policy"] for r in records if r["event"] == "call_intent"}
    assert len({r["profile"] for r in started}) == 2
    assert intents == {
        "read_text_file": "read-only-folder",
        "write_file": "read-write-folder",
        "edit_file": "read-only-but-callable",
    }
