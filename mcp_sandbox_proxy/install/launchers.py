"""Reading ``npx -y pkg``, ``uvx pkg`` and ``pipx run pkg`` command lines.

A Claude Desktop configuration starts many servers through a package runner,
which downloads the package and runs it in one step, on the host. The proxy
splits the two: ``parse_launch`` finds what the runner would install and what it
would then run, so that the install can happen in a sandbox of its own and the
run from the installed files. Options that change what gets installed are
understood; any other option is refused by name rather than ignored, since
silently dropping it could run something other than what the user wrote.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

Ecosystem = Literal["npm", "pypi"]
Runner = Literal["npx", "uvx", "pipx"]

# Options of each runner that take no value and change nothing we depend on.
_NPX_FLAGS = frozenset({"-y", "--yes", "-q", "--quiet", "--no-install"})
_UVX_FLAGS = frozenset({"-q", "--quiet", "--isolated", "--no-cache", "--offline"})
_UVX_VALUED = frozenset({"--from", "--with", "--python", "-p"})
# Short options that are another name of a long one.
_ALIASES = {"-p": "--python"}
_PIPX_FLAGS = frozenset({"--no-cache", "-q", "--quiet", "--verbose", "-v"})
_PIPX_VALUED = frozenset({"--spec", "--python", "--pip-args"})

# A package name as each registry allows it, before any version part.
_NPM_NAME = re.compile(r"^(@[a-z0-9][\w.-]*/)?[a-z0-9][\w.-]*$", re.IGNORECASE)
_PYPI_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
_PYPI_EXTRAS = re.compile(r"^\[[A-Za-z0-9._,\s-]+\]$")
# What may follow ``name@`` in npm: a version, a range or a tag; never a source
# (``github:``, ``file:``, a URL), which npm would install from outside the registry.
_NPM_VERSION = re.compile(r"^[A-Za-z0-9.^~<>=*|+\s-]+$")
# What may follow ``tool@`` in uvx: one exact version.
_PYPI_EXACT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.*+!_-]*$")
_PYPI_VERSION = re.compile(r"^(==|>=|<=|~=|!=|>|<)\s*[A-Za-z0-9.*+!_-]+(\s*,.*)?$")


class LaunchError(ValueError):
    """A package runner's command line that the proxy cannot install from."""


@dataclass(frozen=True)
class Requirement:
    """One package to install: its registry name and an optional version part."""

    name: str
    version: str | None = None
    extras: str = ""

    def spec(self, ecosystem: Ecosystem) -> str:
        """The requirement as the ecosystem's installer takes it."""
        if ecosystem == "npm":
            return self.name + (f"@{self.version}" if self.version else "")

        version = self.version or ""
        if version and version[0].isalnum():
            version = f"=={version}"

        return f"{self.name}{self.extras}{version}"

    def pinned(self, version: str) -> Requirement:
        """This requirement fixed to exactly ``version``."""
        return Requirement(self.name, version, self.extras)


@dataclass(frozen=True)
class Launch:
    """What a runner's command line installs, and what it then runs.

    ``command`` is the program to run from the installed package; ``None``
    means the package's own entry point (npx's rule, or the package's name).
    """

    runner: Runner
    ecosystem: Ecosystem
    package: Requirement
    command: str | None = None
    args: tuple[str, ...] = ()
    extra: tuple[Requirement, ...] = field(default=())
    python: str | None = None

    @property
    def key(self) -> str:
        """Names the installation in the proxy's record of installed packages."""
        parts = [f"{self.ecosystem}:{self.package.spec(self.ecosystem)}"]
        parts += [f"+{r.spec(self.ecosystem)}" for r in self.extra]
        if self.command:
            parts.append(f"#{self.command}")

        if self.python:
            parts.append(f"python={self.python}")

        return " ".join(parts)

    def describe(self) -> str:
        """The package as people write it: ``mcp-server-time`` or ``x@1.2``."""
        return self.package.spec(self.ecosystem)


def parse_launch(command: str, args: Sequence[str]) -> Launch | None:
    """The launch behind ``command args``, or ``None`` if no package runner is
    named; raises ``LaunchError`` naming the option it cannot honour."""
    # Windows paths too: a Claude Desktop file may come from there.
    program = re.split(r"[\\/]", command)[-1].lower()
    if program in ("npx", "npx.cmd"):
        return _npx(args)

    if program in ("uvx", "uvx.exe"):
        return _uvx(args)

    if program in ("uv", "uv.exe") and args[:2] in (("tool", "run"), ["tool", "run"]):
        return _uvx(args[2:])

    if program in ("pipx", "pipx.exe") and args[:1] in (("run",), ["run"]):
        return _pipx(args[1:])

    return None


def _npx(args: Sequence[str]) -> Launch:
    packages: list[str] = []
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        name, has_value, value = option.partition("=")
        if name in ("-p", "--package"):
            packages.append(value if has_value else _value(name, rest, "npx"))
        elif option == "--":
            break
        elif option not in _NPX_FLAGS:
            raise LaunchError(_unknown("npx", option))

    if not rest:
        raise LaunchError("npx names no package to run")

    if packages:
        first, *others = (_npm_requirement(p) for p in packages)
        command, server_args = rest[0], tuple(rest[1:])
        return Launch("npx", "npm", first, command, server_args, tuple(others))

    return Launch("npx", "npm", _npm_requirement(rest[0]), None, tuple(rest[1:]))


def _uvx(args: Sequence[str]) -> Launch:
    options, rest = _options("uvx", args, _UVX_FLAGS, _UVX_VALUED)
    if not rest:
        raise LaunchError("uvx names no tool to run")

    extra = tuple(_pypi_requirement(w) for w in options.get("--with", []))
    python = (options.get("--python") or [None])[-1]
    if "--from" in options:
        package = _pypi_requirement(options["--from"][-1])
        return Launch("uvx", "pypi", package, rest[0], tuple(rest[1:]), extra, python)

    # ``uvx tool@1.2`` runs version 1.2 of the package named like its command;
    # ``tool@latest`` the newest, as does plain ``tool`` here, where nothing is
    # reused from an earlier run without being recorded.
    name, at, version = rest[0].partition("@")
    package = _pypi_requirement(name)
    if at and not _PYPI_EXACT.fullmatch(version):
        raise LaunchError(
            f"{rest[0]!r}: after '@' uvx takes a version such as 1.2 or 'latest'"
        )

    if at and version != "latest":
        package = Requirement(package.name, version, package.extras)

    command = package.name if package.extras or package.version else None
    return Launch("uvx", "pypi", package, command, tuple(rest[1:]), extra, python)


def _pipx(args: Sequence[str]) -> Launch:
    options, rest = _options("pipx run", args, _PIPX_FLAGS, _PIPX_VALUED)
    if "--pip-args" in options:
        raise LaunchError(_unknown("pipx run", "--pip-args"))

    if not rest:
        raise LaunchError("pipx run names no app to run")

    python = (options.get("--python") or [None])[-1]
    if "--spec" in options:
        package = _pypi_requirement(options["--spec"][-1])
        return Launch("pipx", "pypi", package, rest[0], tuple(rest[1:]), (), python)

    package = _pypi_requirement(rest[0])
    command = package.name if package.extras or package.version else None
    return Launch("pipx", "pypi", package, command, tuple(rest[1:]), (), python)


def _options(
    runner: str,
    args: Sequence[str],
    flags: frozenset[str],
    valued: frozenset[str],
) -> tuple[dict[str, list[str]], list[str]]:
    options: dict[str, list[str]] = {}
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        name, has_value, value = option.partition("=")
        if option == "--":
            break

        if name in valued:
            options.setdefault(_ALIASES.get(name, name), []).append(
                value if has_value else _value(name, rest, runner)
            )
        elif option not in flags:
            raise LaunchError(_unknown(runner, option))

    return options, rest


def _value(option: str, rest: list[str], runner: str) -> str:
    if not rest:
        raise LaunchError(f"{runner} option {option} needs a value")

    return rest.pop(0)


def _unknown(runner: str, option: str) -> str:
    return (
        f"{runner} option {option!r} is not supported by the sandboxed install;"
        " remove it, or install the server yourself and name its program"
    )


def _npm_requirement(text: str) -> Requirement:
    # ``@scope/name@1.2`` and ``name@^1``: the version follows the last ``@``
    # that is not the scope's.
    at = text.rfind("@")
    name, version = (text[:at], text[at + 1 :]) if at > 0 else (text, None)
    good_version = version is None or _NPM_VERSION.fullmatch(version) is not None
    if not _NPM_NAME.fullmatch(name) or not good_version:
        raise LaunchError(
            f"{text!r} is not a package of the npm registry (name[@version]);"
            " files, URLs and git repositories are not installed by the proxy"
        )

    return Requirement(name, version)


def _pypi_requirement(text: str) -> Requirement:
    match = re.fullmatch(r"([^\[=<>~!@\s]+)(\[[^\]]*\])?\s*(.*)", text.strip())
    name, extras, version = match.groups() if match else (text, None, "")
    extras = extras or ""
    good_name = _PYPI_NAME.fullmatch(name) is not None
    good_extras = not extras or _PYPI_EXTRAS.fullmatch(extras) is not None
    good_version = not version or _PYPI_VERSION.fullmatch(version) is not None
    if not (good_name and good_extras and good_version):
        raise LaunchError(
            f"{text!r} is not a package of the Python package index"
            " (name[extras][==version]); files, URLs and repositories are not"
            " installed by the proxy"
        )

    return Requirement(name, version or None, extras)
