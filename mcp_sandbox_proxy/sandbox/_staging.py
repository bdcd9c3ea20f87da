"""Dropping root before bubblewrap, without losing sight of the paths it binds.

Under a root proxy the child becomes an unprivileged uid before it runs bubblewrap
(see ``namespace``). bubblewrap then resolves every path it binds as that uid, and
a path below a directory the uid cannot enter (``/root`` is mode 0700) would be
out of its reach. ``Staging`` fixes that in the child alone: in a private mount
namespace, still as root, it covers each such directory with a small tmpfs the uid
can enter and binds back only the paths the sandbox needs, at the same place.
Nothing of this is visible outside the child and the sandbox made from it.
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWNS = 0x00020000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
# Covers hold only empty folders and files to bind onto.
COVER_OPTIONS = b"mode=0755,size=1m"

# libc's symbols are the proxy's own: no ldconfig run to find the library.
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Staging:
    """Unreachable directories to cover, and the paths below them to bind back."""

    covers: tuple[Path, ...]
    sources: tuple[Path, ...]

    def apply(self) -> None:
        """In the forked child, as root: build the covers in a new mount namespace."""
        _check(_libc.unshare(CLONE_NEWNS), "unshare")
        # Private first: nothing mounted below may propagate to the host.
        _check(_libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount /")
        fds = [os.open(src, os.O_PATH | os.O_CLOEXEC) for src in self.sources]
        for cover in self.covers:
            options = COVER_OPTIONS
            _check(_libc.mount(b"tmpfs", bytes(cover), b"tmpfs", 0, options), "cover")

        for fd, source in zip(fds, self.sources, strict=True):
            _make_mount_point(source, is_dir=stat.S_ISDIR(os.fstat(fd).st_mode))
            origin = f"/proc/self/fd/{fd}".encode()
            _check(
                _libc.mount(origin, bytes(source), None, MS_BIND | MS_REC, None), "bind"
            )
            os.close(fd)


def plan_staging(paths: list[Path], uid: int, gid: int) -> Staging | None:
    """The covers ``uid`` needs to reach ``paths``; ``None`` if it reaches all."""
    covers: dict[Path, list[Path]] = {}
    for path in {Path(os.path.realpath(p)) for p in paths}:
        blocked = first_unreachable(path, uid, gid)
        if blocked is not None:
            covers.setdefault(blocked, []).append(path)

    outermost = [
        c for c in covers if not any(c.is_relative_to(o) and c != o for o in covers)
    ]
    if not outermost:
        return None

    sources = sorted({s for c in covers for s in covers[c]}, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for source in sources:
        if not any(source.is_relative_to(k) for k in kept):
            kept.append(source)

    return Staging(tuple(sorted(outermost)), tuple(kept))


def first_unreachable(path: Path, uid: int, gid: int) -> Path | None:
    """The outermost directory above ``path`` that ``uid`` may not pass through."""
    for directory in reversed(path.parents):
        if not _may(directory, uid, gid, stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH):
            return directory

    return None


def writable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may write ``path``, by its mode bits."""
    return _may(path, uid, gid, stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)


def drop_to(uid: int, gid: int) -> None:
    """In the forked child: become ``uid``/``gid`` for good, with no extra groups."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def _may(path: Path, uid: int, gid: int, user: int, group: int, other: int) -> bool:
    try:
        info = path.stat()
    except OSError:
        return False

    if info.st_uid == uid:
        return bool(info.st_mode & user)

    if info.st_gid == gid:
        return bool(info.st_mode & group)

    return bool(info.st_mode & other)


def _make_mount_point(path: Path, *, is_dir: bool) -> None:
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")
