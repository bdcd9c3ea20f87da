"""Policy files and configurations written for the tests."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from mcp_sandbox_proxy.config import load_config
from mcp_sandbox_proxy.policy import PolicySet
from tests.conftest import WriteConfig

WritePolicy = Callable[[str, str], Path]
LoadPolicies = Callable[..., PolicySet]


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    """The user's own policy folder, named in ``proxy.policyPaths``."""
    folder = tmp_path / "policies"
    folder.mkdir()
    return folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home folder for the environment the policies are resolved in."""
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def write_policy(policy_dir: Path) -> WritePolicy:
    """Write ``policies/NAME.yaml`` from indented text."""

    def write(name: str, text: str) -> Path:
        path = policy_dir / f"{name}.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


def server(policy: str = "strict", **keys: Any) -> dict[str, Any]:
    """One server's configuration, running a harmless command."""
    return {"command": "python3", "args": ["-c", "pass"], "policy": policy, **keys}


@pytest.fixture
def load_policies(
    write_config: WriteConfig, policy_dir: Path, home: Path
) -> LoadPolicies:
    """Write a configuration of ``servers`` and load its policies."""

    def load(
        servers: dict[str, Any],
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> PolicySet:
        path = write_config(servers, policyPaths=[str(policy_dir)])
        environ = {"HOME": str(home)} if environ is None else environ
        return PolicySet.load(load_config(path), environ=environ, clock=clock)

    return load
