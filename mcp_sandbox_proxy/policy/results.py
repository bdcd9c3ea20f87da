"""Cleaning a tool's result before the client sees it.

Text goes to a person's terminal and into a model's context, so terminal escape
sequences (which can rewrite what a terminal shows) and invisible Unicode (tag
characters, bidi controls, zero-width characters, which can hide instructions from
the person reading) are removed, unless the policy opts out. Then the whole result
is held to the policy's size cap: text is cut with a marker, and blocks beyond the
cap are dropped.

Works on the JSON form of a ``CallToolResult``: ``content`` blocks (text, image,
audio, resource, resource_link) and ``structuredContent``.
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any, cast

from mcp_sandbox_proxy.policy.models import Results

if TYPE_CHECKING:
    from mcp_sandbox_proxy.policy.resolve import ResolvedPolicy

CUT_MARKER = "[mcp-sandbox-proxy: result cut at {cap} bytes of {total}]"

_TERMINAL_ESCAPES = re.compile(
    r"""
      \x1b\[[0-?]*[\x20-/]*[@-~]               # CSI: colours, cursor moves, erasing
    | \x1b\][^\x07\x1b]*(?:\x07|\x1b\\)        # OSC: titles, hyperlinks, clipboard
    | \x1b[PX^_][^\x1b]*\x1b\\                 # DCS, SOS, PM, APC strings
    | \x1b[\x20-/]*[0-~]                       # every other escape sequence
    | \x9b[0-?]*[\x20-/]*[@-~]                 # CSI in its 8-bit form
    | [\x90\x98\x9d-\x9f][^\x07\x9c]*[\x07\x9c]   # 8-bit OSC/DCS/SOS/PM/APC
    | \r(?!\n)                                 # a bare CR overwrites the line
    | [\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]    # any other C0 or C1 control, DEL
    """,
    re.VERBOSE,
)
_INVISIBLE = re.compile(
    "["
    "\u061c"  # Arabic letter mark
    "\u115f\u1160\u3164\uffa0"  # Hangul fillers: blank yet not whitespace
    "\u180e"  # Mongolian vowel separator
    "\u200b-\u200f"  # zero-width space, non-joiner, joiner; LRM, RLM
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2060-\u2064"  # word joiner, invisible operators
    "\u2066-\u206f"  # bidi isolates, deprecated format controls
    "\ufeff"  # zero-width no-break space
    "\ufff9-\ufffb"  # interlinear annotation controls
    "\U000e0000-\U000e007f"  # tag characters
    "\U000e0100-\U000e01ef"  # variation selectors supplement
    "]"
)


# Bytes that plain ASCII text may hold without any cleaning.
_CLEAN_ASCII = bytes(range(0x20, 0x7F)) + b"\t\n"
# Up to this many characters ``isprintable`` is the quicker test of ASCII text;
# it looks every character up in the Unicode tables, and past this length a
# byte table (``translate``) is quicker: 46 against 100 us for 64 KiB.
_SHORT_TEXT = 256
# The fields of a content block, by its type, that hold text shown to the model.
_TEXT_FIELDS = {"text": ("text",), "resource_link": ("name", "title", "description")}


def clean_text(text: str, rules: Results) -> str:
    """``text`` without terminal escapes and invisible characters (per ``rules``)."""
    if text.isascii():
        # The common case, checked in C: invisible characters are never ASCII,
        # and most text holds no control character at all (a single line of it
        # none, not even a tab).
        if len(text) <= _SHORT_TEXT and text.isprintable():
            return text

        controls = text.encode("ascii").translate(None, _CLEAN_ASCII)
        if not controls or rules.allow_terminal_escapes:
            return text

        return _TERMINAL_ESCAPES.sub("", text)

    if not rules.allow_terminal_escapes:
        text = _TERMINAL_ESCAPES.sub("", text)

    if not rules.allow_invisible_unicode:
        text = _INVISIBLE.sub("", text)

    return text


def sanitize_result(result: dict[str, Any], policy: ResolvedPolicy) -> dict[str, Any]:
    """A cleaned copy of ``result``, cut to ``policy.max_result_bytes``; blocks
    that needed no cleaning are shared with ``result``, never changed. A result
    that needs neither cleaning nor cutting is returned itself."""
    rules = policy.policy.results
    content: Any = result.get("content")
    if (
        result.get("structuredContent") is None
        and _plain_ascii_size(content, rules) <= policy.max_result_bytes
    ):
        return result

    cleaned = dict(result)
    if isinstance(result.get("content"), list):
        blocks = cast("list[Any]", result["content"])
        cleaned["content"] = [_clean_block(block, rules) for block in blocks]

    if result.get("structuredContent") is not None:
        structured = _clean_json(result["structuredContent"], rules)
        cleaned["structuredContent"] = structured

    return cap_result(cleaned, policy.max_result_bytes)


def _plain_ascii_size(blocks: list[dict[str, Any]], rules: Results) -> float:
    """Bytes of the text in ``blocks`` if it is a list of text blocks of ASCII
    that cleaning leaves as it is, else infinity. The most common result, checked
    without a copy or a call per field."""
    # The annotation is what a result should hold; the tests check what it does.
    if type(blocks) is not list:
        return math.inf

    size = 0
    for fields in blocks:
        if type(fields) is not dict:
            return math.inf

        if fields.get("type") != "text":
            return math.inf

        text = fields.get("text")
        if (
            not isinstance(text, str)
            or not text.isascii()
            or (
                (len(text) > _SHORT_TEXT or not text.isprintable())
                and clean_text(text, rules) != text
            )
        ):
            return math.inf

        size += len(text)

    return size


def _clean_block(block: Any, rules: Results) -> Any:
    """``block`` with its text cleaned: a copy if any text changed, else the block
    itself (most results need no cleaning, and a copy costs every call)."""
    if not isinstance(block, dict):
        return block

    fields = cast("dict[str, Any]", block)
    kind = fields.get("type")
    changed: dict[str, Any] = {}
    for key in _TEXT_FIELDS.get(kind if isinstance(kind, str) else "", ()):
        text = fields.get(key)
        if isinstance(text, str) and (clean := clean_text(text, rules)) != text:
            changed[key] = clean

    resource = fields.get("resource")
    if kind == "resource" and isinstance(resource, dict):
        resource = cast("dict[str, Any]", resource)
        text = resource.get("text")
        if isinstance(text, str) and (clean := clean_text(text, rules)) != text:
            changed["resource"] = {**resource, "text": clean}

    return {**fields, **changed} if changed else fields


def _clean_json(value: Any, rules: Results) -> Any:
    if isinstance(value, str):
        return clean_text(value, rules)

    if isinstance(value, list):
        return [_clean_json(item, rules) for item in cast("list[Any]", value)]

    if isinstance(value, dict):
        items = cast("dict[str, Any]", value).items()
        return {key: _clean_json(item, rules) for key, item in items}

    return value


def result_size(result: dict[str, Any]) -> int:
    """Bytes of a result's payload: text, base64 data, and structured content."""
    size = 0
    for block in _content(result):
        size += _block_size(block)

    if result.get("structuredContent") is not None:
        size += _json_size(result["structuredContent"])

    return size


def _content(result: dict[str, Any]) -> list[Any]:
    content = result.get("content")
    return cast("list[Any]", content) if isinstance(content, list) else []


def _block_size(block: Any) -> int:
    if not isinstance(block, dict):
        return _json_size(block)

    fields = cast("dict[str, Any]", block)
    payload = fields.get("text", fields.get("data"))
    resource = fields.get("resource")
    if isinstance(resource, dict):
        resource = cast("dict[str, Any]", resource)
        payload = resource.get("text", resource.get("blob"))

    if isinstance(payload, str):
        # ASCII, the common case, has as many bytes as characters.
        if payload.isascii():
            return len(payload)

        return len(payload.encode("utf-8", "surrogatepass"))

    return _json_size(block)


def _text_of(block: Any) -> str | None:
    """The text of a text block, None for any other block."""
    if not isinstance(block, dict):
        return None

    fields = cast("dict[str, Any]", block)
    text = fields.get("text")
    return text if fields.get("type") == "text" and isinstance(text, str) else None


def _json_size(value: Any) -> int:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return len(text.encode("utf-8", "surrogatepass"))


def cap_result(result: dict[str, Any], cap: int) -> dict[str, Any]:
    """``result`` held to ``cap`` bytes: the text block that crosses the cap is cut
    and marked, later blocks dropped. Structured content that does not fit is
    dropped too, and the result then marked as an error, since a client checks
    structured content against the tool's output schema."""
    total = result_size(result)
    if total <= cap:
        return result

    kept, budget = _fit_blocks(_content(result), cap)
    capped = {**result, "content": kept}
    structured = result.get("structuredContent")
    if structured is not None and _json_size(structured) > budget:
        del capped["structuredContent"]
        capped["isError"] = True

    marker = CUT_MARKER.format(cap=cap, total=total)
    _append_marker(kept, marker)
    return capped


def _fit_blocks(blocks: list[Any], cap: int) -> tuple[list[Any], int]:
    """The blocks that fit in ``cap`` (one text cut to fit), and the bytes left."""
    budget, kept = cap, cast("list[Any]", [])
    for block in blocks:
        size = _block_size(block)
        if size <= budget:
            kept.append(block)
            budget -= size
        elif budget > 0 and (text := _text_of(block)) is not None:
            kept.append({**block, "text": _cut(text, budget)})
            budget = 0
        else:
            budget = 0

    return kept, budget


def _cut(text: str, budget: int) -> str:
    # Cut on a character boundary: never leave half of a UTF-8 sequence.
    encoded = text.encode("utf-8", "surrogatepass")[:budget]
    return encoded.decode("utf-8", errors="ignore")


def _append_marker(blocks: list[Any], marker: str) -> None:
    text = _text_of(blocks[-1]) if blocks else None
    if text is not None:
        blocks[-1] = {**blocks[-1], "text": f"{text}\n{marker}"}
    else:
        blocks.append({"type": "text", "text": marker})
