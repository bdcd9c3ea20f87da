"""Real third-party servers through the proxy, each inside the namespace sandbox."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import MCPError

from tests.conftest import WriteConfig
from tests.support.proxy_client import proxy_session
from tests.support.repositories import one_commit_repository

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio]
NOBODY = 65534


def nobody_folder(path: Path, files: dict[str, str] | None = None) -> Path:
    """A folder the sandbox's uid owns, as a user's own folder would be."""
    path.mkdir(parents=True)
    for name, text in (files or {}).items():
        (path / name).write_text(text)

    for entry in [path, *path.rglob("*")]:
        os.chown(entry, NOBODY, NOBODY)

    return path


def text_of(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def test_time_server_answers_under_the_strict_default(
    write_config: WriteConfig, time_server: Path
) -> None:
    """mcp-server-time runs with no grants at all."""
    config = write_config({"time": {"command": str(time_server)}})
    async with proxy_session(config) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        result = await session.call_tool(
            "time__get_current_time", {"timezone": "Europe/Paris"}
        )

    assert "time__get_current_time" in names
    assert "Europe/Paris" in text_of(result) and not result.is_error


async def test_git_server_reads_a_repository_granted_read_only(
    write_config: WriteConfig, git_server: Path, tmp_path: Path
) -> None:
    """mcp-server-git logs a repository; its write tools are not even listed."""
    repo = one_commit_repository(tmp_path / "repo", "first commit", owner=NOBODY)
    config = write_config(
        {
            "git": {
                "command": str(git_server),
                "policy": "git-read-only",
                "vars": {"REPOSITORY": str(repo)},
            }
        }
    )
    async with proxy_session(config) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        log = await session.call_tool("git__git_log", {"repo_path": str(repo)})
        with pytest.raises(MCPError, match="Denied"):
            await session.call_tool(
                "git__git_commit", {"repo_path": str(repo), "message": "x"}
            )

    assert "first commit" in text_of(log)
    assert "git__git_status" in names and "git__git_commit" not in names


async def test_filesystem_server_writes_one_folder_and_only_reads_the_other(
    write_config: WriteConfig, filesystem_server: Path, tmp_path: Path
) -> None:
    """One folder granted read-write, another read-only: the kernel refuses the
    write into the read-only one even though the policy lets the call through."""
    writable = nobody_folder(tmp_path / "notes")
    readable = nobody_folder(tmp_path / "docs", {"guide.txt": "read me\n"})
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "two-folders.yaml").write_text(
        yaml.safe_dump(
            {
                "extends": "strict",
                "isolation": {
                    "filesystem": {"write": [str(writable)], "read": [str(readable)]},
                    "limits": {"memory": "512MiB"},
                },
            }
        )
    )
    config = write_config(
        {
            "files": {
                "command": str(filesystem_server),
                "args": [str(writable), str(readable)],
                "policy": "two-folders",
            }
        },
        policyPaths=[str(policies)],
    )
    async with proxy_session(config) as session:
        wrote = await session.call_tool(
            "files__write_file", {"path": str(writable / "a.txt"), "content": "hi"}
        )
        read = await session.call_tool(
            "files__read_text_file", {"path": str(readable / "guide.txt")}
        )
        refused = await session.call_tool(
            "files__write_file", {"path": str(readable / "b.txt"), "content": "no"}
        )

    assert not wrote.is_error and (writable / "a.txt").read_text() == "hi"
    assert "read me" in text_of(read)
    assert refused.is_error and "read-only" in text_of(refused).lower()
    assert not (readable / "b.txt").exists()
