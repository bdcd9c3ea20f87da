"""Reading package runners' command lines: what npx, uvx and pipx would install."""

from __future__ import annotations

import dataclasses

import pytest

from mcp_sandbox_proxy.install.launchers import (
    Launch,
    LaunchError,
    Requirement,
    parse_launch,
)


def launch(command: str, *args: str) -> Launch:
    """The launch behind a command line that must name a package runner."""
    found = parse_launch(command, list(args))
    assert found is not None
    return found


def test_npx_with_a_scoped_package_runs_its_entry_point() -> None:
    """``npx -y @scope/pkg a b``: the package unversioned, the rest its arguments."""
    found = launch("npx", "-y", "@scope/pkg", "a", "b")

    assert (found.runner, found.ecosystem) == ("npx", "npm")
    assert found.package == Requirement("@scope/pkg", None)
    assert found.command is None
    assert found.args == ("a", "b")
    assert found.extra == ()


def test_npx_reads_the_version_after_the_last_at() -> None:
    """``npx --yes pkg@1.2.3`` installs version 1.2.3."""
    found = launch("npx", "--yes", "pkg@1.2.3")

    assert found.package == Requirement("pkg", "1.2.3")
    assert (found.command, found.args) == (None, ())


def test_npx_scoped_package_with_a_version() -> None:
    """The scope's ``@`` is not taken for a version separator."""
    found = launch("npx", "-y", "@scope/pkg@^2")

    assert found.package == Requirement("@scope/pkg", "^2")


def test_npx_package_option_names_the_program_to_run() -> None:
    """``npx -p pkg@2 prog x``: installs pkg@2, then runs ``prog x``."""
    found = launch("npx", "-p", "pkg@2", "prog", "x")

    assert found.package == Requirement("pkg", "2")
    assert found.command == "prog"
    assert found.args == ("x",)
    assert found.extra == ()


def test_npx_further_packages_are_extra() -> None:
    """``npx --package=a -p b prog``: a is the package, b comes along."""
    found = launch("npx", "--package=a", "-p", "b", "prog")

    assert found.package == Requirement("a")
    assert found.extra == (Requirement("b"),)
    assert (found.command, found.args) == ("prog", ())


def test_an_unknown_npx_option_is_refused_by_name() -> None:
    """An option that may change what is installed is not silently dropped."""
    with pytest.raises(LaunchError, match="--registry"):
        parse_launch("npx", ["--registry", "https://npm.example.test", "pkg"])


def test_npx_without_a_package_is_refused() -> None:
    """``npx -y`` alone names nothing to install."""
    with pytest.raises(LaunchError, match="no package"):
        parse_launch("npx", ["-y"])


def test_npx_package_option_without_a_value_is_refused() -> None:
    """``npx -p`` at the end of the line lacks its value."""
    with pytest.raises(LaunchError, match="-p needs a value"):
        parse_launch("npx", ["-p"])


@pytest.mark.parametrize(
    "spec",
    ["https://x/y.tgz", "./dir", "github:user/repo", "/abs/dir", "user/repo"],
)
def test_npx_refuses_urls_files_and_git_repositories(spec: str) -> None:
    """Only registry packages are installed; the message quotes the spec."""
    with pytest.raises(LaunchError, match="not a package of the npm registry") as exc:
        parse_launch("npx", ["-y", spec])

    assert repr(spec) in str(exc.value)


def test_npx_refuses_an_empty_version() -> None:
    """``pkg@`` is not a requirement."""
    with pytest.raises(LaunchError):
        parse_launch("npx", ["-y", "pkg@"])


def test_uvx_runs_the_tool_named_like_its_package() -> None:
    """``uvx mcp-server-time``: a Python package and its own entry point."""
    found = launch("uvx", "mcp-server-time")

    assert (found.runner, found.ecosystem) == ("uvx", "pypi")
    assert found.package == Requirement("mcp-server-time")
    assert (found.command, found.args, found.extra, found.python) == (
        None,
        (),
        (),
        None,
    )


def test_uvx_version_after_at_is_an_exact_pin() -> None:
    """``uvx mcp-server-time@1.2`` installs ``mcp-server-time==1.2``."""
    found = launch("uvx", "mcp-server-time@1.2")

    assert found.package.name == "mcp-server-time"
    assert found.package.version == "1.2"
    assert found.package.spec("pypi") == "mcp-server-time==1.2"
    assert found.command == "mcp-server-time"


def test_uvx_from_names_the_package_and_the_rest_the_program() -> None:
    """``uvx --from 'mcp-server-git==1.0' mcp-server-git --repository /r``."""
    found = launch(
        "uvx", "--from", "mcp-server-git==1.0", "mcp-server-git", "--repository", "/r"
    )

    assert found.package.spec("pypi") == "mcp-server-git==1.0"
    assert found.command == "mcp-server-git"
    assert found.args == ("--repository", "/r")


def test_uvx_with_and_python_options() -> None:
    """``--with`` adds a package; ``--python`` picks the interpreter."""
    found = launch("uvx", "--with", "rich", "--python", "3.12", "tool")

    assert found.package == Requirement("tool")
    assert found.extra == (Requirement("rich"),)
    assert found.python == "3.12"
    assert found.command is None


def test_uvx_from_with_extras_and_a_range_in_one_word() -> None:
    """``--from=pkg[extra]>=2``: name, extras and version part kept apart."""
    found = launch("uvx", "--from=pkg[extra]>=2", "prog")

    assert found.package == Requirement("pkg", ">=2", "[extra]")
    assert found.package.spec("pypi") == "pkg[extra]>=2"
    assert (found.command, found.args) == ("prog", ())


def test_uvx_refuses_an_unknown_option_by_name() -> None:
    """``--index-url`` would change where the package comes from."""
    with pytest.raises(LaunchError, match="--index-url"):
        parse_launch("uvx", ["--index-url", "https://mirror.example.test", "pkg"])


def test_uvx_refuses_a_url_as_package() -> None:
    """A ``--from`` URL is not a package of the index."""
    with pytest.raises(LaunchError, match="not a package of the Python package"):
        parse_launch("uvx", ["--from", "git+https://x/y", "prog"])


def test_uv_tool_run_is_read_as_uvx() -> None:
    """``uv tool run pkg`` and ``uvx pkg`` are the same launch."""
    assert launch("uv", "tool", "run", "pkg", "--flag") == launch(
        "uvx", "pkg", "--flag"
    )


def test_pipx_run_a_package() -> None:
    """``pipx run pkg``: the package's own entry point."""
    found = launch("pipx", "run", "pkg")

    assert (found.runner, found.ecosystem) == ("pipx", "pypi")
    assert found.package == Requirement("pkg")
    assert (found.command, found.args) == (None, ())


def test_pipx_run_spec_names_the_package_and_the_rest_the_program() -> None:
    """``pipx run --spec pkg==1 prog arg``."""
    found = launch("pipx", "run", "--spec", "pkg==1", "prog", "arg")

    assert found.package == Requirement("pkg", "==1")
    assert found.command == "prog"
    assert found.args == ("arg",)


@pytest.mark.parametrize("args", [["--pip-args", "x", "pkg"], ["--pip-args=x", "pkg"]])
def test_pipx_run_refuses_pip_args(args: list[str]) -> None:
    """Arguments to pip could install anything; they are refused by name."""
    with pytest.raises(LaunchError, match="--pip-args"):
        parse_launch("pipx", ["run", *args])


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("python", ["server.py"]),
        ("node", ["x.js"]),
        ("docker", ["run", "image"]),
        ("uv", ["run", "server.py"]),
        ("pipx", ["install", "pkg"]),
    ],
)
def test_other_commands_are_not_package_runners(command: str, args: list[str]) -> None:
    """Nothing to install: the command runs as written."""
    assert parse_launch(command, args) is None


@pytest.mark.parametrize(
    ("command", "args", "runner"),
    [
        ("npx.cmd", ["-y", "pkg"], "npx"),
        ("uvx.exe", ["pkg"], "uvx"),
        ("uv.exe", ["tool", "run", "pkg"], "uvx"),
        ("pipx.exe", ["run", "pkg"], "pipx"),
        ("/usr/local/bin/npx", ["-y", "pkg"], "npx"),
    ],
)
def test_runner_names_with_windows_suffixes_or_paths(
    command: str, args: list[str], runner: str
) -> None:
    """``npx.cmd``, ``uvx.exe`` and full paths name the same runners."""
    found = launch(command, *args)

    assert found.runner == runner
    assert found.package == Requirement("pkg")


def test_requirement_spec_in_each_ecosystem() -> None:
    """npm joins with ``@``; a bare Python version becomes ``==``."""
    assert Requirement("@s/p").spec("npm") == "@s/p"
    assert Requirement("@s/p", "^1.2").spec("npm") == "@s/p@^1.2"
    assert Requirement("pkg").spec("pypi") == "pkg"
    assert Requirement("pkg", "1.2").spec("pypi") == "pkg==1.2"
    assert Requirement("pkg", "~=1.2", "[a,b]").spec("pypi") == "pkg[a,b]~=1.2"


def test_pinned_fixes_the_exact_version_and_keeps_extras() -> None:
    """A range pinned to what was installed."""
    npm = Requirement("@s/p", "^1").pinned("1.4.0")
    pypi = Requirement("pkg", ">=2", "[x]").pinned("2.3.1")

    assert npm == Requirement("@s/p", "1.4.0")
    assert npm.spec("npm") == "@s/p@1.4.0"
    assert pypi == Requirement("pkg", "2.3.1", "[x]")
    assert pypi.spec("pypi") == "pkg[x]==2.3.1"


def test_the_same_request_has_the_same_key() -> None:
    """Two readings of one command line share one installation."""
    first = launch("uvx", "--with", "rich", "--python", "3.12", "pkg@1", "a")
    second = launch("uvx", "--with", "rich", "--python", "3.12", "pkg@1", "b")

    assert first.key == second.key
    assert first.key == "pypi:pkg==1 +rich #pkg python=3.12"


@pytest.mark.parametrize(
    "change",
    [
        {"package": Requirement("pkg", "2")},
        {"command": "other"},
        {"extra": (Requirement("rich"),)},
        {"python": "3.12"},
    ],
    ids=["version", "command", "extra", "python"],
)
def test_the_key_differs_when_the_installation_differs(
    change: dict[str, object],
) -> None:
    """Version, program, extra packages and interpreter each name a new install."""
    base = Launch("uvx", "pypi", Requirement("pkg", "1"), "pkg")
    changed = dataclasses.replace(base, **change)  # type: ignore[arg-type]

    assert changed.key != base.key


def test_describe_shows_the_package_as_written() -> None:
    """npm with ``@``, Python with ``==``."""
    assert launch("npx", "-y", "@scope/pkg@1.2").describe() == "@scope/pkg@1.2"
    assert launch("uvx", "mcp-server-time").describe() == "mcp-server-time"
    assert launch("uvx", "mcp-server-time@1.2").describe() == "mcp-server-time==1.2"


@pytest.mark.parametrize(
    "spec",
    ["pkg@github:user/repo", "pkg@file:../dir", "pkg@https://x.example.test/p.tgz"],
)
def test_npx_refuses_git_files_and_urls_given_as_a_version(spec: str) -> None:
    """``name@<git/file/url>`` installs from outside the registry in npm."""
    with pytest.raises(LaunchError):
        parse_launch("npx", ["-y", spec])


@pytest.mark.parametrize(
    "tool", ["pkg@ @ file:///srv/wheels/pkg.whl", "pkg@ @ https://x.example.test/p.whl"]
)
def test_uvx_refuses_a_direct_reference_after_the_at(tool: str) -> None:
    """A file or URL slipped in as a version is still not a registry package."""
    with pytest.raises(LaunchError):
        parse_launch("uvx", [tool])


def test_uvx_at_latest_asks_for_the_newest_version() -> None:
    """``@latest`` is uv's way to ask for the newest release, not a version."""
    found = launch("uvx", "mcp-server-time@latest")

    assert found.package.spec("pypi") == "mcp-server-time"


def test_uvx_short_and_long_python_options_are_one_option() -> None:
    """The one written last wins, whichever spelling it has."""
    assert launch("uvx", "--python", "3.11", "-p", "3.12", "tool").python == "3.12"
    assert launch("uvx", "-p", "3.12", "--python", "3.11", "tool").python == "3.11"


def test_uvx_at_with_nothing_after_it_is_refused() -> None:
    with pytest.raises(LaunchError, match="after '@' uvx takes a version"):
        parse_launch("uvx", ["tool@"])


def test_runner_paths_from_a_windows_configuration_are_recognised() -> None:
    windows = parse_launch(r"C:\Program Files\uv\UVX.EXE", ["mcp-server-time"])
    assert windows is not None and windows.runner == "uvx"
