"""Configurations that put third-party servers behind the proxy for relay tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import WriteConfig

# The relay is tested here on the process backend, as the issue of the relay asks:
# sandboxing has its own tests, and the relay must not depend on one backend.
RELAY_POLICY = {
    "description": "Relay tests: every client request right, no isolation.",
    "extends": "strict",
    "isolation": {
        "backend": "process",
        "env": {"pass": ["PATH", "HOME"]},
        "limits": {"memory": "unlimited", "callTimeout": "30s"},
    },
    "serverRequests": {"sampling": True, "elicitation": True, "roots": True},
}


@pytest.fixture
def relay_policies(tmp_path: Path) -> Path:
    folder = tmp_path / "policies"
    folder.mkdir()
    (folder / "relay-test.yaml").write_text(yaml.safe_dump(RELAY_POLICY))
    return folder


@pytest.fixture
def relay_config(
    write_config: WriteConfig, relay_policies: Path
) -> Callable[..., Path]:
    """Write a config whose servers all run under the relay-test policy."""

    def make(servers: dict[str, dict[str, Any]], **proxy: Any) -> Path:
        for server in servers.values():
            server.setdefault("policy", "relay-test")

        return write_config(servers, policyPaths=[str(relay_policies)], **proxy)

    return make
