"""Which policy each tool gets, and the verdict on each call: denials are values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mcp_sandbox_proxy.config import ServerConfig, load_config
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.policy import PolicySet
from tests.unit.policy.conftest import LoadPolicies, WritePolicy, server


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """A granted folder holding one file, beside a folder that is not granted."""
    folder = tmp_path / "ws"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "key").write_text("secret")
    return folder


@pytest.fixture
def files(load_policies: LoadPolicies, workspace: Path, tmp_path: Path) -> PolicySet:
    """A file server: read-only by default, writes through ``write_*`` tools."""
    environ = {"WORKSPACE": str(workspace), "HOME": str(tmp_path)}
    config = server("read-only-folder", tools={"write_*": "read-write-folder"})
    return load_policies({"files": config}, environ=environ)


def test_a_tool_maps_by_exact_name_then_first_glob_then_server(
    write_policy: WritePolicy, policy_dir: Path, tmp_path: Path
) -> None:
    """Exact names win over globs; globs apply in the order written."""
    for name in ("a", "b", "c"):
        write_policy(name, "extends: strict\n")

    tools = {"read_*": "a", "*_file": "b", "read_file": "c"}
    document = {
        "mcpServers": {"s": server("strict", tools=tools)},
        "proxy": {"policyPaths": [str(policy_dir)]},
    }
    path = tmp_path / "ordered.json"
    path.write_text(json.dumps(document))
    policies = PolicySet.load(load_config(path), environ={})

    assert policies.for_tool("s", "read_file").name == "c"
    assert policies.for_tool("s", "read_text_file").name == "a"
    assert policies.for_tool("s", "write_file").name == "b"
    assert policies.for_tool("s", "list").name == "strict"
    assert (
        policies.choice("s", "read_dir").key_path == "mcpServers.s.tools.read_*.policy"
    )


def test_a_denied_tool_is_hidden_and_its_call_denied_with_the_rule(
    files: PolicySet, workspace: Path
) -> None:
    """``move_file`` is denied by name: not listed, and a call is a denial value."""
    decision = files.check_call("files", "move_file", {"source": str(workspace)})

    assert not files.tool_visible("files", "move_file")
    assert files.tool_visible("files", "read_text_file")
    assert not decision.allowed
    assert decision.rule == "tools.deny[move_file]"
    assert decision.message == (
        "tool 'move_file' is denied by policy 'read-only-folder'"
        " (tools.deny[move_file])"
    )
    assert decision.policy.name == "read-only-folder"


def test_deny_wins_over_allow_and_default_deny_refuses_unnamed_tools(
    write_policy: WritePolicy, load_policies: LoadPolicies
) -> None:
    """A tool in both lists is denied; a tool in neither follows ``default``."""
    write_policy(
        "narrow", "tools: {allow: ['get_*'], deny: [get_secret], default: deny}\n"
    )
    policies = load_policies({"s": server("narrow")})

    secret = policies.check_call("s", "get_secret", {})
    other = policies.check_call("s", "delete_all", {})
    allowed = policies.check_call("s", "get_time", {})

    assert (secret.allowed, secret.rule) == (False, "tools.deny[get_secret]")
    assert (other.allowed, other.rule) == (False, "tools.default")
    assert other.message == (
        "tool 'delete_all' is not allowed by name by policy 'narrow' (tools.default)"
    )
    assert (allowed.allowed, allowed.rule) == (True, "tools.allow[get_*]")


def test_a_path_inside_the_grant_is_allowed(files: PolicySet, workspace: Path) -> None:
    """Reading a file of the granted folder passes every rule."""
    decision = files.check_call(
        "files", "read_text_file", {"path": str(workspace / "notes.txt")}
    )

    assert decision.allowed
    assert decision.rule == "tools.default"


def test_a_path_outside_the_grant_is_denied(files: PolicySet, tmp_path: Path) -> None:
    """An absolute path elsewhere is refused, naming the argument and the grant."""
    target = tmp_path / "private" / "key"

    decision = files.check_call("files", "read_text_file", {"path": str(target)})

    assert not decision.allowed
    assert decision.rule == "arguments.path.grant"
    assert decision.message == (
        f"argument 'path' of tool 'read_text_file' resolves to {target}, outside the"
        f" folders granted ({tmp_path / 'ws'}) (policy 'read-only-folder',"
        " arguments.path.grant)"
    )


def test_a_path_escaping_through_dotdot_is_denied(
    files: PolicySet, workspace: Path, tmp_path: Path
) -> None:
    """``ws/../private/key`` starts inside the grant but resolves outside it."""
    escape = f"{workspace}/../private/key"

    decision = files.check_call("files", "read_text_file", {"path": escape})

    assert not decision.allowed
    assert decision.rule == "arguments.path.grant"
    assert f"resolves to {tmp_path / 'private' / 'key'}," in decision.message


def test_a_path_escaping_through_a_symlink_is_denied(
    files: PolicySet, workspace: Path, tmp_path: Path
) -> None:
    """A symlink inside the grant pointing out of it is followed, then refused."""
    (workspace / "shortcut").symlink_to(tmp_path / "private")

    decision = files.check_call(
        "files", "read_text_file", {"path": str(workspace / "shortcut" / "key")}
    )

    assert not decision.allowed
    assert decision.rule == "arguments.path.grant"
    assert f"resolves to {tmp_path / 'private' / 'key'}," in decision.message


def test_every_item_of_a_list_argument_is_checked(
    files: PolicySet, workspace: Path, tmp_path: Path
) -> None:
    """One bad path among good ones denies the call."""
    paths = [str(workspace / "notes.txt"), str(tmp_path / "private" / "key")]

    decision = files.check_call("files", "read_multiple_files", {"paths": paths})

    assert (decision.allowed, decision.rule) == (False, "arguments.paths.grant")


def test_a_write_tool_gets_its_own_policy_and_profile(
    files: PolicySet, workspace: Path
) -> None:
    """``write_file`` maps to read-write-folder, a separate sandbox instance."""
    decision = files.check_call(
        "files", "write_file", {"path": str(workspace / "new.txt"), "content": "x"}
    )

    assert decision.allowed
    assert decision.policy.name == "read-write-folder"
    assert len(files.profiles("files")) == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("notes.txt", "is the relative path 'notes.txt': write an absolute path"),
        ("~/notes.txt", "is '~/notes.txt': write the path in full, without '~'"),
        (7, "must be a non-empty path string"),
    ],
)
def test_paths_that_cannot_be_checked_are_denied(
    files: PolicySet, value: object, message: str
) -> None:
    """Relative paths (no working folder), ``~`` and non-strings are refused."""
    decision = files.check_call("files", "read_text_file", {"path": value})

    assert not decision.allowed
    assert decision.message == (
        f"argument 'path' of tool 'read_text_file' {message}"
        " (policy 'read-only-folder', arguments.path.grant)"
    )


def test_a_relative_path_resolves_against_the_servers_folder(
    load_policies: LoadPolicies, workspace: Path, tmp_path: Path
) -> None:
    """With ``cwd`` set, ``notes.txt`` means the file in that folder."""
    environ = {"WORKSPACE": str(workspace), "HOME": str(tmp_path)}
    config = server("read-only-folder", cwd=str(workspace))
    policies = load_policies({"files": config}, environ=environ)

    inside = policies.check_call("files", "read_text_file", {"path": "notes.txt"})
    outside = policies.check_call("files", "read_text_file", {"path": "../private"})

    assert inside.allowed
    assert not outside.allowed


def test_within_globs_confine_paths_to_matching_names(
    write_policy: WritePolicy, load_policies: LoadPolicies, workspace: Path
) -> None:
    """``*`` stays inside one folder; ``**`` spans folders."""
    write_policy(
        "docs",
        f"""\
        arguments:
          open:
            path: {{within: ["{workspace}/*.txt"]}}
          walk:
            path: {{within: ["{workspace}/**"]}}
        """,
    )
    policies = load_policies({"d": server("docs")})

    def allowed(tool: str, path: Path) -> bool:
        return policies.check_call("d", tool, {"path": str(path)}).allowed

    assert allowed("open", workspace / "notes.txt")
    assert not allowed("open", workspace / "sub" / "notes.txt")
    assert not allowed("open", workspace / "notes.md")
    assert allowed("walk", workspace / "sub" / "deep" / "x.md")
    assert not allowed("walk", workspace.parent / "private" / "key")


def test_size_pattern_and_enum_rules_each_deny_with_their_rule(
    write_policy: WritePolicy, load_policies: LoadPolicies
) -> None:
    """maxBytes, pattern and enum each name themselves in the denial."""
    write_policy(
        "shaped",
        """\
        arguments:
          "*":
            "*": {maxBytes: 32}
          fetch:
            url: {pattern: "https://.+"}
            mode: {enum: [fast, 2, true]}
        """,
    )
    policies = load_policies({"s": server("shaped")})

    def rule(arguments: dict[str, object]) -> tuple[bool, str, str]:
        decision = policies.check_call("s", "fetch", arguments)
        return decision.allowed, decision.rule, decision.message

    assert rule({"url": "https://a.example", "mode": "fast"})[0]
    assert rule({"url": "https://a.example", "mode": True})[0]
    assert rule({"url": "x" * 33}) == (
        False,
        "arguments.*.maxBytes",
        "argument 'url' of tool 'fetch' is 33 bytes, more than 32"
        " (policy 'shaped', arguments.*.maxBytes)",
    )
    assert rule({"url": "http://a.example"})[1:] == (
        "arguments.url.pattern",
        "argument 'url' of tool 'fetch' does not match the pattern 'https://.+'"
        " (policy 'shaped', arguments.url.pattern)",
    )
    assert rule({"mode": 1})[1:] == (
        "arguments.mode.enum",
        "argument 'mode' of tool 'fetch' is 1, not one of \"fast\", 2, true"
        " (policy 'shaped', arguments.mode.enum)",
    )


def test_arguments_that_are_not_an_object_are_denied(files: PolicySet) -> None:
    """A list where an object belongs is a denial, not a crash."""
    decision = files.check_call("files", "read_text_file", ["/etc/passwd"])

    assert (decision.allowed, decision.rule) == (False, "arguments")


def test_the_rate_limit_denies_the_call_beyond_it_until_the_minute_passes(
    write_policy: WritePolicy, load_policies: LoadPolicies
) -> None:
    """Two calls a minute: the third is denied, and allowed again 60 s later."""
    write_policy("slow", "rate: {perMinute: 2}\n")
    clock = FakeClock()
    policies = load_policies({"s": server("slow")}, clock=clock)

    first = policies.check_call("s", "ping", {})
    clock.now += 10
    second = policies.check_call("s", "ping", {})
    third = policies.check_call("s", "other", {})
    clock.now += 50
    fourth = policies.check_call("s", "ping", {})

    assert (first.allowed, second.allowed, fourth.allowed) == (True, True, True)
    assert not third.allowed
    assert third.rule == "rate.perMinute"
    assert third.message == (
        "tool 'other' of server 's' reached the limit of 2 calls per minute of"
        " policy 'slow' (rate.perMinute); a call is possible again in 50.0 s"
    )


def test_denied_calls_do_not_count_against_the_rate(
    write_policy: WritePolicy, load_policies: LoadPolicies
) -> None:
    """Only calls that would run use up the allowance."""
    write_policy("slow", "rate: {perMinute: 1}\ntools: {deny: [bad]}\n")
    policies = load_policies({"s": server("slow")}, clock=FakeClock())

    policies.check_call("s", "bad", {})

    assert policies.check_call("s", "good", {}).allowed


def test_an_unknown_server_is_an_error_naming_it(files: PolicySet) -> None:
    """The relay only asks about configured servers; anything else is a bug."""
    with pytest.raises(
        ConfigError, match="no server named 'nope' in the configuration"
    ):
        files.check_call("nope", "read_file", {})


@pytest.mark.skipif(
    "vars" not in ServerConfig.model_fields,
    reason="ServerConfig does not declare 'vars' yet",
)
def test_a_servers_vars_fill_its_policy_and_may_use_the_environment(
    load_policies: LoadPolicies, tmp_path: Path, workspace: Path
) -> None:
    """``vars: {WORKSPACE: ${BASE}/ws}`` wins over the environment's WORKSPACE."""
    environ = {"BASE": str(tmp_path), "WORKSPACE": "/elsewhere", "HOME": str(tmp_path)}
    config = server("read-only-folder", vars={"WORKSPACE": "${BASE}/ws"})

    policies = load_policies({"files": config}, environ=environ)

    assert policies.for_server("files").read_paths == (str(workspace),)
