"""Planning how an unprivileged uid reaches the paths a sandbox binds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mcp_sandbox_proxy.sandbox._staging import (
    first_unreachable,
    plan_staging,
    writable_by,
)

OTHER_UID = 65534


@pytest.fixture
def private_runtime(tmp_path: Path) -> Path:
    """A runtime folder below a folder only its owner may enter."""
    private = tmp_path / "private"
    runtime = private / "runtime"
    runtime.mkdir(parents=True)
    private.chmod(0o700)
    return runtime


def test_a_path_below_a_private_folder_is_covered(private_runtime: Path) -> None:
    """Another uid cannot pass the 0700 folder: a cover goes on it, or above it."""
    staging = plan_staging([private_runtime], OTHER_UID, OTHER_UID)
    assert staging is not None and staging.sources == (private_runtime,)
    (cover,) = staging.covers
    assert private_runtime.is_relative_to(cover)
    assert first_unreachable(private_runtime, OTHER_UID, OTHER_UID) == cover


def test_the_owner_needs_no_cover(private_runtime: Path) -> None:
    """The folder's own uid passes through it: nothing to stage."""
    owner = private_runtime.parent.stat()
    if first_unreachable(private_runtime.parent, owner.st_uid, owner.st_gid):
        pytest.skip("a folder above the test's own is closed to its owner")

    assert plan_staging([private_runtime], owner.st_uid, owner.st_gid) is None


def test_nested_sources_are_bound_once(private_runtime: Path) -> None:
    """A source inside another staged source is reached through the outer bind."""
    inner = private_runtime / "lib"
    inner.mkdir()
    staging = plan_staging([inner, private_runtime], OTHER_UID, OTHER_UID)
    assert staging is not None and staging.sources == (private_runtime,)


def test_writable_by_reads_the_mode_bits(tmp_path: Path) -> None:
    """Owner, group and other write bits decide, for the uid asked about."""
    folder = tmp_path / "grant"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    mine = folder.stat()
    assert writable_by(folder, mine.st_uid, mine.st_gid)
    assert not writable_by(folder, OTHER_UID, OTHER_UID) or mine.st_uid == OTHER_UID
    folder.chmod(0o777)
    assert writable_by(folder, OTHER_UID, OTHER_UID)
    assert os.access(folder, os.W_OK)
