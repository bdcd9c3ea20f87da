"""``AuditLog``: the one writer of audit records.

Each ``write`` turns an event into a record (secrets redacted), links it into the
hash chain and appends it to the file; it returns the record's sequence number
once the record is as durable as the configured mode promises:

- ``fsync``: on the disk. Writers that arrive while a sync runs are committed
  together by the next one (group commit), so every record is still synced
  before its ``write`` returns, at the cost of one sync per group.
- ``batch``: in the kernel (it survives the proxy being killed, even by SIGKILL)
  and on the disk a few milliseconds later; a power cut may lose the last few.
  The append runs on the event loop: handing a small record to the page cache
  takes about a microsecond, far less than a hop to a worker thread.
- ``off``: nothing is written; the opt-out, warned about when the log opens.

A record that cannot be written raises ``AuditError`` (fail closed), or with
``failClosed: false`` is logged as lost on stderr and ``write`` returns 0.
Records reach the file in sequence order, and after a failed write the file
holds only whole records: the next write reopens the file, appends a header and
continues the chain from what is on disk.
"""

from __future__ import annotations

from typing import Any

import anyio
import structlog

from mcp_sandbox_proxy.audit._files import default_audit_path
from mcp_sandbox_proxy.audit._journal import Entry, Journal, Linked, utc_now
from mcp_sandbox_proxy.audit.chain import load_hmac_key
from mcp_sandbox_proxy.audit.records import (
    CLOSE_EVENT,
    REDACT_NAMES_FIELD,
    TRUSTED_FIELDS,
    check_event,
)
from mcp_sandbox_proxy.audit.redact import redact_fields
from mcp_sandbox_proxy.config import AuditConfig
from mcp_sandbox_proxy.exceptions import AuditError

log = structlog.get_logger(__name__)

# Strings in arguments (file contents, long prompts) are clipped to this length:
# the record keeps their start and full length without growing the log by the
# size of every payload.
ARGUMENT_STRING_MAX_CHARS = 4096


class AuditLog:
    """The audit log of one proxy instance; create it with ``AuditLog.open``."""

    def __init__(self, settings: AuditConfig, journal: Journal | None) -> None:
        self.settings = settings
        self.path = None if journal is None else journal.path
        self._journal = journal
        self._pending: list[Entry] = []
        self._lock = anyio.Lock(fast_acquire=True)
        self._written = 0
        self._closed = False

    @classmethod
    def open(cls, settings: AuditConfig, *, instance: str) -> AuditLog:
        """Open the log and write its header, continuing any chain on disk.

        Raises ``AuditError`` when the log cannot be opened and ``failClosed``
        holds, and ``ConfigError`` when the HMAC key file is unusable.
        """
        if settings.durability == "off":
            log.warning("audit_disabled", risk="tool calls run and leave no record")
            return cls(settings, None)

        key = None
        if settings.hmac_key_file is not None:
            key = load_hmac_key(settings.hmac_key_file)

        path = settings.path or default_audit_path()
        journal = Journal(
            path, instance=instance, durability=settings.durability, key=key
        )
        audit = cls(settings, journal)
        try:
            journal.reopen()
            audit._written += journal.store(journal.seal([]), sync=True)
        except (OSError, AuditError) as exc:
            audit._open_failed(exc)

        return audit

    @property
    def records(self) -> bool:
        """False when auditing is off: ``write`` then takes any event and keeps
        nothing, so a caller may skip building the record."""
        return self._journal is not None

    @property
    def writes_without_waiting(self) -> bool:
        """True when ``write`` usually returns without waiting for the disk."""
        return self.settings.durability != "fsync"

    async def write(self, event: str, **fields: Any) -> int:
        """Write one record; its sequence number once durable (0 if not written).

        ``fields`` are kept as given after redaction; ``redact_names`` lists
        more names whose values are secret and is not itself recorded.
        """
        if self._journal is None:
            return 0

        return await self._submit(_entry(event, fields))

    def can_write_now(self) -> bool:
        """True when ``write_now`` may be used: a record would be appended at once,
        with no lock, reopening, rotation or sync to wait for."""
        return self._journal is None or (not self._closed and self._can_commit_inline())

    def write_now(self, event: str, **fields: Any) -> int:
        """``write`` for a caller that cannot wait, after ``can_write_now``."""
        if self._journal is None:
            return 0

        return self._write_inline(_entry(event, fields))

    async def aclose(self) -> None:
        """Write the closing record, then sync and close the file."""
        journal = self._journal
        if journal is None or self._closed:
            return

        closing = Entry(CLOSE_EVENT, utc_now(), {"records": self._written + 1})
        try:
            await self._submit(closing)
        except AuditError as exc:
            log.error("audit_close_record_lost", path=str(self.path), error=str(exc))

        self._closed = True
        error: OSError | None = None
        with anyio.CancelScope(shield=True):
            error = await anyio.to_thread.run_sync(journal.shut)

        if error is not None:
            log.error("audit_final_sync_failed", path=str(self.path), error=str(error))

    async def _submit(self, entry: Entry) -> int:
        if self._closed:
            raise AuditError(f"the audit log {self.path} is closed")

        if self._can_commit_inline():
            return self._write_inline(entry)

        self._pending.append(entry)

        # A record once begun is finished: cancelling the caller must not leave
        # it unwritten, half-written or out of order.
        with anyio.CancelScope(shield=True):
            async with self._lock:
                if not entry.done:
                    await self._commit_pending()

        return self._outcome(entry)

    def _can_commit_inline(self) -> bool:
        # The common case of the batch mode needs no await at all: nobody holds
        # the lock, the file is open and needs no rotation.
        journal = self._journal
        assert journal is not None
        settings = self.settings
        return (
            settings.durability == "batch"
            and not self._lock.locked()
            and not journal.stale
            and journal.sync_error() is None
            and not journal.rotation_due(settings.rotate_bytes, settings.rotate_seconds)
        )

    def _write_inline(self, entry: Entry) -> int:
        self._pending.append(entry)
        self._commit_inline()
        return self._outcome(entry)

    def _commit_inline(self) -> None:
        journal = self._journal
        assert journal is not None
        batch, self._pending = self._pending, []
        try:
            stored = journal.store(journal.seal(batch), sync=False)
        except OSError as exc:
            self._failed(batch, exc)
            return

        self._stored(batch, stored)

    async def _commit_pending(self) -> None:
        journal = self._journal
        assert journal is not None
        batch, self._pending = self._pending, []
        try:
            await self._prepare(journal)
            linked = journal.seal(batch)
            if self.settings.durability == "fsync":
                stored = await anyio.to_thread.run_sync(_store_synced, journal, linked)
            else:
                stored = journal.store(linked, sync=False)
        except (OSError, AuditError) as exc:
            self._failed(batch, exc)
            return

        self._stored(batch, stored)

    def _stored(self, batch: list[Entry], count: int) -> None:
        self._written += count
        for entry in batch:
            entry.done = True

    def _failed(self, batch: list[Entry], exc: Exception) -> None:
        assert self._journal is not None
        self._journal.stale = True
        for entry in batch:
            entry.done, entry.error = True, exc

    async def _prepare(self, journal: Journal) -> None:
        settings = self.settings
        if journal.stale:
            await anyio.to_thread.run_sync(journal.reopen)
        elif journal.rotation_due(settings.rotate_bytes, settings.rotate_seconds):
            await anyio.to_thread.run_sync(journal.rotate)

        error = journal.sync_error()
        if error is None:
            return

        if settings.fail_closed:
            raise AuditError(
                f"a background sync of the audit log {self.path} failed"
                f" ({error.strerror}); records acknowledged since may be lost"
            ) from error

        journal.clear_sync_error()

    def _outcome(self, entry: Entry) -> int:
        if entry.error is None:
            return entry.seq

        reason = _reason(entry.error)
        if self.settings.fail_closed:
            raise AuditError(
                f"audit record {entry.event!r} could not be written to {self.path}:"
                f" {reason}; refusing to go on unaudited (proxy.audit.failClosed)"
            ) from entry.error

        log.error(
            "audit_record_lost",
            audit_event=entry.event,
            path=str(self.path),
            error=reason,
        )
        return 0

    def _open_failed(self, exc: Exception) -> None:
        assert self._journal is not None
        self._journal.stale = True
        if self.settings.fail_closed:
            self._journal.shut()
            raise AuditError(
                f"cannot open the audit log {self.path}: {_reason(exc)}"
            ) from exc

        log.error("audit_log_unavailable", path=str(self.path), error=_reason(exc))


def _entry(event: str, fields: dict[str, Any]) -> Entry:
    """A checked, redacted record of ``event``, not yet linked into the chain."""
    check_event(event, fields)
    return Entry(event, utc_now(), _scrubbed(fields))


def _scrubbed(fields: dict[str, Any]) -> dict[str, Any]:
    names = fields.pop(REDACT_NAMES_FIELD, ())
    return redact_fields(
        fields,
        (names,) if isinstance(names, str) else names,
        trusted=TRUSTED_FIELDS,
        max_string_chars=ARGUMENT_STRING_MAX_CHARS,
    )


def _store_synced(journal: Journal, linked: Linked) -> int:
    return journal.store(linked, sync=True)


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"

    return str(exc)
