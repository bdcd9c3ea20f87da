"""Removing secrets from values before they are written to the audit log.

Two tests find a secret. By name: a mapping key made of words such as ``token``,
``key``, ``password``, ``secret`` or ``authorization`` (in any case or spelling:
``apiKey``, ``X-Api-Key``, ``client_secret``), or a name the policy lists; its
whole value is replaced. By look: a string, or the part of a string, shaped like a
credential (a bearer header, a JWT, a cloud or service token, a private key, the
password in a URL, ``password=...``) is replaced where it stands.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

REDACTED = "[redacted]"

# Nesting deeper than this is not legitimate tool input; cutting it keeps the walk
# (and the JSON encoder after it) far from Python's recursion limit.
MAX_DEPTH = 48

# A credential may straddle the point where a long string is clipped; scanning
# this much beyond it redacts the credential before the cut can split it.
CLIP_SCAN_MARGIN_CHARS = 1024

# No shape below matches fewer characters ("token:x", "://u:p@"); shorter strings
# are passed over unscanned.
SHORTEST_CREDENTIAL_CHARS = 7

SECRET_WORDS = frozenset(
    {
        "apikey",
        "auth",
        "authorization",
        "bearer",
        "cookie",
        "credential",
        "credentials",
        "key",
        "passphrase",
        "passwd",
        "password",
        "pwd",
        "secret",
        "token",
    }
)
# Catches names run together in one word ("accesstoken", "dbpassword").
SECRET_SUFFIXES = ("apikey", "passwd", "password", "privatekey", "secret", "token")

_NO_NAMES: frozenset[str] = frozenset()
# Exact built-in types first: ``isinstance`` against an ABC alone is slow.
_SCALARS = (bool, int, float)
_PLAIN = (str, bool, int, float)
_MAPPINGS = (dict, Mapping)
_COLLECTIONS = (list, tuple, set, frozenset)
_NAME_WORDS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


@dataclass(frozen=True)
class _Shape:
    """A credential shape, and strings one of which any match must contain.

    Testing for the strings first (a fast substring search) spares most text the
    far slower regular expression. ``folded`` shapes test the lower-cased text.
    """

    needles: tuple[str, ...]
    pattern: re.Pattern[str]
    folded: bool = False


_SHAPES = (
    _Shape(("://",), re.compile(r"(?<=://)(?P<keep>[^\s/:@]+:)[^\s/@]+(?=@)")),
    _Shape(
        ("pass", "secret", "token", "key", "authorization"),
        re.compile(
            r"""(?P<keep>(?i:password|passwd|secret(?:[_-]?key)?|token
            |(?:api|access|private)[_-]?key|authorization)["']?\s*[=:]\s*["']?
            (?i:(?:basic|bearer|digest|token)\s+)?)[^\s"'&,;]+""",
            re.VERBOSE,
        ),
        folded=True,
    ),
    _Shape(
        ("bearer",),
        re.compile(r"(?P<keep>(?i:\bbearer)\s+)[A-Za-z0-9._~+/-]{8,}=*"),
        folded=True,
    ),
    _Shape(("eyJ",), re.compile(r"\beyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]*")),
    _Shape(("AKIA", "ASIA"), re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    _Shape(
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_\w{30,}"),
    ),
    _Shape(("xox",), re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    _Shape(("sk-",), re.compile(r"\bsk-[\w-]{20,}")),
    _Shape(
        ("k_live_", "k_test_"), re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}")
    ),
    _Shape(("AIza",), re.compile(r"\bAIza[\w-]{35}")),
    _Shape(
        ("PRIVATE KEY-----",),
        re.compile(
            r"-----BEGIN[A-Z ]*PRIVATE KEY-----[\s\S]*?"
            r"(?:-----END[A-Z ]*PRIVATE KEY-----|\Z)"
        ),
    ),
)


def redact(
    value: Any,
    extra_names: Iterable[str] = (),
    *,
    max_string_chars: int | None = None,
) -> Any:
    """A deep copy of ``value`` with every secret replaced by ``REDACTED``.

    ``extra_names`` are more names whose values are secret (matched like the
    built-in words). With ``max_string_chars``, longer strings are clipped and
    marked with their full length. Tuples become lists; other objects become
    their ``str``, scanned like any string.
    """
    extra = frozenset(map(_normalised, extra_names)) if extra_names else _NO_NAMES
    return _walk(value, extra, max_string_chars, 0)


def redact_fields(
    fields: Mapping[str, Any],
    extra_names: Iterable[str] = (),
    *,
    trusted: frozenset[str] = frozenset(),
    max_string_chars: int | None = None,
) -> dict[str, Any]:
    """A redacted copy of a record's fields, passing ``trusted`` scalars as they are.

    The same as ``redact(fields, ...)`` for every other field; this is the fast
    path the audit writer takes for each record.
    """
    extra = frozenset(map(_normalised, extra_names)) if extra_names else _NO_NAMES
    return {
        name: value
        if name in trusted and (value is None or isinstance(value, _PLAIN))
        else REDACTED
        if _is_secret_name(name, extra)
        else _walk(value, extra, max_string_chars, 1)
        for name, value in fields.items()
    }


def redact_text(text: str) -> str:
    """``text`` with every part shaped like a credential replaced."""
    if len(text) < SHORTEST_CREDENTIAL_CHARS:
        return text

    folded = text.lower()
    for shape in _SHAPES:
        haystack = folded if shape.folded else text
        for needle in shape.needles:
            if needle in haystack:
                text = shape.pattern.sub(_replace, text)
                folded = text.lower()
                break

    return text


def _walk(value: Any, extra: frozenset[str], clip: int | None, depth: int) -> Any:
    if isinstance(value, str):
        return _scrub_string(value, clip)

    if value is None or isinstance(value, _SCALARS):
        return value

    if depth >= MAX_DEPTH:
        return "[too deeply nested]"

    if isinstance(value, _MAPPINGS):
        mapping = cast("Mapping[Any, Any]", value)
        return {
            str(k): REDACTED
            if _is_secret_name(str(k), extra)
            else _walk(v, extra, clip, depth + 1)
            for k, v in mapping.items()
        }

    if isinstance(value, _COLLECTIONS):
        items = cast("Iterable[Any]", value)
        return [_walk(item, extra, clip, depth + 1) for item in items]

    return _scrub_string(str(value), clip)


def _scrub_string(text: str, clip: int | None) -> str:
    if clip is None or len(text) <= clip:
        return redact_text(text)

    scanned = redact_text(text[: clip + CLIP_SCAN_MARGIN_CHARS])
    return f"{scanned[:clip]}...[clipped: {len(text)} chars in all]"


def _replace(match: re.Match[str]) -> str:
    return (match.groupdict().get("keep") or "") + REDACTED


@functools.lru_cache(maxsize=4096)
def _is_secret_name(name: str, extra: frozenset[str]) -> bool:
    words = [word.lower() for word in _NAME_WORDS.findall(name)]
    joined = "".join(words)
    if joined in extra or not extra.isdisjoint(words):
        return True

    return not SECRET_WORDS.isdisjoint(words) or joined.endswith(SECRET_SUFFIXES)


def _normalised(name: str) -> str:
    return "".join(word.lower() for word in _NAME_WORDS.findall(name))
