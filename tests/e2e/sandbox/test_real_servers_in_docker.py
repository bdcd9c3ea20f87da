"""Real third-party servers through the proxy, each inside a hardened container."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import WriteConfig
from tests.e2e.sandbox.test_real_servers_in_namespace import text_of
from tests.integration.sandbox.test_docker_engine import (
    NODE_IMAGE,
    PYTHON_IMAGE,
    docker_engine_fixture,  # noqa: F401 - the fixture, by its registered name
)
from tests.support.proxy_client import proxy_session

pytestmark = [pytest.mark.docker, pytest.mark.anyio]


@pytest.fixture
def docker_policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "container.yaml").write_text(
        yaml.safe_dump(
            {
                "extends": "strict",
                "isolation": {"backend": "docker", "limits": {"memory": "512MiB"}},
                "serverRequests": {"sampling": True, "roots": True},
            }
        )
    )
    return folder


async def test_time_and_everything_servers_answer_from_containers(
    write_config: WriteConfig, docker_policies: Path, docker_engine: Any
) -> None:
    """mcp-server-time (PyPI) and server-everything (npm), each in its image."""
    config = write_config(
        {
            "time": {
                "command": "mcp-server-time",
                "policy": "container",
                "image": PYTHON_IMAGE,
            },
            "everything": {
                "command": "mcp-server-everything",
                "args": ["stdio"],
                "policy": "container",
                "image": NODE_IMAGE,
            },
        },
        policyPaths=[str(docker_policies)],
    )
    async with proxy_session(config) as session:
        names = {t.name for t in (await session.list_tools()).tools}
        now = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
        echo = await session.call_tool("everything__echo", {"message": "boxed"})
        total = await session.call_tool("everything__get-sum", {"a": 20, "b": 22})

    assert {"time__convert_time", "everything__get-tiny-image"} <= names
    assert '"timezone": "UTC"' in text_of(now)
    assert text_of(echo) == "Echo: boxed"
    assert "42" in text_of(total)
