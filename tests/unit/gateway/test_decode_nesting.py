"""``jsonrpc.decode`` refuses messages nested deeper than ``MAX_NESTING``, short
lines by their brackets and long ones by walking what was parsed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_sandbox_proxy.gateway import jsonrpc
from mcp_sandbox_proxy.gateway.jsonrpc import (
    COUNTED_NESTING_BYTES,
    MAX_NESTING,
    PARSE_ERROR,
    DecodeError,
    decode,
)


def nested(depth: int, pad: int = 0) -> bytes:
    """A result whose value nests ``depth`` containers deep in all (the message
    and its result count), alternating lists and objects, padded with text."""
    inner: Any = "x" * pad
    for level in range(depth - 1):
        inner = [inner] if level % 2 else {"k": inner}
    message = {"jsonrpc": "2.0", "id": 1, "result": inner}
    return json.dumps(message).encode()


def depth_of(value: Any) -> int:
    """The true depth of a parsed JSON value, containers counted."""
    if not isinstance(value, dict | list):
        return 0

    children: Any = value.values() if isinstance(value, dict) else value
    return 1 + max(map(depth_of, children), default=0)


@pytest.mark.parametrize("pad", [0, COUNTED_NESTING_BYTES])
def test_the_limit_itself_passes_and_one_more_is_refused(pad: int) -> None:
    """Both ways of checking, by brackets (short line) and by walking (long
    line), draw the line at the same depth."""
    at_limit, past_it = nested(MAX_NESTING, pad), nested(MAX_NESTING + 1, pad)
    assert (len(at_limit) > COUNTED_NESTING_BYTES) == bool(pad)
    assert depth_of(json.loads(at_limit)) == MAX_NESTING

    decode(at_limit)
    with pytest.raises(DecodeError) as refused:
        decode(past_it)

    assert refused.value.code == PARSE_ERROR
    assert str(refused.value) == jsonrpc.TOO_DEEP


def test_a_long_line_full_of_brackets_in_strings_is_not_too_deep() -> None:
    """Brackets inside strings are text, not nesting: a long result of them
    passes, and quickly, as only its few containers are walked."""
    text = "[{" * (COUNTED_NESTING_BYTES * 4)
    line = json.dumps(
        {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"text": text}]}}
    ).encode()

    assert decode(line)["result"]["content"][0]["text"] == text


def test_a_long_line_deeper_than_orjson_goes_is_a_parse_error() -> None:
    line = b"[" * 100_000 + b"]" * 100_000

    with pytest.raises(DecodeError) as refused:
        decode(line)

    assert refused.value.code == PARSE_ERROR


@given(depth=st.integers(1, MAX_NESTING + 40), pad=st.sampled_from([0, 5000]))
def test_walking_and_counting_agree_with_the_true_depth(depth: int, pad: int) -> None:
    line = nested(depth, pad)
    true_depth = depth_of(json.loads(line))
    try:
        decode(line)
    except DecodeError:
        refused = True
    else:
        refused = False

    assert refused == (true_depth > MAX_NESTING)
