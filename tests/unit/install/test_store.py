"""The record of installed packages: round trips, folders, locking, bad records."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import anyio
import pytest

from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.install.store import (
    LEASE_FILE,
    LOCK_FILE,
    LOCK_POLL_S,
    RECORD_FILE,
    Installed,
    PackageStore,
)


def installed(key: str = "npm:pkg", version: str = "1.0.0", **extra: str) -> Installed:
    """A recorded installation with every field set."""
    fields = {
        "package": "pkg",
        "directory": "/cache/npm/pkg-1",
        "program": "/cache/npm/pkg-1/bin/pkg",
        "installed_at": "2024-05-01T12:00:00+00:00",
        **extra,
    }
    return Installed(
        key=key,
        version=version,
        registry=("npm.example.test:443", "files.example.test:443"),
        **fields,
    )


def write_record(root: Path, data: object) -> Path:
    """``installed.json`` with ``data`` as its content."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / RECORD_FILE
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_an_empty_store_has_no_installations(tmp_path: Path) -> None:
    """No record file yet: nothing installed, and no file is made by reading."""
    store = PackageStore(tmp_path / "cache")

    assert store.all() == {}
    assert store.get("npm:pkg") is None
    assert not (tmp_path / "cache" / RECORD_FILE).exists()


def test_put_then_get_gives_back_every_field(tmp_path: Path) -> None:
    """A record written is read back equal, registry tuple included."""
    entry = installed()
    PackageStore(tmp_path).put(entry)

    again = PackageStore(tmp_path).get("npm:pkg")

    assert again == entry
    assert again is not None
    assert again.registry == ("npm.example.test:443", "files.example.test:443")
    assert PackageStore(tmp_path).all() == {"npm:pkg": entry}


def test_the_record_file_is_json_with_a_version(tmp_path: Path) -> None:
    """The file on disk keeps the key outside the entry and the registry as a list."""
    PackageStore(tmp_path).put(installed())

    data = json.loads((tmp_path / RECORD_FILE).read_text(encoding="utf-8"))

    assert data["version"] == 1
    assert "key" not in data["packages"]["npm:pkg"]
    assert data["packages"]["npm:pkg"]["registry"] == [
        "npm.example.test:443",
        "files.example.test:443",
    ]


def test_put_returns_the_entry_it_replaced(tmp_path: Path) -> None:
    """First put replaces nothing; the second returns the first."""
    store = PackageStore(tmp_path)
    old, new = installed(version="1.0.0"), installed(version="2.0.0")

    assert store.put(old) is None
    assert store.put(new) == old
    assert store.get("npm:pkg") == new


def test_put_keeps_other_entries(tmp_path: Path) -> None:
    """Recording one package leaves the others in place."""
    store = PackageStore(tmp_path)
    first, second = installed("npm:a"), installed("pypi:b")
    store.put(first)
    store.put(second)

    assert store.all() == {"npm:a": first, "pypi:b": second}


def test_folder_for_a_scoped_package_is_new_empty_and_safely_named(
    tmp_path: Path,
) -> None:
    """``@scope/name`` gets a folder under root/npm with no ``/`` or ``@``."""
    store = PackageStore(tmp_path / "cache")

    folder = store.folder_for("npm", "@scope/name")
    other = store.folder_for("npm", "@scope/name")

    assert folder.parent == tmp_path / "cache" / "npm"
    assert folder.is_dir()
    assert list(folder.iterdir()) == []
    assert "@" not in folder.name
    assert "/" not in folder.name
    assert folder.name.startswith("scope-name-")
    assert other != folder


def test_usable_follows_the_program_file(tmp_path: Path) -> None:
    """A cleaned cache makes an installation unusable."""
    program = tmp_path / "bin" / "pkg"
    entry = installed(program=str(program))

    assert not entry.usable()

    program.parent.mkdir()
    program.write_text("#!/bin/sh\n", encoding="utf-8")

    assert entry.usable()


def test_a_record_that_is_not_json_is_a_config_error(tmp_path: Path) -> None:
    """The error names the file and says it is unreadable."""
    path = tmp_path / RECORD_FILE
    path.write_text("{not json", encoding="utf-8")

    with pytest.raises(ConfigError, match="unreadable") as exc:
        PackageStore(tmp_path).all()

    assert exc.value.source == str(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("data", [{"version": 1}, [], {"packages": []}])
def test_a_record_without_a_packages_map_is_a_config_error(
    tmp_path: Path, data: object
) -> None:
    """JSON of the wrong shape is named as such."""
    path = write_record(tmp_path, data)

    with pytest.raises(ConfigError, match="no 'packages' map") as exc:
        PackageStore(tmp_path).all()

    assert exc.value.source == str(path)


def test_an_entry_with_an_unknown_field_is_a_config_error(tmp_path: Path) -> None:
    """The error names the entry's key and the field it does not know."""
    fields = {
        "package": "pkg",
        "version": "1.0.0",
        "directory": "/cache/npm/pkg-1",
        "program": "/cache/npm/pkg-1/bin/pkg",
        "installed_at": "2024-05-01T12:00:00+00:00",
        "colour": "blue",
    }
    path = write_record(tmp_path, {"version": 1, "packages": {"npm:pkg": fields}})

    wrong = r"packages\.npm:pkg: not a valid entry"
    with pytest.raises(ConfigError, match=wrong) as exc:
        PackageStore(tmp_path).all()

    assert exc.value.source == str(path)
    assert "colour" in str(exc.value)


@pytest.mark.parametrize("entry", [None, 5, "text", {"package": "pkg"}])
def test_an_entry_of_the_wrong_shape_is_a_config_error(
    tmp_path: Path, entry: object
) -> None:
    """Not a map, or missing fields: named by its key, never a raw exception."""
    path = write_record(tmp_path, {"packages": {"npm:pkg": entry}})

    with pytest.raises(ConfigError, match="not a valid entry") as exc:
        PackageStore(tmp_path).all()

    assert exc.value.source == str(path)


@pytest.mark.anyio
async def test_the_lock_can_be_taken_twice_in_a_row(tmp_path: Path) -> None:
    """Leaving the lock releases it; the lock file stays in the root."""
    store = PackageStore(tmp_path / "cache")
    entered = 0
    async with store.locked():
        entered += 1

    async with store.locked():
        entered += 1

    assert entered == 2
    assert (tmp_path / "cache" / LOCK_FILE).is_file()


@pytest.mark.anyio
async def test_a_second_holder_waits_for_the_first(tmp_path: Path) -> None:
    """Each ``locked`` opens the file anew, so two holders in one process
    exclude each other as two proxies do."""
    store = PackageStore(tmp_path)
    order: list[str] = []

    async def second() -> None:
        async with store.locked():
            order.append("second in")

    async with anyio.create_task_group() as group, store.locked():
        group.start_soon(second)
        await anyio.sleep(3 * LOCK_POLL_S)
        order.append("first out")

    assert order == ["first out", "second in"]


@pytest.mark.anyio
async def test_a_cancelled_wait_leaves_nothing_that_takes_the_lock(
    tmp_path: Path,
) -> None:
    """A wait given up (the proxy shutting down) must not take the lock later."""
    store = PackageStore(tmp_path)
    async with store.locked():
        with anyio.move_on_after(2 * LOCK_POLL_S) as scope:
            async with store.locked():
                pytest.fail("the lock was taken twice")

        assert scope.cancelled_caught

    await anyio.sleep(3 * LOCK_POLL_S)
    with anyio.fail_after(LOCK_POLL_S):
        async with store.locked():
            pass


def installation(root: Path, name: str = "pkg-1") -> Installed:
    """A recorded-looking installation whose folder, program and ``.in-use``
    file exist, as an install leaves them."""
    folder = root / "npm" / name
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "pkg").write_text("")
    (folder / LEASE_FILE).touch()
    return installed(directory=str(folder), program=str(folder / "bin" / "pkg"))


@pytest.mark.anyio
async def test_a_held_folder_is_not_removed_until_let_go(tmp_path: Path) -> None:
    store = PackageStore(tmp_path)
    held = installation(tmp_path)
    fd = await store.lease(held)
    assert fd is not None

    assert not store.remove_unless_held(held.directory)
    assert await anyio.Path(held.program).exists()

    os.close(fd)
    assert store.remove_unless_held(held.directory)
    assert not await anyio.Path(held.directory).exists()
    assert await store.lease(held) is None  # gone: nothing to hold


@pytest.mark.anyio
async def test_a_lease_waiting_on_a_removal_finds_the_folder_gone(
    tmp_path: Path,
) -> None:
    """A hold asked for while a remover has the folder waits, then sees its file
    unlinked instead of holding a folder that no longer exists."""
    store = PackageStore(tmp_path)
    doomed = installation(tmp_path)
    remover = os.open(Path(doomed.directory) / LEASE_FILE, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(remover, fcntl.LOCK_EX)
    results: list[int | None] = []

    async def hold() -> None:
        results.append(await store.lease(doomed))

    async with anyio.create_task_group() as group:
        group.start_soon(hold)
        await anyio.sleep(2 * LOCK_POLL_S)
        assert results == []  # still waiting
        shutil.rmtree(doomed.directory)
        os.close(remover)

    assert results == [None]


def test_the_sweep_removes_only_unrecorded_folders_no_one_holds(
    tmp_path: Path,
) -> None:
    store = PackageStore(tmp_path)
    recorded = installation(tmp_path, "kept-1")
    store.put(recorded)
    left_behind = installation(tmp_path, "old-1")
    still_running = installation(tmp_path, "old-2")
    fd = os.open(Path(still_running.directory) / LEASE_FILE, os.O_RDONLY | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_SH)
    try:
        assert store.sweep() == [left_behind.directory]
    finally:
        os.close(fd)

    remaining = sorted(p.name for p in (tmp_path / "npm").iterdir())
    assert remaining == ["kept-1", "old-2"]
    assert store.sweep() == [still_running.directory]
