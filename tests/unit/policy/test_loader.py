"""Reading policy files: every invalid one is refused with the exact message a user
sees, naming the file, the line and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mcp_sandbox_proxy.config import load_config
from mcp_sandbox_proxy.exceptions import ConfigError
from mcp_sandbox_proxy.policy.loader import SHIPPED_POLICIES, PolicyLibrary
from tests.conftest import WriteConfig
from tests.unit.policy.conftest import LoadPolicies, WritePolicy, server

INVALID_POLICIES = [
    pytest.param(
        """\
        isolation:
          limits:
            opnFiles: 3
        """,
        "line 3: isolation.limits.opnFiles: unknown key (did you mean 'openFiles'?)",
        id="unknown-key",
    ),
    pytest.param(
        """\
        isolation:
          limits:
            memory: lots
        """,
        "line 3: isolation.limits.memory: expected a size such as '512MiB' or"
        " '64KiB', got 'lots'",
        id="bad-size",
    ),
    pytest.param(
        "results:\n  maxBytes: unlimited\n",
        "line 2: results.maxBytes: expected a size such as '512MiB' here; it cannot"
        " be unlimited",
        id="unbounded-result",
    ),
    pytest.param(
        "isolation:\n  limits:\n    callTimeout: soon\n",
        "line 3: isolation.limits.callTimeout: expected a duration such as '60s' or"
        " '500ms', got 'soon'",
        id="bad-duration",
    ),
    pytest.param(
        "isolation:\n  backend: vm\n",
        "line 2: isolation.backend: expected one of 'namespace', 'docker' or"
        " 'process', got 'vm'",
        id="unknown-backend",
    ),
    pytest.param(
        "isolation:\n  network:\n    allow: [example.com]\n",
        "line 3: isolation.network.allow[0]: expected 'host:port' with a name,"
        " '*.domain', an IP address or a CIDR (IPv6 in brackets) and a port number"
        " or '*', got 'example.com'",
        id="egress-without-port",
    ),
    pytest.param(
        "isolation:\n  network:\n    allowPrivate: maybe\n",
        "line 3: isolation.network.allowPrivate: expected true or false, got 'maybe'",
        id="not-a-boolean",
    ),
    pytest.param(
        "isolation:\n  env:\n    set:\n      GITHUB_TOKEN: ghp_abc\n",
        "line 3: isolation.env.set: GITHUB_TOKEN looks like a secret: reference it"
        " under env.secrets with fromEnv or fromFile instead of writing its value"
        " here",
        id="secret-written-in-the-file",
    ),
    pytest.param(
        "isolation:\n  env:\n    secrets:\n      KEY: {fromEnv: A, fromFile: /k}\n",
        "line 4: isolation.env.secrets.KEY: give exactly one of 'fromEnv' or"
        " 'fromFile'",
        id="secret-from-two-places",
    ),
    pytest.param(
        "isolation:\n  env:\n    pass: [NOT-A-NAME]\n",
        "line 3: isolation.env.pass[0]: 'NOT-A-NAME' is not a valid environment"
        " variable name",
        id="bad-variable-name",
    ),
    pytest.param(
        "tools:\n  deny: ['']\n",
        "line 2: tools.deny[0]: a tool name or glob must not be empty",
        id="empty-glob",
    ),
    pytest.param(
        "arguments:\n  write_file:\n    path: {}\n",
        "line 3: arguments.write_file.path: give at least one of 'maxBytes',"
        " 'pattern', 'enum', 'grant', 'within'",
        id="empty-argument-rule",
    ),
    pytest.param(
        "arguments:\n  run:\n    mode: {pattern: '(('}\n",
        "line 3: arguments.run.mode.pattern: invalid regular expression '((':"
        " missing ), unterminated subpattern at position 1",
        id="bad-regex",
    ),
    pytest.param(
        "arguments:\n  '*':\n    path: {grant: everything}\n",
        "line 3: arguments.*.path.grant: expected one of 'read' or 'write', got"
        " 'everything'",
        id="unknown-grant",
    ),
    pytest.param(
        "rate:\n  perMinute: 0\n",
        "line 2: rate.perMinute: expected greater than or equal to 1, got 0",
        id="zero-rate",
    ),
    pytest.param(
        "tools: [read_file]\n",
        "line 1: tools: expected a mapping, got ['read_file']",
        id="list-instead-of-mapping",
    ),
    pytest.param(
        "rate:\n  perMinute: 10\nrate:\n  perMinute: 20\n",
        "line 3, column 1: invalid YAML: key 'rate' is written twice",
        id="duplicate-key",
    ),
    pytest.param(
        "tools:\n  allow: [a\n",
        "line 3, column 1: invalid YAML: expected ',' or ']', but got '<stream end>'",
        id="yaml-syntax",
    ),
    pytest.param(
        "- strict\n",
        "expected a mapping of policy keys",
        id="not-a-mapping",
    ),
]


@pytest.mark.parametrize(("text", "message"), INVALID_POLICIES)
def test_an_invalid_policy_file_is_refused_with_file_line_key_and_expectation(
    write_policy: WritePolicy, policy_dir: Path, text: str, message: str
) -> None:
    """Each kind of mistake gets one sentence: where it is and what was expected."""
    path = write_policy("mine", text)

    with pytest.raises(ConfigError) as caught:
        PolicyLibrary([policy_dir]).load("mine")

    assert str(caught.value) == f"{path}: {message}"


def test_several_mistakes_in_one_file_are_all_reported(
    write_policy: WritePolicy, policy_dir: Path
) -> None:
    """A file with two mistakes names both, in one message."""
    path = write_policy("mine", "isolation:\n  backend: vm\ntools:\n  default: no\n")

    with pytest.raises(ConfigError) as caught:
        PolicyLibrary([policy_dir]).load("mine")

    assert str(caught.value) == (
        f"{path}: line 2: isolation.backend: expected one of 'namespace', 'docker'"
        " or 'process', got 'vm'; line 4: tools.default: expected one of 'allow' or"
        " 'deny', got False"
    )


def test_extending_a_missing_policy_names_the_folders_searched(
    write_policy: WritePolicy, policy_dir: Path
) -> None:
    """``extends`` of an unknown name says which folders were searched."""
    path = write_policy("mine", "description: x\nextends: nowhere\n")

    with pytest.raises(ConfigError) as caught:
        PolicyLibrary([policy_dir]).load("mine")

    assert str(caught.value) == (
        f"{path}: line 2: extends: no policy named 'nowhere' in the library"
        f" (searched: {policy_dir})"
    )


def test_a_loop_of_extends_is_refused_with_the_chain(
    write_policy: WritePolicy, policy_dir: Path
) -> None:
    """a extends b extends a: the message shows the loop."""
    path = write_policy("a", "extends: b\n")
    write_policy("b", "extends: a\n")

    with pytest.raises(ConfigError) as caught:
        PolicyLibrary([policy_dir]).load("a")

    assert str(caught.value) == f"{path}: extends: the chain loops: a -> b -> a"


def test_extending_merges_mappings_and_replaces_lists(
    write_policy: WritePolicy, policy_dir: Path
) -> None:
    """A child changes one limit and keeps the others; its lists replace whole."""
    write_policy(
        "base",
        """\
        isolation:
          limits: {memory: 1GiB, pids: 10}
          network: {allow: ["a.example:443", "b.example:443"]}
        """,
    )
    write_policy(
        "child",
        """\
        extends: base
        isolation:
          limits: {pids: 20}
          network: {allow: ["c.example:443"]}
        """,
    )

    loaded = PolicyLibrary([policy_dir]).load("child")

    limits = loaded.policy.isolation.limits
    assert (limits.memory, limits.pids) == (1 << 30, 20)
    assert loaded.policy.isolation.network.allow == ("c.example:443",)
    assert [path.name for path in loaded.files] == ["child.yaml", "base.yaml"]


def test_a_users_policy_shadows_the_shipped_one_and_may_extend_it(
    write_policy: WritePolicy, policy_dir: Path
) -> None:
    """A user's ``strict.yaml`` wins; ``extends: strict`` reaches the shipped one."""
    write_policy("strict", "extends: strict\nrate: {perMinute: 5}\n")

    loaded = PolicyLibrary([policy_dir, SHIPPED_POLICIES]).load("strict")

    assert loaded.files == (
        policy_dir / "strict.yaml",
        SHIPPED_POLICIES / "strict.yaml",
    )
    assert loaded.policy.rate.per_minute == 5
    assert loaded.policy.isolation.limits.memory == 256 * 1024 * 1024


def test_an_unknown_policy_named_by_a_server_points_at_the_config_line(
    load_policies: LoadPolicies, tmp_path: Path, policy_dir: Path
) -> None:
    """The error names the configuration file, its line and key, and the search."""
    with pytest.raises(ConfigError) as caught:
        load_policies({"files": server("read-only-folders")})

    assert str(caught.value) == (
        f"{tmp_path / 'proxy.yaml'}: line 7: mcpServers.files.policy: no policy named"
        f" 'read-only-folders' in the library (searched: {policy_dir},"
        f" {SHIPPED_POLICIES})"
    )


def test_a_policy_name_with_a_path_in_it_is_refused(
    load_policies: LoadPolicies, tmp_path: Path
) -> None:
    """A policy is named, never given as a path that could leave the library."""
    with pytest.raises(ConfigError) as caught:
        load_policies({"files": server("strict", tools={"x": "../etc/passwd"})})

    assert str(caught.value) == (
        f"{tmp_path / 'proxy.yaml'}: line 9: mcpServers.files.tools.x.policy:"
        " '../etc/passwd' is not a valid policy name (letters, digits, '_', '-', '.')"
    )


def test_a_missing_policy_folder_in_the_configuration_is_refused(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    """``policyPaths`` naming a folder that is not there is an error, not ignored."""
    config = load_config(write_config({"a": server()}, policyPaths=["nowhere"]))

    with pytest.raises(ConfigError) as caught:
        PolicyLibrary.for_config(config)

    assert str(caught.value) == (
        f"{tmp_path / 'proxy.yaml'}: proxy.policyPaths[0]: folder"
        f" '{tmp_path / 'nowhere'}' does not exist"
    )


def test_every_shipped_policy_loads() -> None:
    """The library shipped with the proxy is valid, file by file."""
    library = PolicyLibrary([SHIPPED_POLICIES])

    names = sorted(library.load_file(path).name for path in library.files())

    assert names == [
        "compute-only",
        "git-read-only",
        "read-only-folder",
        "read-write-folder",
        "strict",
        "web-fetch-allow-list",
    ]
