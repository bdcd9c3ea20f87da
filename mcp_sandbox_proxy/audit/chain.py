"""The form of a record on disk, the hash chain and the optional HMAC.

A record's body is its JSON without the ``hash`` and ``mac`` fields: compact, in
field order, UTF-8, as orjson writes it. ``hash`` is the SHA-256 of the body; the
body holds ``prev``, the hash of the record before it, so each record vouches for
the whole chain behind it. ``mac`` is an HMAC-SHA256 of the body under a key kept
outside the log: without the key, a forger who rewrites the chain cannot make
matching MACs.

The line on disk is the body with ``hash`` (and ``mac``) appended as its last
fields. A reader recovers the body by removing them again, byte for byte, and
never re-encodes: any change to a line (a value, a space, an escape, the order of
fields) changes the body and breaks its hash, and a log stays verifiable whatever
JSON library wrote or reads it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from mcp_sandbox_proxy.exceptions import ConfigError

# The ``prev`` of the first record of a chain.
GENESIS_HASH = "0" * 64

# A shorter key would be guessable; 32 random bytes is the recommended size.
MIN_KEY_BYTES = 16
KEY_ID_LABEL = b"mcp-sandbox-proxy audit key id"
KEY_ID_CHARS = 16

# The fields ``seal`` appends to a body: the end of every line the writer makes.
_SEAL_TAIL = re.compile(
    rb',"hash":"(?P<hash>[0-9a-f]{64})"(?:,"mac":"(?P<mac>[0-9a-f]{64})")?}\Z'
)
# orjson holds integers of 64 bits at most; larger ones are written as text.
_INT_RANGE = range(-(2**63), 2**64)


class RecordFormatError(ValueError):
    """A line is not a record in the form the writer produces."""


@dataclass(frozen=True)
class Sealed:
    """A record read back from a line, with the hash and MAC it carried."""

    record: dict[str, Any]
    body: bytes
    hash: str
    mac: str | None


def encode_body(record: dict[str, Any]) -> bytes:
    """The JSON of ``record`` as sealed: compact, in field order, UTF-8.

    Objects JSON cannot hold are written as their text; NaN and infinities as
    ``null``. Strings that are not valid Unicode, huge integers and keys that are
    not strings are made so first, rather than breaking the log.
    """
    try:
        return orjson.dumps(record, default=str)
    except TypeError:
        return orjson.dumps(_representable(record), default=str)


def body_hash(body: bytes) -> str:
    """The SHA-256 of a record's body, in hex."""
    return hashlib.sha256(body).hexdigest()


def body_mac(key: bytes, body: bytes) -> str:
    """The HMAC-SHA256 of a record's body under ``key``, in hex."""
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def seal(body: bytes, key: bytes | None) -> tuple[bytes, str]:
    """The line to write for ``body`` (newline included) and the body's hash."""
    digest = body_hash(body)
    mac = "" if key is None else f',"mac":"{body_mac(key, body)}"'
    return body[:-1] + f',"hash":"{digest}"{mac}}}\n'.encode(), digest


def unseal(line: bytes) -> Sealed:
    """Split one line (without its newline) into its body, hash, MAC and record.

    Raises ``RecordFormatError`` if the line does not end with the ``hash`` (and
    ``mac``) fields as the writer appends them, or its body is not a JSON object.
    Whether the hash matches the body is for the caller to check.
    """
    tail = _SEAL_TAIL.search(line)
    if tail is None:
        raise RecordFormatError("the line does not end with a well-formed 'hash'")

    body = line[: tail.start()] + b"}"
    mac: bytes | None = tail.group("mac")
    digest = tail.group("hash").decode()
    return Sealed(
        _parse_object(body), body, digest, None if mac is None else mac.decode()
    )


def load_hmac_key(path: Path) -> bytes:
    """Read the HMAC key: the file's bytes without surrounding whitespace."""
    try:
        key = path.read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the audit HMAC key: {exc.strerror}", source=str(path)
        ) from exc

    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(
            f"the audit HMAC key is {len(key)} bytes; at least {MIN_KEY_BYTES} are"
            " needed (for example 32 random bytes, base64-encoded)",
            source=str(path),
        )

    return key


def key_id(key: bytes) -> str:
    """A short fingerprint of ``key`` that reveals nothing of it, for headers."""
    return hmac.new(key, KEY_ID_LABEL, hashlib.sha256).hexdigest()[:KEY_ID_CHARS]


def _parse_object(line: bytes) -> dict[str, Any]:
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise RecordFormatError(f"not valid JSON: {exc}") from exc

    if not isinstance(value, dict):
        raise RecordFormatError("not a JSON object")

    return value  # type: ignore[return-value]


def _representable(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode()

    if isinstance(value, int) and not isinstance(value, bool):
        return value if value in _INT_RANGE else str(value)

    if isinstance(value, dict):
        mapping = cast("dict[Any, Any]", value)
        return {_representable(str(k)): _representable(v) for k, v in mapping.items()}

    if isinstance(value, list | tuple):
        return [_representable(v) for v in cast("list[Any]", value)]

    return value
