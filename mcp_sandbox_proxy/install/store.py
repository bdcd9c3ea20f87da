"""The record of installed packages, kept beside them in the proxy's cache.

``installed.json`` maps each installation's key (ecosystem, requirement, program)
to the version installed, its folder and the program to start. A recorded
installation is reused as it is: the registry is not asked again until the user
upgrades. Proxies started side by side (one per client) share the cache, so
changes happen under an exclusive lock on ``.lock``.

A proxy that runs a server from an installation holds a shared lock on the
folder's ``.in-use`` file while it runs. An upgrade removes the folder it
replaces only when it can take that lock exclusively: a server started from the
old version keeps its files (a program may load more of them at any time), and
a later install removes the folder once no proxy holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import AsyncGenerator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast, get_args

import anyio

from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.install.launchers import Ecosystem

RECORD_FILE = "installed.json"
LOCK_FILE = ".lock"
LEASE_FILE = ".in-use"
# The folders under the cache root that hold installations, one per ecosystem.
ECOSYSTEM_FOLDERS: tuple[str, ...] = get_args(Ecosystem)
# How often a wait for the lock looks again: installs take seconds.
LOCK_POLL_S = 0.1
RECORD_VERSION = 1


@dataclass(frozen=True)
class Installed:
    """One installation: what was asked for, what was installed, where."""

    key: str
    package: str
    version: str
    directory: str
    program: str
    installed_at: str
    registry: tuple[str, ...] = ()

    def usable(self) -> bool:
        """Whether its files are still there (a cache may have been cleaned)."""
        return Path(self.program).exists()


class PackageStore:
    """The cache folder of installed packages and its record."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder_for(self, ecosystem: str, package: str) -> Path:
        """A new, empty folder for one installation of ``package``."""
        parent = self.root / ecosystem
        parent.mkdir(parents=True, exist_ok=True)
        safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in package)
        return Path(tempfile.mkdtemp(prefix=f"{safe.strip('-')}-", dir=parent))

    @contextlib.asynccontextmanager
    async def locked(self) -> AsyncGenerator[None]:
        """Hold the cache's lock: one change at a time, machine-wide."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # Released when the descriptor closes, also if the process dies.
            await _flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def all(self) -> dict[str, Installed]:
        """Every recorded installation, by key."""
        path = self.root / RECORD_FILE
        try:
            data: Any = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the record of installed packages is unreadable: {exc}; remove"
                " it to install every package again",
                source=str(path),
            ) from exc

        packages = (
            cast("dict[str, Any]", data).get("packages")
            if isinstance(data, dict)
            else None
        )
        if not isinstance(packages, dict):
            raise ConfigError(
                "the record of installed packages has no 'packages' map",
                source=str(path),
            )

        found: dict[str, Installed] = {}
        for key, entry in cast("dict[str, Any]", packages).items():
            try:
                fields = dict(cast("dict[str, Any]", entry))
                fields["registry"] = tuple(fields.get("registry", ()))
                found[key] = Installed(key=key, **fields)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"packages.{key}: not a valid entry ({exc})", source=str(path)
                ) from exc

        return found

    def get(self, key: str) -> Installed | None:
        return self.all().get(key)

    def put(self, installed: Installed) -> Installed | None:
        """Record ``installed``; returns the entry it replaced, if any."""
        entries = self.all()
        previous = entries.get(installed.key)
        entries[installed.key] = installed
        self._write(entries)
        return previous

    async def lease(self, installed: Installed) -> int | None:
        """A shared hold on ``installed``'s folder, kept while the returned
        descriptor stays open; None when the folder is gone or was removed while
        the hold was being taken."""
        # Opened for reading only, never created: a cache another user installed
        # can be held too, and no hold can start in a folder being removed.
        try:
            fd = os.open(Path(installed.directory) / LEASE_FILE, os.O_RDONLY)
        except FileNotFoundError:
            return None

        try:
            # A remover holds it exclusively for as long as it takes to remove.
            await _flock(fd, fcntl.LOCK_SH)
            # An unlinked file: the folder was removed while this waited.
            if os.fstat(fd).st_nlink == 0 or not installed.usable():
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise

        return fd

    def remove_unless_held(self, directory: str) -> bool:
        """Remove an installation's folder unless a proxy holds it; True when it
        is gone. Call under ``locked``, which keeps installs from racing it."""
        folder = Path(directory)
        try:
            fd = os.open(folder / LEASE_FILE, os.O_RDONLY)
        except FileNotFoundError:
            # Never recorded, or half removed already: no proxy can hold it.
            shutil.rmtree(folder, ignore_errors=True)
            return not folder.exists()

        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False

            # Held while the files go, so that a hold opened meanwhile finds its
            # file unlinked once it gets it.
            shutil.rmtree(folder, ignore_errors=True)
            return not folder.exists()
        finally:
            os.close(fd)

    def sweep(self) -> list[str]:
        """Remove the folders that no record names and no proxy holds any more:
        versions an upgrade replaced while they ran. Call under ``locked``."""
        recorded = {entry.directory for entry in self.all().values()}
        removed: list[str] = []
        for ecosystem in ECOSYSTEM_FOLDERS:
            parent = self.root / ecosystem
            folders = sorted(parent.iterdir()) if parent.is_dir() else []
            for folder in folders:
                if (
                    folder.is_dir()
                    and str(folder) not in recorded
                    and self.remove_unless_held(str(folder))
                ):
                    removed.append(str(folder))

        return removed

    def _write(self, entries: dict[str, Installed]) -> None:
        packages: dict[str, Any] = {}
        for key, entry in sorted(entries.items()):
            fields = asdict(entry)
            del fields["key"]
            fields["registry"] = list(entry.registry)
            packages[key] = fields

        text = json.dumps({"version": RECORD_VERSION, "packages": packages}, indent=2)
        path = self.root / RECORD_FILE
        # Written aside and renamed over, so a reader never sees half a file.
        scratch = path.with_name(f".{RECORD_FILE}.{os.getpid()}")
        scratch.write_text(text + "\n", encoding="utf-8")
        scratch.replace(path)


async def _flock(fd: int, operation: int) -> None:
    """Take ``operation`` (``LOCK_EX`` or ``LOCK_SH``) on ``fd``, waiting as long
    as it takes. The wait polls instead of blocking a worker thread, so that a
    cancelled wait (a proxy shut down while another installs) leaves no thread
    behind that would take the lock later and keep it until the process exits.
    """
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            await anyio.sleep(LOCK_POLL_S)
