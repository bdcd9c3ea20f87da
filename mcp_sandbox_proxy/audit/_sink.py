"""The open audit file: appending whole records, undoing a failed append, syncing.

``AppendFile`` never leaves part of a record behind: when a write fails (a full
disk, an I/O error), the file is cut back to its last complete record, so the
chain on disk stays whole and a later write may succeed. ``SyncThread`` is the
group commit of the ``batch`` durability: records are handed to the kernel at
once (they survive the proxy being killed) and reach the disk together, at most
``BATCH_SYNC_INTERVAL_S`` plus one sync later.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

# The longest a record of the batch mode stays only in the page cache, beyond the
# time one sync takes: short enough that a power cut loses little, long enough
# that a burst of calls shares one sync.
BATCH_SYNC_INTERVAL_S = 0.005

# Stopping waits this long for a sync in progress; a disk that hangs longer is
# reported rather than allowed to hang the proxy's shutdown.
SYNC_JOIN_TIMEOUT_S = 10.0

FILE_MODE = 0o600
DIR_MODE = 0o700


class AppendFile:
    """An audit file opened for appending whole records."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path = path
        self.fd = fd
        self.size = size
        self.closed = False

    @classmethod
    def open(cls, path: Path) -> AppendFile:
        """Open or create ``path`` (and its folders) for appending; ``OSError``."""
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        fd = os.open(path, flags, FILE_MODE)
        try:
            size = os.fstat(fd).st_size
            sync_directory(path.parent)
        except OSError:
            os.close(fd)
            raise

        return cls(path, fd, size)

    def append(self, data: bytes) -> None:
        """Write all of ``data`` or, on error, cut the file back and raise."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            self.cut_back()
            raise

        self.size += len(data)

    def cut_back(self, size: int | None = None) -> None:
        """Truncate to ``size`` (default: the last complete record), if possible."""
        if size is not None:
            self.size = size

        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, self.size)

    def sync(self) -> None:
        """Wait until every appended byte is on the disk; ``OSError``."""
        os.fdatasync(self.fd)

    def close(self) -> None:
        """Close the descriptor; the caller syncs first if it needs to."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                os.close(self.fd)


def sync_directory(path: Path) -> None:
    """Make a file created or renamed in ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SyncThread:
    """Syncs the current file shortly after records were appended to it."""

    def __init__(self, file: AppendFile) -> None:
        self.error: OSError | None = None
        self.lock = threading.Lock()
        self._file = file
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="audit-sync", daemon=True
        )
        self._thread.start()

    def poke(self) -> None:
        """Ask for a sync soon; cheap when one is already asked for."""
        if not self._wanted.is_set():
            self._wanted.set()

    def switch(self, file: AppendFile) -> None:
        """Sync ``file`` from now on; hold ``lock`` while closing or swapping files."""
        self._file = file

    def stop(self) -> None:
        """Sync what is pending and end the thread (blocking; run in a thread)."""
        self._stopping.set()
        self._wanted.set()
        self._thread.join(SYNC_JOIN_TIMEOUT_S)
        if self._thread.is_alive():
            log.error("audit_sync_hung", path=str(self._file.path))

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wanted.wait()
            self._wanted.clear()
            self._sync_once()
            self._stopping.wait(BATCH_SYNC_INTERVAL_S)

        self._sync_once()

    def _sync_once(self) -> None:
        with self.lock:
            if self._file.closed:
                # Whoever closed it synced it first.
                return

            try:
                self._file.sync()
            except OSError as exc:
                self.error = exc
                log.error(
                    "audit_sync_failed", path=str(self._file.path), error=exc.strerror
                )
