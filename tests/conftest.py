"""Fixtures shared by every test: where the third-party servers are, and configs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def server_cache() -> Path:
    default = Path.home() / ".cache" / "mcp-sandbox-proxy-tests"
    return Path(os.environ.get("MCP_SANDBOX_PROXY_TEST_CACHE", default))


def _installed(path: Path, how: str) -> Path:
    if not path.exists():
        pytest.fail(f"{path} is missing: {how} (scripts/setup.sh installs it)")

    return path


@pytest.fixture(scope="session")
def everything_server() -> Path:
    """The npm reference server that exercises every MCP feature."""
    bin_dir = server_cache() / "npm" / "node_modules" / ".bin"
    return _installed(bin_dir / "mcp-server-everything", "npm server-everything")


@pytest.fixture(scope="session")
def filesystem_server() -> Path:
    bin_dir = server_cache() / "npm" / "node_modules" / ".bin"
    return _installed(bin_dir / "mcp-server-filesystem", "npm server-filesystem")


def _pypi_server(name: str) -> Path:
    return _installed(server_cache() / "venvs" / name / "bin" / name, f"PyPI {name}")


@pytest.fixture(scope="session")
def time_server() -> Path:
    return _pypi_server("mcp-server-time")


@pytest.fixture(scope="session")
def git_server() -> Path:
    return _pypi_server("mcp-server-git")


@pytest.fixture(scope="session")
def fetch_server() -> Path:
    return _pypi_server("mcp-server-fetch")


@pytest.fixture(scope="session")
def node_bin() -> Path:
    node = shutil.which("node")
    assert node is not None, "node is needed by the npm test servers"
    return Path(node).resolve().parent


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    """Write a proxy configuration whose audit log and pins live in ``tmp_path``."""

    def write(servers: dict[str, Any], **proxy: Any) -> Path:
        settings: dict[str, Any] = {
            "pinFile": str(tmp_path / "pins.json"),
            "audit": {"path": str(tmp_path / "audit.jsonl"), "durability": "batch"},
        }
        settings.update(proxy)
        path = tmp_path / "proxy.yaml"
        path.write_text(yaml.safe_dump({"mcpServers": servers, "proxy": settings}))
        return path

    return write
