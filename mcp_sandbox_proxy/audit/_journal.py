"""The chain on disk: linking records, appending them, reopening and rotating files.

Every method here blocks; ``AuditLog`` calls them one at a time, in order, from
the event loop or a worker thread. The chain state (last sequence number and
hash) advances only once a group of records is stored, so a failed write leaves
nothing half-linked: the file is cut back and the same numbers are used again.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mcp_sandbox_proxy.audit._files import (
    Tail,
    first_record,
    read_tail,
    rotated_path,
    rotated_siblings,
)
from mcp_sandbox_proxy.audit._sink import AppendFile, SyncThread, sync_directory
from mcp_sandbox_proxy.audit.chain import (
    GENESIS_HASH,
    RecordFormatError,
    body_hash,
    encode_body,
    key_id,
    seal,
    unseal,
)
from mcp_sandbox_proxy.audit.records import HEADER_EVENT, SCHEMA_VERSION
from mcp_sandbox_proxy.exceptions import AuditError


@dataclass(slots=True, eq=False)
class Entry:
    """A record waiting to be written, and what became of it."""

    event: str
    ts: str
    fields: dict[str, Any]
    seq: int = 0
    done: bool = False
    error: Exception | None = None


@dataclass(frozen=True)
class Linked:
    """A group of records ready to append, and the chain state after them."""

    data: bytes
    seq: int
    head: str


class Journal:
    """One chain of audit records, stored in ``path`` and the files rotated out."""

    def __init__(
        self, path: Path, *, instance: str, durability: str, key: bytes | None
    ) -> None:
        self.path = path
        self.instance = instance
        self.durability = durability
        self.key = key
        self.file: AppendFile | None = None
        self.syncer: SyncThread | None = None
        self.stale = True
        self.seq = -1
        self.head = GENESIS_HASH
        self.started = 0.0
        self.header: dict[str, Any] | None = None

    def seal(self, batch: list[Entry]) -> Linked:
        """Link ``batch`` (after a pending header) into the chain; number it."""
        if self.header is not None:
            # Dated like the first record it precedes, so time never runs back.
            ts = batch[0].ts if batch else utc_now()
            batch = [Entry(HEADER_EVENT, ts, self.header), *batch]

        seq, head, lines = self.seq, self.head, list[bytes]()
        for entry in batch:
            seq += 1
            record = {
                "v": SCHEMA_VERSION,
                "seq": seq,
                "ts": entry.ts,
                "instance": self.instance,
                "event": entry.event,
                **entry.fields,
                "prev": head,
            }
            line, head = seal(encode_body(record), self.key)
            lines.append(line)
            entry.seq = seq

        return Linked(b"".join(lines), seq, head)

    def store(self, linked: Linked, *, sync: bool) -> int:
        """Append sealed records; sync them or leave that to the sync thread.

        Returns how many records were stored. On ``OSError`` the file holds
        only what it held before.
        """
        file = self.file
        assert file is not None
        before = file.size
        file.append(linked.data)
        if sync:
            try:
                file.sync()
            except OSError:
                file.cut_back(before)
                raise
        elif self.syncer is not None:
            self.syncer.poke()

        stored = linked.seq - self.seq
        self.seq, self.head, self.header = linked.seq, linked.head, None
        return stored

    def reopen(self) -> None:
        """(Re)open ``path``, continuing the chain found on disk; queue a header."""
        self.close_file()
        tail = read_tail(self.path) if self.path.exists() else None
        header = self._continue_chain(tail)
        file = AppendFile.open(self.path)
        if tail is not None and tail.partial:
            file.cut_back(tail.complete_bytes)
            header["discarded_tail_bytes"] = len(tail.partial)
            header["discarded_tail_sha256"] = hashlib.sha256(tail.partial).hexdigest()

        self._use_file(file, header)
        self.started = _started_at(self.path) if self.seq >= 0 else time.time()
        self.stale = False

    def rotation_due(self, max_bytes: int | None, max_age_s: int | None) -> bool:
        """Whether the current file has grown or aged past its bound."""
        assert self.file is not None
        if max_bytes is not None and self.file.size >= max_bytes:
            return True

        return max_age_s is not None and time.time() - self.started >= max_age_s

    def rotate(self) -> None:
        """Rename the current file after its last record; start a new one."""
        assert self.file is not None
        target = rotated_path(self.path, self.seq)
        if target.exists():
            raise AuditError(f"cannot rotate the audit log: {target} already exists")

        with self._sync_guard():
            self.file.sync()
            self.file.close()
            self.file = None
            self.path.rename(target)
            sync_directory(self.path.parent)

        header = self._header_fields("rotated", previous_file=target.name)
        self._use_file(AppendFile.open(self.path), header)
        self.started = time.time()

    def sync_error(self) -> OSError | None:
        """The error of the last background sync, if it failed."""
        return None if self.syncer is None else self.syncer.error

    def clear_sync_error(self) -> None:
        """Forget a reported background sync error."""
        if self.syncer is not None:
            self.syncer.error = None

    def shut(self) -> OSError | None:
        """Stop the sync thread, sync and close; the final sync's error, if any."""
        if self.syncer is not None:
            self.syncer.stop()
            self.syncer = None

        error = None
        if self.file is not None:
            try:
                self.file.sync()
            except OSError as exc:
                error = exc

        self.close_file()
        return error

    def close_file(self) -> None:
        """Close the current file, syncing what it can of it first."""
        if self.file is not None:
            with self._sync_guard(), contextlib.suppress(OSError):
                self.file.sync()

            with self._sync_guard():
                self.file.close()
                self.file = None

    def _continue_chain(self, tail: Tail | None) -> dict[str, Any]:
        if tail is not None and tail.last_line is not None:
            self._link_to(tail.last_line, self.path)
            return self._header_fields("appended")

        siblings = rotated_siblings(self.path)
        if not siblings:
            self.seq, self.head = -1, GENESIS_HASH
            return self._header_fields("new")

        last = read_tail(siblings[-1]).last_line
        if last is None:
            raise AuditError(f"the rotated audit file {siblings[-1]} holds no record")

        self._link_to(last, siblings[-1])
        return self._header_fields("rotated", previous_file=siblings[-1].name)

    def _link_to(self, line: bytes, source: Path) -> None:
        try:
            record = unseal(line)
            seq = record.record.get("seq")
            if body_hash(record.body) != record.hash or not isinstance(seq, int):
                raise RecordFormatError("its hash does not match its content")
        except RecordFormatError as exc:
            raise AuditError(
                f"cannot continue the audit chain: the last record of {source} is"
                f" damaged ({exc}); check it with 'audit-log verify', move it aside"
            ) from exc

        self.seq, self.head = seq, record.hash

    def _use_file(self, file: AppendFile, header: dict[str, Any]) -> None:
        self.file, self.header = file, header
        if self.durability != "batch":
            return

        if self.syncer is None:
            self.syncer = SyncThread(file)
        else:
            with self.syncer.lock:
                self.syncer.switch(file)

    def _header_fields(self, reason: str, **more: Any) -> dict[str, Any]:
        header: dict[str, Any] = {
            "reason": reason,
            "durability": self.durability,
            "hmac": self.key is not None,
        }
        if self.key is not None:
            header["key_id"] = key_id(self.key)

        return header | more

    def _sync_guard(self) -> contextlib.AbstractContextManager[Any]:
        # Files are swapped or closed only while the sync thread cannot use them.
        return contextlib.nullcontext() if self.syncer is None else self.syncer.lock


class _UtcClock:
    """The current UTC time as ISO 8601 with microseconds and a ``Z``.

    Formatting the date is the slow part and changes once a second, so the text
    of the current second is kept.
    """

    def __init__(self) -> None:
        self._second = -1
        self._second_text = ""

    def __call__(self) -> str:
        second, fraction = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            moment = time.gmtime(second)
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", moment)
            self._second = second

        return f"{self._second_text}.{fraction:06d}Z"


utc_now = _UtcClock()


def _started_at(path: Path) -> float:
    record = first_record(path) or {}
    try:
        return datetime.fromisoformat(str(record.get("ts"))).timestamp()
    except ValueError:
        return time.time()
