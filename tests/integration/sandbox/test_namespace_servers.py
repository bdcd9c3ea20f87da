"""Real third-party servers run in the namespace sandbox, under its syscall filter.

Python from a virtual environment, Node from ``node_modules``, and git driven by a
Python server: the runtimes the allow-list is written for.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from mcp.client.session import ClientSession

from mcp_sandbox_proxy.sandbox.namespace import NamespaceBackend
from mcp_sandbox_proxy.sandbox.spec import NOBODY_GID, NOBODY_UID, Mount, SandboxSpec
from tests.support.repositories import one_commit_repository
from tests.support.sandbox_client import sandbox_session

pytestmark = [pytest.mark.bwrap, pytest.mark.anyio]


def server_spec(command: Path, *args: str, **changes: Any) -> SandboxSpec:
    path = os.environ.get("PATH", os.defpath)
    return SandboxSpec(
        name=command.name,
        command=str(command),
        args=args,
        env={"PATH": path},
        **changes,
    )


async def call_text(session: ClientSession, tool: str, **arguments: Any) -> str:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result
    return " ".join(getattr(block, "text", "") for block in result.content)


async def test_a_python_server_from_a_virtual_environment_answers(
    time_server: Path,
) -> None:
    """mcp-server-time (PyPI, in its own venv) converts a time in the sandbox."""
    process = await NamespaceBackend().start(server_spec(time_server))
    async with sandbox_session(process) as session:
        text = await call_text(session, "get_current_time", timezone="Asia/Tokyo")

    assert "Asia/Tokyo" in text


@pytest.mark.npm
async def test_a_node_server_from_node_modules_answers(everything_server: Path) -> None:
    """mcp-server-everything (npm) echoes in the sandbox."""
    process = await NamespaceBackend().start(server_spec(everything_server))
    async with sandbox_session(process) as session:
        text = await call_text(session, "echo", message="from the sandbox")

    assert "from the sandbox" in text


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with one file, readable by the sandbox's uid."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept on the host\n")
    if os.geteuid() == 0:
        os.chown(folder, NOBODY_UID, NOBODY_GID)

    return folder


@pytest.mark.npm
async def test_a_node_server_reads_a_granted_folder(
    filesystem_server: Path, project: Path
) -> None:
    """mcp-server-filesystem lists a folder granted read-only."""
    spec = server_spec(
        filesystem_server, str(project), mounts=(Mount(project, project),)
    )
    process = await NamespaceBackend().start(spec)
    async with sandbox_session(process) as session:
        text = await call_text(
            session, "read_text_file", path=str(project / "notes.txt")
        )

    assert "kept on the host" in text


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git repository with one commit, owned by the user running the tests."""
    return one_commit_repository(tmp_path / "repository", "first")


async def test_a_python_server_drives_git(git_server: Path, repository: Path) -> None:
    """mcp-server-git runs git in the sandbox and reads the log of a granted repo."""
    spec = server_spec(
        git_server,
        "--repository",
        str(repository),
        mounts=(Mount(repository, repository),),
    )
    process = await NamespaceBackend().start(spec)
    async with sandbox_session(process) as session:
        text = await call_text(session, "git_log", repo_path=str(repository))

    assert "first" in text
