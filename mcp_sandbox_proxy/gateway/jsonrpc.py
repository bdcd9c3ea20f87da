"""JSON-RPC 2.0 messages as MCP's stdio transport carries them.

Messages are single lines of JSON. This module splits byte streams into lines with
a bound on their size, decodes and encodes them, and builds error responses. A
message is kept as the plain ``dict`` it arrived as, so that fields the proxy does
not know are passed on untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

Message = dict[str, Any]
RequestId = str | int

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# MCP leaves -32000..-32099 to implementations; these are the proxy's.
REQUEST_TIMEOUT = -32001
SERVER_UNAVAILABLE = -32002
POLICY_DENIED = -32003
AUDIT_UNAVAILABLE = -32004
MESSAGE_TOO_LARGE = -32005

# A message larger than this is refused: it bounds the memory one message can
# take. Results with images are the largest legitimate messages.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024

# Nesting deeper than this is refused: code that walks a message recursively
# (cleaning results, redacting arguments) must never meet the recursion limit.
MAX_NESTING = 200
# Lines up to this long are checked for nesting by their brackets before they are
# parsed. A longer line is mostly long strings: counting its brackets costs about
# 1.6 us a KiB, walking the parsed message only as much as it has containers.
COUNTED_NESTING_BYTES = 4096


class FrameTooLarge(Exception):
    """A line grew past the splitter's bound before its end was seen."""


class LineSplitter:
    """Cuts a byte stream into newline-terminated lines, bounding their size.

    After an oversized line, bytes are discarded up to the next newline, so that
    the stream stays usable.
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> Iterator[bytes | FrameTooLarge]:
        """Yield each complete line of ``data`` (and what came before it)."""
        if not self._buffer and not self._discarding and len(data) <= self.max_bytes:
            # The common case, a chunk that starts with a message: no line in it
            # can be too long, so one split in C finds them all.
            *lines, rest = data.split(b"\n")
            if rest:
                self._buffer += rest

            return iter(lines)

        return self._feed_slowly(data)

    def _feed_slowly(self, data: bytes) -> Iterator[bytes | FrameTooLarge]:
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            if self._discarding:
                self._discarding = False
            elif self._buffer:
                self._buffer += data[start:end]
                line = bytes(self._buffer)
                self._buffer.clear()
                yield line if len(line) <= self.max_bytes else FrameTooLarge()
            elif end - start <= self.max_bytes:
                yield data[start:end]
            else:
                yield FrameTooLarge()

            start = end + 1

        if not self._discarding and start < len(data):
            self._buffer += data[start:]
            if len(self._buffer) > self.max_bytes:
                self._buffer.clear()
                self._discarding = True
                yield FrameTooLarge()


TOO_DEEP = f"Parse error: JSON nested more than {MAX_NESTING} deep"


class DecodeError(Exception):
    """A line that is not a JSON-RPC message; ``code`` is the error to answer."""

    def __init__(self, code: int, message: str, request_id: RequestId | None) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id


def decode(line: bytes) -> Message:
    """Parse one line into a message dict, or raise ``DecodeError``."""
    # Only a line with that many brackets at all can be too deep, and only a
    # line that long can hold them: cheap filters in front of the exact scan
    # keep the common path fast. (orjson itself parses any depth up to 1024
    # without recursion; the standard decoder, taken for what orjson refuses,
    # stops at Python's recursion limit and raises RecursionError, caught.)
    size = len(line)
    if (
        MAX_NESTING < size <= COUNTED_NESTING_BYTES
        and line.count(b"[") + line.count(b"{") > MAX_NESTING
        and _nesting_exceeds(line, MAX_NESTING)
    ):
        raise DecodeError(PARSE_ERROR, TOO_DEEP, None)

    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        # orjson refuses lone surrogate escapes, which JSON allows: give such a
        # message a second chance with the standard decoder.
        value = _decode_slowly(line)

    if not isinstance(value, dict):
        kind = "a batch" if isinstance(value, list) else "not an object"
        raise DecodeError(INVALID_REQUEST, f"Invalid Request: message is {kind}", None)

    message: Message = value  # type: ignore[assignment]
    if size > COUNTED_NESTING_BYTES and _nested_deeper_than(message, MAX_NESTING):
        raise DecodeError(PARSE_ERROR, TOO_DEEP, None)

    if type(message.get("id")) is float:
        # orjson reads integers past 64 bits as floats: an id must come back
        # exactly as it was sent. (Elsewhere in a message such integers lose
        # precision; finding them would cost a scan of every message.)
        message = _decode_slowly(line)

    if message.get("jsonrpc") != "2.0":
        raise DecodeError(
            INVALID_REQUEST, "Invalid Request: jsonrpc must be '2.0'", _id_of(message)
        )

    return message


def _decode_slowly(line: bytes) -> Any:
    """The standard decoder, told to refuse NaN and Infinity as JSON does."""
    try:
        return json.loads(line, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise DecodeError(PARSE_ERROR, f"Parse error: {exc}", None) from exc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _id_of(message: Message) -> RequestId | None:
    return as_request_id(message.get("id"))


def as_request_id(value: Any) -> RequestId | None:
    """``value`` if it can be a JSON-RPC id (a string or an integer), else None."""
    # Exact types first: what JSON decodes to, and far quicker to test.
    if type(value) is int or type(value) is str:
        return value

    if isinstance(value, str | int) and not isinstance(value, bool):
        return value

    return None


def _nested_deeper_than(value: dict[str, Any], limit: int) -> bool:
    """Whether the containers of a parsed ``value`` nest more than ``limit`` deep;
    walked without recursion, and no deeper than ``limit``."""
    waiting: list[tuple[Iterable[Any], int]] = [(value.values(), 1)]
    while waiting:
        items, depth = waiting.pop()
        for item in items:
            kind = item.__class__
            if kind is dict or kind is list:
                if depth == limit:
                    return True

                waiting.append((item.values() if kind is dict else item, depth + 1))

    return False


def _nesting_exceeds(line: bytes, limit: int) -> bool:
    depth = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1

    return False


def encode(message: Message) -> bytes:
    """Serialise one message as a line of compact UTF-8 JSON."""
    try:
        return orjson.dumps(message, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:
        # Integers past 64 bits or lone surrogates, passed on from a message that
        # had them: escaped to ASCII, the surrogates stay as they came.
        return json.dumps(message, separators=(",", ":")).encode() + b"\n"


def error_response(
    request_id: RequestId | None, code: int, message: str, data: Any = None
) -> Message:
    """A JSON-RPC error response."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data

    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def result_response(request_id: RequestId, result: Any) -> Message:
    """A JSON-RPC success response."""
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def as_object(value: Any) -> dict[str, Any]:
    """``value`` if it is a JSON object, else an empty one: for optional params."""
    return value if isinstance(value, dict) else {}  # type: ignore[return-value]


def is_request(message: Message) -> bool:
    """True for a request: a method and an id."""
    return "method" in message and "id" in message


def is_notification(message: Message) -> bool:
    """True for a notification: a method and no id."""
    return "method" in message and "id" not in message


def is_response(message: Message) -> bool:
    """True for a response: an id and a result or an error, no method."""
    return "method" not in message and ("result" in message or "error" in message)


def valid_id(message: Message) -> RequestId | None:
    """The message's id if it is a JSON-RPC id (string or integer), else None."""
    return as_request_id(message.get("id"))


def response_problem(message: Message) -> str | None:
    """What makes a response unfit to pass on, or None: MCP results are objects,
    and an error needs an integer code and a message."""
    if "result" in message:
        if "error" in message:
            return "it has both a result and an error"

        return (
            None
            if isinstance(message["result"], dict)
            else "its result is not an object"
        )

    error = message.get("error")
    if (
        not isinstance(error, dict)
        or type(error.get("code")) is not int  # type: ignore[union-attr]
        or not isinstance(error.get("message"), str)  # type: ignore[union-attr]
    ):
        return "its error lacks an integer code or a message"

    return None
