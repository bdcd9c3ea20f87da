"""The form of records on disk, their hash and MAC, and the HMAC key file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox_proxy.audit.chain import (
    RecordFormatError,
    body_hash,
    body_mac,
    encode_body,
    key_id,
    load_hmac_key,
    seal,
    unseal,
)
from mcp_sandbox_proxy.exceptions import ConfigError

KEY = b"k" * 32
RECORD = {"v": 1, "seq": 3, "event": "call_intent", "tool": "héllo", "prev": "0" * 64}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def test_body_is_compact_utf8_json_in_field_order() -> None:
    """The body keeps field order and has no spaces; text is UTF-8."""
    body = encode_body(RECORD)

    assert body.startswith(
        '{"v":1,"seq":3,"event":"call_intent","tool":"héllo"'.encode()
    )


def test_control_characters_are_escaped() -> None:
    """A terminal escape in a value cannot reach a terminal showing the log raw."""
    assert encode_body({"text": "\x1b[2J"}) == b'{"text":"\\u001b[2J"}'


def test_sealed_line_ends_with_hash_of_body_and_a_newline() -> None:
    """The line is the body plus its SHA-256 in a final ``hash`` field."""
    body = encode_body(RECORD)

    line, digest = seal(body, None)

    assert digest == body_hash(body)
    assert json.loads(line)["hash"] == digest
    assert line.endswith(b"}\n")


def test_sealed_line_with_a_key_carries_the_hmac_of_the_body() -> None:
    """With a key the line also carries the body's HMAC-SHA256."""
    body = encode_body(RECORD)

    line, _ = seal(body, KEY)

    assert json.loads(line)["mac"] == body_mac(KEY, body)
    assert body_mac(b"x" * 32, body) != body_mac(KEY, body)


@given(st.dictionaries(st.text(max_size=10), json_values, min_size=1, max_size=6))
def test_any_record_unseals_to_what_was_sealed(record: dict[str, Any]) -> None:
    """Sealing then unsealing gives back the record, its body and its hash."""
    record.pop("hash", None)
    record.pop("mac", None)
    record = record or {"seq": 0}
    line, digest = seal(encode_body(record), KEY)

    sealed = unseal(line[:-1])

    assert sealed.record == record
    assert sealed.hash == digest
    assert sealed.mac == body_mac(KEY, sealed.body)


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda line: line[: line.index(b',"hash"')] + b"}", "the hash removed"),
        (lambda line: line.replace(b'"hash":"', b'"hash": "'), "space before the hash"),
        (lambda line: line + b" ", "something after the hash"),
        (lambda line: b"[" + line + b"]", "not an object"),
        (lambda line: line[:5] + line[-80:], "cut in the middle"),
        (lambda line: line.replace(b'"seq":3', b'"seq":NaN'), "NaN"),
        (lambda line: line.replace("é".encode(), b"\xe9"), "not UTF-8"),
    ],
)
def test_a_line_that_is_not_a_sealed_record_is_refused(edit: Any, why: str) -> None:
    """A line must be a JSON object ending with its hash as the writer put it."""
    line, _ = seal(encode_body(RECORD), None)

    with pytest.raises(RecordFormatError):
        unseal(edit(line[:-1]))


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda line: line.replace(b",", b", ", 1), "whitespace added"),
        (lambda line: line.replace(b'{"v":1,', b'{"v":1,"v":1,'), "a key repeated"),
        (lambda line: line.replace("é".encode(), b"\\u00e9"), "a letter escaped"),
        (lambda line: line.replace(b'{"v":1,"seq":3', b'{"seq":3,"v":1'), "reordered"),
        (lambda line: line.replace(b'"seq":3', b'"seq":4'), "a value changed"),
    ],
)
def test_any_edit_that_keeps_the_json_valid_breaks_the_hash(
    edit: Any, why: str
) -> None:
    """The hash covers the body byte for byte, even changes JSON ignores."""
    line, digest = seal(encode_body(RECORD), None)

    sealed = unseal(edit(line[:-1]))

    assert sealed.hash == digest
    assert body_hash(sealed.body) != digest


def test_nan_and_infinity_are_written_as_null() -> None:
    """Numbers JSON cannot hold become ``null`` rather than breaking the log."""
    body = encode_body({"cpu_seconds": float("nan"), "peak": float("inf")})

    assert json.loads(body) == {"cpu_seconds": None, "peak": None}


def test_values_orjson_cannot_hold_are_made_representable() -> None:
    """Huge integers become text, broken Unicode is replaced, keys become text."""
    body = encode_body({"n": 2**70, "s": "a\ud800b", "m": {1: "one"}})

    assert json.loads(body) == {"n": str(2**70), "s": "a?b", "m": {"1": "one"}}
    assert unseal(seal(body, None)[0][:-1]).record == json.loads(body)


def test_objects_json_cannot_hold_are_written_as_text(tmp_path: Path) -> None:
    """A path or other object is written as its text."""
    assert json.loads(encode_body({"where": tmp_path})) == {"where": str(tmp_path)}


def test_hmac_key_is_read_without_surrounding_whitespace(tmp_path: Path) -> None:
    """A trailing newline in the key file is not part of the key."""
    key_file = tmp_path / "key"
    key_file.write_bytes(KEY + b"\n")

    assert load_hmac_key(key_file) == KEY


def test_a_short_hmac_key_is_refused_naming_the_file(tmp_path: Path) -> None:
    """A guessable key is refused, and the error names the file."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"short\n")

    with pytest.raises(ConfigError, match=f"{key_file}.*5 bytes"):
        load_hmac_key(key_file)


def test_a_missing_hmac_key_file_is_a_config_error(tmp_path: Path) -> None:
    """An unreadable key file names the file and the reason."""
    with pytest.raises(ConfigError, match="No such file"):
        load_hmac_key(tmp_path / "absent")


def test_key_id_tells_keys_apart_without_revealing_them() -> None:
    """Two keys have different ids, and an id does not contain its key."""
    assert key_id(KEY) != key_id(b"j" * 32)
    assert KEY.hex()[:16] not in key_id(KEY)
