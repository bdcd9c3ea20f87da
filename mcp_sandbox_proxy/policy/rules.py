"""Call rules: which tools may be called, what their arguments may hold, how often.

Each check returns a ``Violation`` (the rule and a sentence for people) or None;
``PolicySet.check_call`` turns them into ``Decision`` values. Nothing here raises
on a bad call: a denial is a value.

Path arguments are resolved on the host, where the granted folders live (they are
mounted at the same paths inside the sandbox). A symlink swapped after the check
could still point elsewhere when the server opens it; the sandbox's mounts remain
the boundary, and these checks give a clear denial in front of it.
"""

from __future__ import annotations

import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, cast

from mcp_sandbox_proxy.policy.models import ArgumentRule, JsonScalar, ToolRules

if TYPE_CHECKING:
    from mcp_sandbox_proxy.policy.resolve import ResolvedPolicy

# The rate window: calls are counted over the last minute, sliding.
RATE_WINDOW_S = 60.0
_GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Decision:
    """The verdict on one call: the rule behind it and a sentence naming both."""

    allowed: bool
    rule: str
    message: str
    policy: ResolvedPolicy


@dataclass(frozen=True)
class Violation:
    """A rule that a call breaks, and the sentence telling the client why."""

    rule: str
    message: str


def tool_rule(rules: ToolRules, tool: str) -> tuple[bool, str]:
    """Whether ``tool`` may be called and the rule deciding it; deny wins."""
    for glob in rules.deny:
        if fnmatchcase(tool, glob):
            return False, f"tools.deny[{glob}]"

    for glob in rules.allow:
        if fnmatchcase(tool, glob):
            return True, f"tools.allow[{glob}]"

    return rules.default == "allow", "tools.default"


def check_tool(policy: ResolvedPolicy, tool: str) -> Violation | None:
    """A violation if the policy's tool rules refuse ``tool`` outright."""
    allowed, rule = tool_rule(policy.policy.tools, tool)
    if allowed:
        return None

    why = "is denied" if rule != "tools.default" else "is not allowed by name"
    return Violation(rule, f"tool '{tool}' {why} by policy '{policy.name}' ({rule})")


def check_arguments(
    policy: ResolvedPolicy,
    tool: str,
    arguments: Mapping[str, Any],
    cwd: str | None,
    rules: Iterable[tuple[str, ArgumentRule]] | None = None,
) -> Violation | None:
    """The first argument rule that ``arguments`` break, in the order written;
    ``rules`` are ``argument_rules(policy, tool)`` when the caller kept them."""
    if rules is None:
        rules = argument_rules(policy, tool)

    for arg_glob, rule in rules:
        for name, value in arguments.items():
            if not fnmatchcase(name, arg_glob):
                continue

            problem = _check_argument(rule, value, policy, cwd)
            if problem is not None:
                where = f"arguments.{arg_glob}.{problem[0]}"
                return Violation(
                    where,
                    f"argument '{name}' of tool '{tool}' {problem[1]}"
                    f" (policy '{policy.name}', {where})",
                )

    return None


def argument_rules(
    policy: ResolvedPolicy, tool: str
) -> tuple[tuple[str, ArgumentRule], ...]:
    """The argument rules of ``policy`` that apply to ``tool``, in the order
    written, each with the glob of the argument names it checks."""
    return tuple(
        item
        for tool_glob, rules in policy.policy.arguments.items()
        if fnmatchcase(tool, tool_glob)
        for item in rules.items()
    )


def _check_argument(
    rule: ArgumentRule, value: Any, policy: ResolvedPolicy, cwd: str | None
) -> tuple[str, str] | None:
    """The check ``value`` fails and why; a list has each item checked."""
    if rule.max_bytes is not None and _size(value) > rule.max_bytes:
        return "maxBytes", f"is {_size(value)} bytes, more than {rule.max_bytes}"

    items = cast("list[Any]", value) if isinstance(value, list) else [value]
    for item in items:
        problem = _check_item(rule, item, policy, cwd)
        if problem is not None:
            return problem

    return None


def _check_item(
    rule: ArgumentRule, value: Any, policy: ResolvedPolicy, cwd: str | None
) -> tuple[str, str] | None:
    if rule.enum is not None and not any(_same(value, e) for e in rule.enum):
        allowed = ", ".join(json.dumps(e) for e in rule.enum)
        return "enum", f"is {json.dumps(value)}, not one of {allowed}"

    if rule.pattern is not None and not (
        isinstance(value, str) and re.fullmatch(rule.pattern, value)
    ):
        return "pattern", f"does not match the pattern {rule.pattern!r}"

    if rule.grant is None and not rule.within:
        return None

    return _check_path(rule, value, policy, cwd)


def _check_path(
    rule: ArgumentRule, value: Any, policy: ResolvedPolicy, cwd: str | None
) -> tuple[str, str] | None:
    path, problem = resolve_argument_path(value, cwd)
    if path is None:
        return ("grant" if rule.grant else "within"), problem

    if rule.grant is not None:
        folders = policy.write_paths
        if rule.grant == "read":
            folders = (*policy.read_paths, *policy.write_paths)

        if not any(is_within(path, folder) for folder in folders):
            kind = "writable " if rule.grant == "write" else ""
            shown = ", ".join(folders) or "none"
            return (
                "grant",
                f"resolves to {path}, outside the {kind}folders granted ({shown})",
            )

    if rule.within and not any(path_glob_matches(g, path) for g in rule.within):
        shown = ", ".join(rule.within)
        return "within", f"resolves to {path}, which matches none of {shown}"

    return None


def resolve_argument_path(value: Any, cwd: str | None) -> tuple[str | None, str]:
    """The host path an argument names, with ``..`` and symlinks resolved.

    Returns the path and "", or None and the reason it cannot be checked. A ``~``
    is refused: the server would expand it against a home the proxy cannot see.
    """
    if not isinstance(value, str) or not value or "\0" in value:
        return None, "must be a non-empty path string"

    if value.startswith("~"):
        return None, f"is {value!r}: write the path in full, without '~'"

    if not value.startswith("/"):
        if cwd is None:
            return None, f"is the relative path {value!r}: write an absolute path"

        value = str(PurePosixPath(cwd, value))

    return os.path.realpath(value), ""


def is_within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (both already resolved)."""
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def path_glob_matches(glob: str, path: str) -> bool:
    """Whether ``path`` matches ``glob``: ``*`` stays in one folder, ``**`` spans.

    A glob without wildcards names a folder: the folder itself or anything in it.
    """
    if not _GLOB_CHARS.search(glob):
        return is_within(path, glob)

    return re.fullmatch(_glob_regex(glob), path) is not None


def _glob_regex(glob: str) -> str:
    parts = re.split(r"(\*\*|\*|\?)", glob)
    table = {"**": ".*", "*": "[^/]*", "?": "[^/]"}
    return "".join(table.get(part, re.escape(part)) for part in parts)


def resolve_glob_root(glob: str) -> str:
    """``glob`` with its literal leading folders resolved on the host."""
    parts = PurePosixPath(glob).parts
    literal = list(_takewhile_literal(parts))
    if not literal:
        return glob

    root = os.path.realpath(PurePosixPath(*literal))
    return str(PurePosixPath(root, *parts[len(literal) :]))


def _takewhile_literal(parts: Iterable[str]) -> Iterable[str]:
    for part in parts:
        if _GLOB_CHARS.search(part):
            return

        yield part


def _size(value: Any) -> int:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return len(text.encode())


def _same(value: Any, allowed: JsonScalar) -> bool:
    # JSON's true is not 1: compare booleans only with booleans.
    if isinstance(value, bool) or isinstance(allowed, bool):
        return type(value) is type(allowed) and value == allowed

    return value == allowed


class RateLimiter:
    """At most N calls in any sliding minute, per key; time from ``clock``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._calls: dict[tuple[str, str], deque[float]] = {}

    def take(self, key: tuple[str, str], per_minute: int) -> float | None:
        """Count one call; None if within the bound, else seconds until a slot."""
        now = self._clock()
        calls = self._calls.setdefault(key, deque())
        while calls and calls[0] <= now - RATE_WINDOW_S:
            calls.popleft()

        if len(calls) >= per_minute:
            return calls[0] + RATE_WINDOW_S - now

        calls.append(now)
        return None
