"""Which policy each tool of each server gets, and the checks of each call.

A tool's policy is named in the configuration: its exact name under the server's
``tools``, else the first glob there that matches it in the order written, else the
server's own ``policy``. ``explain`` shows which of these decided.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, cast

import structlog

from mcp_sandbox_proxy.config import ProxyConfig, ServerConfig
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.policy.loader import PolicyLibrary, compose_yaml, line_of
from mcp_sandbox_proxy.policy.models import ArgumentRule
from mcp_sandbox_proxy.policy.resolve import Expander, ResolvedPolicy, resolve_policy
from mcp_sandbox_proxy.policy.rules import (
    Decision,
    RateLimiter,
    Violation,
    argument_rules,
    check_arguments,
    check_tool,
    tool_rule,
)

log = structlog.get_logger(__name__)

# Tools whose policy and tool rule are kept decided. Names come from the client,
# so the table is bounded: past this it starts over.
MAX_DECIDED_TOOLS = 1024


@dataclass(frozen=True)
class PolicyChoice:
    """The policy a tool maps to, and where in the configuration that is said."""

    policy: str
    key: tuple[str, ...]

    @property
    def key_path(self) -> str:
        """The configuration key as people read it: ``mcpServers.git.policy``."""
        return ".".join(self.key)


def choose_policy(server_name: str, server: ServerConfig, tool: str) -> PolicyChoice:
    """A tool's policy: its exact name in ``tools``, else the first glob there
    that matches in the order written, else the server's own policy."""
    tools_key = ("mcpServers", server_name, "tools")
    if tool in server.tools:
        return PolicyChoice(server.tools[tool].policy, (*tools_key, tool, "policy"))

    for glob, mapping in server.tools.items():
        if fnmatchcase(tool, glob):
            return PolicyChoice(mapping.policy, (*tools_key, glob, "policy"))

    return PolicyChoice(server.policy, ("mcpServers", server_name, "policy"))


class PolicySet:
    """Every server's policies, resolved once, and the checks of each call."""

    def __init__(
        self,
        config: ProxyConfig,
        library: PolicyLibrary,
        environ: Mapping[str, str],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.library = library
        self.environ = environ
        self._limiter = RateLimiter(clock)
        self._resolved: dict[tuple[str, str], ResolvedPolicy] = {}
        self._decided: dict[tuple[str, str], _ToolVerdict] = {}

    @classmethod
    def load(
        cls,
        config: ProxyConfig,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> PolicySet:
        """Resolve the policies of every enabled server; errors name file and key.

        ``environ`` fills variables and defaults to the proxy's environment;
        ``clock`` (monotonic seconds) drives the rate limits.
        """
        library = PolicyLibrary.for_config(config)
        environ = os.environ if environ is None else environ
        policies = cls(config, library, environ, clock)
        for name in config.enabled_servers():
            policies.profiles(name)

        return policies

    def server(self, name: str) -> ServerConfig:
        """The configuration of server ``name``."""
        if name not in self.config.mcp_servers:
            raise ConfigError(f"no server named {name!r} in the configuration")

        return self.config.mcp_servers[name]

    def choice(self, server: str, tool: str) -> PolicyChoice:
        """Which policy ``tool`` maps to and why; shown by ``explain``."""
        return choose_policy(server, self.server(server), tool)

    def for_server(self, server: str) -> ResolvedPolicy:
        """The server's own policy (the one of tools no ``tools`` glob names)."""
        key = ("mcpServers", server, "policy")
        return self._resolve(server, PolicyChoice(self.server(server).policy, key))

    def for_tool(self, server: str, tool: str) -> ResolvedPolicy:
        """The effective policy of one tool of ``server``."""
        return self._resolve(server, self.choice(server, tool))

    def profiles(self, server: str) -> list[ResolvedPolicy]:
        """One policy per distinct isolation profile: one sandbox instance each."""
        config = self.server(server)
        found = {self.for_server(server).profile: self.for_server(server)}
        for glob, mapping in config.tools.items():
            key = ("mcpServers", server, "tools", glob, "policy")
            resolved = self._resolve(server, PolicyChoice(mapping.policy, key))
            found.setdefault(resolved.profile, resolved)

        return list(found.values())

    def tool_visible(self, server: str, tool: str) -> bool:
        """False when the tool's policy denies it outright: the client never sees it."""
        return check_tool(self.for_tool(server, tool), tool) is None

    def check_call(self, server: str, tool: str, arguments: object) -> Decision:
        """The verdict on one call; counts it against the rate limit if allowed."""
        verdict = self._tool_verdict(server, tool)
        policy = verdict.allowed.policy
        violation = verdict.refusal or _check_arguments(tool, arguments, verdict)
        if violation is None:
            violation = self._check_rate(server, tool, policy)

        if violation is not None:
            log.info("tool_call_denied", server=server, tool=tool, rule=violation.rule)
            return Decision(False, violation.rule, violation.message, policy)

        return verdict.allowed

    def plain_allowance(
        self, server: str, tool: str, arguments: object
    ) -> Decision | None:
        """The decision on a call that its tool's name and arguments allow, before
        its rate limit (``take_rate``); None for any other call, which
        ``check_call`` decides. Changes nothing and logs nothing."""
        verdict = self._tool_verdict(server, tool)
        if verdict.refusal is not None:
            return None

        # Most tools have no argument rules: for them, any object passes.
        if (verdict.argument_rules or type(arguments) is not dict) and _check_arguments(
            tool, arguments, verdict
        ) is not None:
            return None

        return verdict.allowed

    def take_rate(self, server: str, tool: str, policy: ResolvedPolicy) -> bool:
        """Count a call allowed by ``plain_allowance`` against its rate limit;
        False, having counted nothing, when the limit is reached."""
        return (
            policy.policy.rate.per_minute is None
            or self._check_rate(server, tool, policy) is None
        )

    def _tool_verdict(self, server: str, tool: str) -> _ToolVerdict:
        """What a tool's name alone decides: policies do not change while the
        proxy runs, so each call needs only its arguments and rate checked."""
        key = (server, tool)
        verdict = self._decided.get(key)
        if verdict is None:
            policy = self.for_tool(server, tool)
            _, rule = tool_rule(policy.policy.tools, tool)
            message = f"tool '{tool}' is allowed by policy '{policy.name}' ({rule})"
            allowed = Decision(True, rule, message, policy)
            cwd = self.server(server).cwd
            verdict = _ToolVerdict(
                check_tool(policy, tool),
                allowed,
                argument_rules(policy, tool),
                str(cwd) if cwd else None,
            )
            if len(self._decided) >= MAX_DECIDED_TOOLS:
                self._decided.clear()

            self._decided[key] = verdict

        return verdict

    def variables(self, server: str) -> dict[str, str]:
        """The proxy's environment overlaid with the server's ``vars`` (which may
        themselves use the environment's variables)."""
        source = self.config.source or Path("configuration")
        expand = Expander(self.environ, source, "set it in the proxy's environment")
        own = {
            name: expand.text(value, f"mcpServers.{server}.vars.{name}")
            for name, value in self.server(server).vars.items()
        }
        return {**self.environ, **own}

    def expanded_server(self, server: str) -> ServerConfig:
        """The server's configuration with ``${NAME}`` in ``args`` and ``cwd``
        filled from ``variables``, so a folder is named once, in ``vars``."""
        config = self.server(server)
        source = self.config.source or Path("configuration")
        expand = Expander(self.variables(server), source, "set it in vars")
        where = f"mcpServers.{server}"
        args = tuple(
            expand.text(arg, f"{where}.args[{index}]")
            for index, arg in enumerate(config.args)
        )
        cwd = config.cwd and Path(expand.text(str(config.cwd), f"{where}.cwd"))
        return config.model_copy(update={"args": args, "cwd": cwd})

    def _check_rate(
        self, server: str, tool: str, policy: ResolvedPolicy
    ) -> Violation | None:
        per_minute = policy.policy.rate.per_minute
        if per_minute is None:
            return None

        wait_s = self._limiter.take((server, policy.name), per_minute)
        if wait_s is None:
            return None

        return Violation(
            "rate.perMinute",
            f"tool '{tool}' of server '{server}' reached the limit of {per_minute}"
            f" calls per minute of policy '{policy.name}' (rate.perMinute); a call"
            f" is possible again in {wait_s:.1f} s",
        )

    def _resolve(self, server: str, choice: PolicyChoice) -> ResolvedPolicy:
        cache_key = (server, choice.policy)
        if cache_key not in self._resolved:
            try:
                loaded = self.library.load(choice.policy)
            except ConfigError as exc:
                if exc.source is not None:
                    raise

                raise config_error(self.config, choice.key, str(exc)) from exc

            variables = self.variables(server)
            config = self.server(server)
            resolved = resolve_policy(loaded, server, config, variables)
            self._resolved[cache_key] = resolved

        return self._resolved[cache_key]


@dataclass(frozen=True)
class _ToolVerdict:
    """The tool rules' verdict on one tool, the decision if its call passes, and
    what its arguments are checked against: its rules, and the folder that
    relative paths start from."""

    refusal: Violation | None
    allowed: Decision
    argument_rules: tuple[tuple[str, ArgumentRule], ...]
    cwd: str | None


def _check_arguments(
    tool: str, arguments: object, verdict: _ToolVerdict
) -> Violation | None:
    if arguments is None:
        arguments = {}

    # A dict, as JSON gives, is tested first: the Mapping test is far slower.
    if not isinstance(arguments, dict) and not isinstance(arguments, Mapping):
        message = f"the arguments of tool '{tool}' must be an object"
        return Violation("arguments", message)

    if not verdict.argument_rules:
        return None

    args = cast("Mapping[str, Any]", arguments)
    policy = verdict.allowed.policy
    return check_arguments(policy, tool, args, verdict.cwd, verdict.argument_rules)


def config_error(
    config: ProxyConfig, key: tuple[str, ...], problem: str
) -> ConfigError:
    """A ConfigError naming the configuration file, the line of ``key`` and it."""
    line = None
    if config.source is not None:
        try:
            node = compose_yaml(config.source.read_text(encoding="utf-8"))
            line = line_of(node, key)
        except (OSError, UnicodeDecodeError):
            line = None

    where = f"line {line}: " if line else ""
    source = str(config.source) if config.source else None
    return ConfigError(f"{where}{'.'.join(key)}: {problem}", source=source)
