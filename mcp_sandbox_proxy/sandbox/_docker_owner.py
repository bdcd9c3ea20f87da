"""Which proxy process owns a container, and whether that process still lives.

Every container carries the identity of the proxy that made it: host name, boot,
process id and the process's start time. A pid alone is reused after its process
dies; together with the start time (in clock ticks since boot, from
``/proc/<pid>/stat``) and the boot id it names one process for ever.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mcp_sandbox_proxy.sandbox._docker_options import LABEL_PREFIX

INSTANCE_LABEL = LABEL_PREFIX + "instance"
SERVER_LABEL = LABEL_PREFIX + "server"
HOST_LABEL = LABEL_PREFIX + "owner-host"
BOOT_LABEL = LABEL_PREFIX + "owner-boot"
PID_LABEL = LABEL_PREFIX + "owner-pid"
STARTED_LABEL = LABEL_PREFIX + "owner-started"

BOOT_ID_PATH = Path("/proc/sys/kernel/random/boot_id")
# Field 22 of /proc/<pid>/stat, counted after the parenthesised command name
# (which may itself hold spaces and parentheses).
_STARTTIME_FIELD_AFTER_COMM = 19


@dataclass(frozen=True)
class Owner:
    """One proxy process, identified across pid reuse and reboots."""

    host: str
    boot: str
    pid: int
    started: int

    def labels(self) -> dict[str, str]:
        return {
            HOST_LABEL: self.host,
            BOOT_LABEL: self.boot,
            PID_LABEL: str(self.pid),
            STARTED_LABEL: str(self.started),
        }

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> Owner | None:
        """The owner named by a container's labels; ``None`` if they are broken."""
        try:
            return cls(
                host=labels[HOST_LABEL],
                boot=labels[BOOT_LABEL],
                pid=int(labels[PID_LABEL]),
                started=int(labels[STARTED_LABEL]),
            )
        except (KeyError, ValueError):
            return None

    def is_dead(self, observer: Owner) -> bool:
        """Whether this owner is known dead, as seen from ``observer``'s host.

        An owner on another host is never declared dead: its pids mean nothing
        here. On this host, a different boot means it died with the last boot.
        """
        if self.host != observer.host:
            return False

        if self.boot != observer.boot:
            return True

        return process_start_ticks(self.pid) != self.started


def current_owner() -> Owner:
    """This process, as an owner."""
    pid = os.getpid()
    started = process_start_ticks(pid)
    assert started is not None, "a running process has a /proc entry"
    return Owner(socket.gethostname(), boot_id(), pid, started)


def boot_id() -> str:
    try:
        return BOOT_ID_PATH.read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def process_start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; ``None`` if no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None

    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[_STARTTIME_FIELD_AFTER_COMM])
