"""The shipped policy library: valid, named for what it allows, every key explained."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mcp_sandbox_proxy.policy.loader import SHIPPED_POLICIES, PolicyLibrary

SHIPPED_FILES = sorted(SHIPPED_POLICIES.glob("*.yaml"))
_KEY_LINE = re.compile(r"^\s*(?:- )?[\"']?[\w*.-]+[\"']?:(\s|$)")


def uncommented_keys(path: Path) -> list[str]:
    """Key lines with no comment on them nor on the line just above."""
    missing: list[str] = []
    previous = ""
    for line in path.read_text().splitlines():
        if _KEY_LINE.match(line) and "#" not in line and not previous.startswith("#"):
            missing.append(line.strip())

        if line.strip():
            previous = line.strip()

    return missing


@pytest.mark.parametrize("path", SHIPPED_FILES, ids=lambda p: p.stem)
def test_every_key_of_a_shipped_policy_has_a_comment(path: Path) -> None:
    """A reader learns what each key does from the file itself."""
    assert uncommented_keys(path) == []


def test_the_strict_default_grants_nothing_and_bounds_everything() -> None:
    """strict: no files, no network, no environment, every limit set."""
    policy = PolicyLibrary([SHIPPED_POLICIES]).load("strict").policy
    isolation = policy.isolation

    assert (isolation.filesystem.read, isolation.filesystem.write) == ((), ())
    assert isolation.network.allow == ()
    assert not isolation.network.allow_private
    assert (isolation.env.pass_, isolation.env.set_, isolation.env.secrets) == (
        (),
        {},
        {},
    )
    assert None not in (
        isolation.limits.memory,
        isolation.limits.pids,
        isolation.limits.cpu,
        isolation.limits.open_files,
        isolation.limits.file_size,
    )
    assert not any(policy.server_requests.model_dump().values())


def test_the_read_only_profiles_deny_every_writing_tool() -> None:
    """read-only-folder hides the file server's writing tools; git allows readers."""
    library = PolicyLibrary([SHIPPED_POLICIES])
    folder = library.load("read-only-folder").policy.tools
    git = library.load("git-read-only").policy.tools

    assert {"write_file", "edit_file", "create_directory", "move_file"} <= set(
        folder.deny
    )
    assert git.default == "deny"
    assert not any(name in git.allow for name in ("git_commit", "git_add", "git_reset"))
